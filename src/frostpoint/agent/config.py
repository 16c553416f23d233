"""The agent's config file: key=value lines, as operators know from cloud guest agents."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from frostpoint import __version__
from frostpoint.protocol import (
    AGENT_CONFIG,
    AGENT_INSTALLED,
    FABRIC_ADDRESS,
    HOST_PORT,
    WIRE_PORT,
)

DEFAULTS = {
    "Provisioning.Agent": "auto",
    "Extensions.Enabled": "y",
    "Logs.Verbose": "n",
    "Endpoint.Address": FABRIC_ADDRESS,
    "Endpoint.WirePort": str(WIRE_PORT),
    "Endpoint.HostPort": str(HOST_PORT),
    "Agent.AutoRestart": "y",
    "Agent.HeartbeatSeconds": "5",
    "Agent.TokenFile": "/etc/frostpoint/agent.token",
}


def installed_version() -> str:
    """The agent release installed on this machine, from its package record (an image
    made with an older release says so there)."""
    try:
        words = Path(AGENT_INSTALLED).read_text().split()
    except OSError:
        return __version__
    return words[1] if len(words) > 1 else __version__


@dataclass
class AgentConfig:
    values: dict[str, str]

    @classmethod
    def load(cls, path: str | Path = AGENT_CONFIG) -> AgentConfig:
        values = dict(DEFAULTS)
        p = Path(path)
        if p.exists():
            for line in p.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#") and "=" in line:
                    k, v = line.split("=", 1)
                    values[k.strip()] = v.strip()
        return cls(values)

    def flag(self, key: str) -> bool:
        return self.values.get(key, "n").lower() in ("y", "yes", "true", "1")

    @property
    def wire_url(self) -> str:
        return f"http://{self.values['Endpoint.Address']}:{self.values['Endpoint.WirePort']}"

    @property
    def host_url(self) -> str:
        return f"http://{self.values['Endpoint.Address']}:{self.values['Endpoint.HostPort']}"

    @property
    def token(self) -> str:
        return Path(self.values["Agent.TokenFile"]).read_text().strip()

    @property
    def heartbeat_seconds(self) -> float:
        return float(self.values["Agent.HeartbeatSeconds"])


def render(values: dict[str, str]) -> str:
    merged = dict(DEFAULTS)
    merged.update(values)
    return "".join(f"{k}={v}\n" for k, v in merged.items())
