"""The agent's config file: key=value lines, as operators know from cloud guest agents."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from frostpoint import __version__
from frostpoint.protocol import (
    AGENT_CONFIG,
    AGENT_INSTALLED,
    HOST_PORT,
    WIRE_PORT,
)

DEFAULTS = {
    "Provisioning.Agent": "auto",
    "Extensions.Enabled": "y",
    "Logs.Verbose": "n",
    "Endpoint.Address": "auto",  # discovery: the gateway of the default route (the lease)
    "Endpoint.WirePort": str(WIRE_PORT),
    "Endpoint.HostPort": str(HOST_PORT),
    "Agent.AutoRestart": "y",
    "Agent.HeartbeatSeconds": "5",
    "Agent.TokenFile": "/etc/frostpoint/agent.token",
}


class EndpointNotFound(Exception):
    """Discovery is on and the machine has no default route: no lease names the fabric."""


def discover_endpoint(routes: str = "/proc/net/route") -> str | None:
    """The fabric address as the machine's network lease gives it: the gateway of the
    default route (as a cloud's DHCP lease names its wire server)."""
    try:
        lines = Path(routes).read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        f = line.split()
        if len(f) > 3 and f[1] == "00000000" and int(f[3], 16) & 0x2:  # RTF_GATEWAY
            return socket.inet_ntoa(struct.pack("<I", int(f[2], 16)))
    return None


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
    def discovery(self) -> bool:
        return self.values["Endpoint.Address"] == "auto"

    @property
    def address(self) -> str:
        if not self.discovery:
            return self.values["Endpoint.Address"]
        found = discover_endpoint()
        if found is None:
            raise EndpointNotFound(
                "Endpoint.Address=auto and the machine has no default route (no network "
                "lease): the fabric endpoint cannot be found")
        return found

    def resolved(self) -> AgentConfig:
        """This config with the endpoint found once, as a lease holds for a boot."""
        return AgentConfig({**self.values, "Endpoint.Address": self.address})

    @property
    def wire_url(self) -> str:
        return f"http://{self.address}:{self.values['Endpoint.WirePort']}"

    @property
    def host_url(self) -> str:
        return f"http://{self.address}:{self.values['Endpoint.HostPort']}"

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
