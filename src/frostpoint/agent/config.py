"""The agent's config file: key=value lines, as operators know from cloud guest agents."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from frostpoint import __version__
from frostpoint.agent.lease import INFINITE, addresses, fabric_from_lease
from frostpoint.protocol import (
    AGENT_CONFIG,
    AGENT_INSTALLED,
    FABRIC_OPTION,
    GUEST_INTERFACE,
    GUEST_NETWORK_CONFIG,
    HOST_PORT,
    WIRE_PORT,
)

DEFAULTS = {
    "Provisioning.Agent": "auto",
    "Extensions.Enabled": "y",
    "Logs.Verbose": "n",
    "Endpoint.Address": "auto",  # discovery: DHCP option 245, else the default route
    "Endpoint.WirePort": str(WIRE_PORT),
    "Endpoint.HostPort": str(HOST_PORT),
    "Agent.AutoRestart": "y",
    "Agent.HeartbeatSeconds": "5",
    "Agent.TokenFile": "/etc/frostpoint/agent.token",
}


class EndpointNotFound(Exception):
    """Discovery is on and nothing names the fabric: no DHCP lease with option 245, no
    default route. dhcp_off: the machine's network config has DHCP off (a VM)."""

    def __init__(self, message: str, dhcp_off: bool = False) -> None:
        super().__init__(message)
        self.dhcp_off = dhcp_off


def discover_endpoint() -> str | None:
    """The fabric address as the machine's network names it: option 245 of the DHCP
    lease the machine holds (a VM's, as a cloud's lease names its wire server), else
    the gateway of the default route (a sandbox machine's, which the fabric sets)."""
    return fabric_from_lease() or default_gateway()


def dhcp_off() -> bool:
    """A VM's network config (fabric/guestnet.py) no longer brings the fabric
    interface up by DHCP (a sandbox machine has the image's, which does)."""
    try:
        lines = Path(GUEST_NETWORK_CONFIG).read_text(errors="replace").splitlines()
    except OSError:
        return False
    return ["iface", GUEST_INTERFACE, "inet", "dhcp"] not in [ln.split() for ln in lines]


def not_found() -> EndpointNotFound:
    """Why discovery found nothing, in the machine's own terms."""
    why = ("Endpoint.Address=auto and no DHCP lease names the fabric (option "
           f"{FABRIC_OPTION}), and the machine has no default route")
    off = dhcp_off()
    if off:
        static = [a for a, life in addresses(GUEST_INTERFACE) if life == INFINITE]
        why += (f"; DHCP is off for {GUEST_INTERFACE} in {GUEST_NETWORK_CONFIG}"
                + (f" (static address {', '.join(static)})" if static else ""))
    return EndpointNotFound(why + ": the fabric endpoint cannot be found", off)


def default_gateway(routes: str = "/proc/net/route") -> str | None:
    """The gateway of the default route."""
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
            raise not_found()
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
