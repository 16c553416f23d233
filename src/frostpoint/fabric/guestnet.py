"""The network config a VM's guest boots with: the one place it lives in the image.

eth0 comes up by DHCP at boot (ifupdown's `inet dhcp`, which runs ISC dhclient). The
fabric's DHCP server (fabric/dhcp.py) gives each slot's MAC its fixed address and
names the fabric address in option 245; dhclient.conf declares that option, so the
lease file records it, and the agent's `Endpoint.Address=auto` reads it there
(agent/lease.py). A VM boots with `net.ifnames=0`, so its virtio NIC is eth0.

A sandbox machine never runs this: the fabric sets its address and default route
itself (fabric/network.py), and its agent finds the fabric from that route.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from frostpoint.protocol import (
    FABRIC_OPTION,
    GUEST_INTERFACE,
    GUEST_LEASE_FILE,
    GUEST_NETWORK_CONFIG,
)

# Path in the image -> content.
FILES = {
    "/etc/network/interfaces": """\
# The loopback here, the fabric interface in interfaces.d/frostpoint-fabric.
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback
""",
    GUEST_NETWORK_CONFIG: f"""\
# Frostpoint's fabric network: address and fabric address (option {FABRIC_OPTION})
# by DHCP. With DHCP off (inet static) no lease names the fabric, and an agent with
# Endpoint.Address=auto cannot find it (UserErrorGuestAgentStatusUnavailable).
auto {GUEST_INTERFACE}
iface {GUEST_INTERFACE} inet dhcp
""",
    "/etc/dhcp/dhclient.conf": f"""\
# Frostpoint guest: the fabric's DHCP server names the fabric address in option
# {FABRIC_OPTION} (as a cloud's lease names its wire server); declared here, dhclient
# writes it into the lease ({GUEST_LEASE_FILE}) as `option fabric-address`.
option fabric-address code {FABRIC_OPTION} = ip-address;
request subnet-mask, broadcast-address, interface-mtu, fabric-address;
""",
}


def digest() -> str:
    """Changes when the config does, so that the image is rebuilt (fabric/image.py)."""
    return hashlib.sha256(repr(sorted(FILES.items())).encode()).hexdigest()[:16]


def install(rootfs: Path) -> None:
    """Write the config into a rootfs being built (not a guest's: nothing there is the
    guest's yet)."""
    for path, text in FILES.items():
        target = rootfs / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
