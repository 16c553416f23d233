"""The fabric address from the machine's DHCP lease: option 245, as dhclient records it.

A VM's guest gets its address by DHCP from the fabric (fabric/dhcp.py); the lease
names the fabric address in option 245, which /etc/dhcp/dhclient.conf declares as
`fabric-address`, so the lease file has `option fabric-address A.B.C.D;`.

The file is input the agent does not trust (it records what came over the network):
it is read up to a size, must be ASCII, only the last lease counts, and an address
counts only if it is a plain IPv4 address in the fabric's subnet. A lease counts only
while the DHCP client holds it: unexpired, and its address is on the interface with
the finite lifetime the client gives it. A static address (DHCP off) has none, so an
old lease file left behind names nothing.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from frostpoint.protocol import FABRIC_SUBNET, GUEST_LEASE_FILE, PREFIX_LEN

MAX_BYTES = 64 * 1024  # dhclient rewrites its file every few leases; a lease is ~500 B
FABRIC_NET = ipaddress.IPv4Network(f"{FABRIC_SUBNET}.0/{PREFIX_LEN}")
INFINITE = 0xFFFFFFFF  # the kernel's "forever" address lifetime
_LEASE = re.compile(r"lease \{\n([^{}]*)\}")
_STATEMENT = re.compile(r"^\s*([a-z][a-z0-9-]*(?: [a-z][a-z0-9-]*)?) ([ -~]*);$")
_EXPIRE = re.compile(r"^\d (\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2})$")


@dataclass(frozen=True)
class Lease:
    interface: str
    address: str  # the machine's own, fixed-address
    fabric: str | None  # option 245, if present and valid
    expires: datetime | None  # None: never


def _fabric_ip(text: str) -> str | None:
    """A plain dotted-quad IPv4 address in the fabric's subnet (not its network or
    broadcast address), else None."""
    try:
        ip = ipaddress.IPv4Address(text)  # strict: no leading zeros, no hostnames
    except ValueError:
        return None
    ok = ip in FABRIC_NET and ip not in (FABRIC_NET.network_address,
                                         FABRIC_NET.broadcast_address)
    return str(ip) if ok else None


def parse(text: str) -> Lease | None:
    """The last complete lease of a dhclient lease file, or None if it has none or it
    does not parse."""
    blocks = _LEASE.findall(text)
    if not blocks:
        return None
    values: dict[str, str] = {}
    for line in blocks[-1].splitlines():
        if not line.strip():
            continue
        m = _STATEMENT.match(line)
        if m is None:
            return None  # not dhclient's grammar: trust nothing of it
        if m.group(1) in values:
            return None  # dhclient writes each once: a second one is not its file
        values[m.group(1)] = m.group(2)
    iface = values.get("interface", "")
    if not re.fullmatch(r'"[a-zA-Z0-9_.-]{1,15}"', iface):
        return None
    address = _fabric_ip(values.get("fixed-address", ""))
    expire = values.get("expire", "")
    if address is None or not expire:
        return None
    if expire == "never":
        expires = None
    else:
        m = _EXPIRE.match(expire)
        if m is None:
            return None
        try:
            expires = datetime.strptime(m.group(1), "%Y/%m/%d %H:%M:%S").replace(tzinfo=UTC)
        except ValueError:
            return None
    return Lease(iface.strip('"'), address, _fabric_ip(values.get("option fabric-address",
                                                                  "")), expires)


def read(path: str | Path = GUEST_LEASE_FILE) -> Lease | None:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError:
        return None
    if len(data) > MAX_BYTES:
        return None
    try:
        return parse(data.decode("ascii"))
    except UnicodeDecodeError:
        return None


def addresses(interface: str) -> list[tuple[str, int]]:
    """(address, valid lifetime in seconds) of the interface's IPv4 addresses."""
    try:
        out = subprocess.run(["ip", "-j", "-4", "addr", "show", "dev", interface],
                             capture_output=True, timeout=10).stdout
        links = json.loads(out or b"[]")
        return [(str(a["local"]), int(a.get("valid_life_time", INFINITE)))
                for link in links for a in link.get("addr_info", [])]
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError):
        return []


def held(lease: Lease, now: datetime | None = None) -> bool:
    """The DHCP client holds the lease: it has not expired, and its address is on its
    interface with a finite lifetime (a static address is forever)."""
    now = now or datetime.now(UTC)
    if lease.expires is not None and lease.expires <= now:
        return False
    return any(a == lease.address and life != INFINITE
               for a, life in addresses(lease.interface))


def fabric_from_lease(path: str | Path = GUEST_LEASE_FILE) -> str | None:
    """The fabric address option 245 of the held lease names, or None."""
    lease = read(path)
    if lease is None or lease.fabric is None or not held(lease):
        return None
    return lease.fabric
