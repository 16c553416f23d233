"""The fabric network: one namespace holding a bridge with the fabric address, and a
veth pair per machine into the machine's own namespace. Nothing is routed outside.

Guests are root in their own network namespace: they can add addresses, change their
MAC and send any frame. So the fabric, not the guest, decides who a port is:

- each machine's MAC is fixed per slot (set on the guest end of its veth at every
  attach) and so is its address;
- the bridge ports are isolated (no frame goes from one machine port to another), do
  not learn MACs (a static forwarding entry per port) and do not flood unknown
  unicast or multicast;
- the fabric namespace's neighbour entries for machines, and each machine's entry
  for the fabric, are permanent, so ARP answers change nothing;
- an nftables bridge table (`table bridge frostpoint`) drops every frame that enters
  from a machine port unless its source MAC and its IPv4 or ARP sender are that
  port's own and it is addressed to the fabric address, drops all forwarding between
  ports, and lets the fabric send a port only frames for that port's MAC and address
  (plus its own ARP). One set, `ports`, holds port . MAC . address per machine; a port
  without an element gets nothing through;
- DHCP (fabric/dhcp.py) comes in only as a request whose frame and request (its
  chaddr) carry the port's own MAC (set `dhcp`), at a limited rate per port.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import socket
from pathlib import Path

from frostpoint.errors.catalog import FrostpointError
from frostpoint.fabric.system import run
from frostpoint.protocol import FABRIC_ADDRESS, FABRIC_SUBNET, HOST_PORT, PREFIX_LEN, WIRE_PORT

log = logging.getLogger(__name__)


def instance_id(data_dir: Path) -> str:
    """Short id naming a service's namespaces (from its data directory), so tests can
    run several services on one host. Here, not in the service: the fabric names its
    own namespaces and never imports the service."""
    return hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:4]

BRIDGE = "fpbr0"
TABLE = "bridge frostpoint"
ARP_IPV4 = "arp htype 1 arp ptype ip arp hlen 6 arp plen 4"  # the only ARP we parse


def mac_for(address: str) -> str:
    """The MAC the fabric gives an address: locally administered 02:00 + its 4 bytes."""
    return "02:00:" + ":".join(f"{b:02x}" for b in socket.inet_aton(address))


FABRIC_MAC = mac_for(FABRIC_ADDRESS)
# The slots the fabric's subnet can give an address (.11 to .254).
SLOTS = range(1, 245)
# A DHCP request's client hardware address: 28 bytes into the BOOTP message, after
# the 8-byte UDP header (in bits, for nftables' raw payload match).
CHADDR = "@th,288,48"


def chaddr(mac: str) -> str:
    """A MAC as the raw chaddr match above compares it: one 48-bit number."""
    return "0x" + mac.replace(":", "")


# Applied in one nftables transaction at every service start: the chains are flushed
# and refilled, the set (and so the running machines' elements) is kept.
RULESET = f"""\
add table {TABLE}
add set {TABLE} ports {{ type ifname . ether_addr . ipv4_addr; }}
add set {TABLE} dhcp {{ typeof iifname . ether saddr . {CHADDR}; }}
add set {TABLE} dhcp_rate {{ type ifname; flags dynamic; size 1024; }}
add chain {TABLE} prerouting {{ type filter hook prerouting priority filter; policy drop; }}
add chain {TABLE} forward {{ type filter hook forward priority filter; policy drop; }}
add chain {TABLE} output {{ type filter hook output priority filter; policy drop; }}
flush chain {TABLE} prerouting
flush chain {TABLE} forward
flush chain {TABLE} output
add rule {TABLE} prerouting udp dport 67 update @dhcp_rate {{ iifname limit rate over \
20/second burst 40 packets }} drop
add rule {TABLE} prerouting udp dport 67 iifname . ether saddr . {CHADDR} != @dhcp drop
add rule {TABLE} prerouting ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept
add rule {TABLE} prerouting ip daddr {FABRIC_ADDRESS} \
iifname . ether saddr . ip saddr @ports accept
add rule {TABLE} prerouting {ARP_IPV4} arp daddr ip {FABRIC_ADDRESS} \
iifname . ether saddr . arp saddr ip @ports iifname . arp saddr ether . arp saddr ip @ports \
accept
add rule {TABLE} output oifname . ether daddr . ip daddr @ports accept
add rule {TABLE} output ether saddr {FABRIC_MAC} {ARP_IPV4} arp saddr ether {FABRIC_MAC} \
arp saddr ip {FABRIC_ADDRESS} accept
"""

# TCP connections one source address may hold to each endpoint port: a guest that
# opens thousands of idle ones would use up the service's file descriptors. The agent
# needs a handful. Its own table, in the same transaction as the bridge filter.
MAX_CONNECTIONS = 64
LIMITS = "inet frostpoint_limits"
RULESET += f"""\
add table {LIMITS}
add set {LIMITS} conns {{ type ipv4_addr . inet_service; flags dynamic; }}
add chain {LIMITS} input {{ type filter hook input priority filter; policy accept; }}
flush chain {LIMITS} input
add rule {LIMITS} input tcp dport {{ {WIRE_PORT}, {HOST_PORT} }} ct state new \
add @conns {{ ip saddr . tcp dport ct count over {MAX_CONNECTIONS} }} reject with tcp reset
"""


class FabricNetwork:
    def __init__(self, instance: str) -> None:
        self.instance = instance  # a few hex digits: several services may share a host
        self.fabric_ns = f"fp{instance}-fabric"

    def machine_ns(self, machine: str) -> str:
        return f"fp{self.instance}-m-{machine}"

    def machine_address(self, slot: int) -> str:
        return f"{FABRIC_SUBNET}.{slot + 10}"

    def machine_mac(self, slot: int) -> str:
        return mac_for(self.machine_address(slot))

    def _host_link(self, slot: int) -> str:
        return f"fp{self.instance}h{slot}"[:15]

    def tap_name(self, slot: int) -> str:
        """A QEMU guest's port: a tap on the bridge, opened by its QEMU (fabric/qemu.py)."""
        return f"fp{self.instance}t{slot}"[:15]

    @staticmethod
    def ns_exists(ns: str) -> bool:
        return Path(f"/run/netns/{ns}").exists()

    def _nft(self, script: str, check: bool = True) -> None:
        run(["ip", "netns", "exec", self.fabric_ns, "nft", "-f", "-"], input=script.encode(),
            check=check)

    def _links(self, ns: str, *args: str) -> list[dict[str, object]]:
        out = run(["ip", "-n", ns, "-j", "link", "show", *args], check=False).stdout
        return list(json.loads(out or b"[]"))

    def ensure_fabric(self) -> None:
        if shutil.which("nft") is None:
            raise RuntimeError("nft is missing: apt-get install nftables")
        ns = self.fabric_ns
        if not self.ns_exists(ns):
            run(["ip", "netns", "add", ns])
        # Nothing is routed: not between machines (hairpin through the fabric), not out.
        run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0"])
        run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w",  # absent if IPv6 is
             "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"],
            check=False)  # off in the kernel; the filter drops IPv6 anyway
        self._nft(RULESET)
        if run(["ip", "-n", ns, "link", "show", BRIDGE], check=False).returncode != 0:
            run(["ip", "-n", ns, "link", "add", BRIDGE, "address", FABRIC_MAC, "type",
                 "bridge"])
            run(["ip", "-n", ns, "addr", "add", f"{FABRIC_ADDRESS}/{PREFIX_LEN}", "dev", BRIDGE])
        # Fixed, else a bridge takes the lowest MAC among its ports.
        run(["ip", "-n", ns, "link", "set", BRIDGE, "address", FABRIC_MAC])
        run(["ip", "-n", ns, "link", "set", BRIDGE, "up"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        self._adopt_running()

    def _port_of(self, ns: str) -> str | None:
        """The fabric end (bridge port) of the veth whose other end is eth0 in ns."""
        eth0 = self._links(ns, "dev", "eth0")
        peer = eth0[0].get("link_index") if eth0 else None
        ports = self._links(self.fabric_ns, "master", BRIDGE)
        return next((str(p["ifname"]) for p in ports if p["ifindex"] == peer), None)

    def _adopt_running(self) -> None:
        """Pin the ports of machines that kept running while the service was down (or
        were attached by a release without these defences): the filter drops frames of
        a port without an element."""
        nsroot = Path("/run/netns")
        for nsfile in nsroot.glob(f"fp{self.instance}-m-*") if nsroot.exists() else []:
            slot = (self._port_of(nsfile.name) or "").rpartition("h")[2]
            if not slot.isdigit():
                continue
            try:
                self._pin(nsfile.name, int(slot))
            except FrostpointError as e:  # that machine stays cut off; the rest start
                log.warning("could not pin the fabric port of %s: %s %s", nsfile.name, e,
                            e.details)
        prefix = f"fp{self.instance}t"
        for link in self._links(self.fabric_ns) if self.ns_exists(self.fabric_ns) else []:
            tap = str(link["ifname"])
            if tap.startswith(prefix) and tap[len(prefix):].isdigit():
                self._pin_port(tap, int(tap[len(prefix):]))

    def attach_machine(self, machine: str, slot: int) -> None:
        ns = self.machine_ns(machine)
        if not self.ns_exists(ns):
            run(["ip", "netns", "add", ns])
        if run(["ip", "-n", ns, "link", "show", "eth0"], check=False).returncode != 0:
            host = self._host_link(slot)
            run(["ip", "-n", self.fabric_ns, "link", "del", host], check=False)
            run(["ip", "-n", self.fabric_ns, "link", "add", host, "type", "veth",
                 "peer", "name", "eth0", "address", self.machine_mac(slot), "netns", ns])
            run(["ip", "-n", self.fabric_ns, "link", "set", host, "master", BRIDGE])
            run(["ip", "-n", ns, "addr", "add",
                 f"{self.machine_address(slot)}/{PREFIX_LEN}", "dev", "eth0"])
        self._pin(ns, slot)
        run(["ip", "-n", self.fabric_ns, "link", "set", self._host_link(slot), "up"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        # The lease: a default route via the fabric, which is how agents discover it.
        run(["ip", "-n", ns, "route", "replace", "default", "via", FABRIC_ADDRESS])

    def _pin(self, ns: str, slot: int) -> None:
        """Make the port of the machine in ns (at slot) carry only that machine."""
        mac = self.machine_mac(slot)
        # The guest may have changed its MAC; the fabric puts its own back.
        run(["ip", "-n", ns, "link", "set", "eth0", "address", mac])
        run(["ip", "-n", ns, "neigh", "replace", FABRIC_ADDRESS, "lladdr", FABRIC_MAC,
             "dev", "eth0", "nud", "permanent"])
        self._pin_port(self._host_link(slot), slot)

    def attach_tap(self, slot: int) -> str:
        """A QEMU guest's port (a persistent tap on the bridge, same defences as a veth:
        the guest's kernel is its own, so its MAC and neighbour entries are its business;
        the bridge, the filter and the fabric's neighbour entry are the host's)."""
        tap = self.tap_name(slot)
        if run(["ip", "-n", self.fabric_ns, "link", "show", tap], check=False).returncode:
            run(["ip", "-n", self.fabric_ns, "tuntap", "add", "dev", tap, "mode", "tap"])
            run(["ip", "-n", self.fabric_ns, "link", "set", tap, "master", BRIDGE])
        self._pin_port(tap, slot)
        run(["ip", "-n", self.fabric_ns, "link", "set", tap, "up"])
        return tap

    def detach_tap(self, slot: int) -> None:
        run(["ip", "-n", self.fabric_ns, "link", "del", self.tap_name(slot)], check=False)
        self._prune()

    def _pin_port(self, host: str, slot: int) -> None:
        """The fabric's side of a port: isolated, no learning or flooding, one static
        forwarding entry, a permanent neighbour entry, one filter element."""
        addr, mac, fab = self.machine_address(slot), self.machine_mac(slot), self.fabric_ns
        run(["bridge", "-n", fab, "link", "set", "dev", host, "isolated", "on",
             "learning", "off", "flood", "off", "mcast_flood", "off"])
        run(["bridge", "-n", fab, "fdb", "replace", mac, "dev", host, "master", "static"])
        run(["ip", "-n", fab, "neigh", "replace", addr, "lladdr", mac, "dev", BRIDGE,
             "nud", "permanent"])
        self._nft(f'add element {TABLE} ports {{ "{host}" . {mac} . {addr} }}\n'
                  f'add element {TABLE} dhcp {{ "{host}" . {mac} . {chaddr(mac)} }}\n')

    def port_elements(self) -> list[tuple[str, str, str]]:
        """(port, MAC, address) of every machine port the filter lets through."""
        out = run(["ip", "netns", "exec", self.fabric_ns, "nft", "-j", "list", "set",
                   *TABLE.split(), "ports"], check=False).stdout
        if not out:
            return []
        sets = [o["set"] for o in json.loads(out)["nftables"] if "set" in o]
        elems = sets[0].get("elem", []) if sets else []
        return [(str(p), str(m), str(a)) for p, m, a in (e["concat"] for e in elems)]

    def _prune(self) -> None:
        """Drop the elements and neighbour entries of ports that are gone."""
        if not self.ns_exists(self.fabric_ns):
            return
        present = {str(link["ifname"]) for link in self._links(self.fabric_ns)}
        stale = [e for e in self.port_elements() if e[0] not in present]
        for port, mac, addr in stale:  # one by one: a concurrent detach may prune too
            self._nft(f'delete element {TABLE} ports {{ "{port}" . {mac} . {addr} }}\n',
                      check=False)
            self._nft(f'delete element {TABLE} dhcp {{ "{port}" . {mac} . {chaddr(mac)} }}\n',
                      check=False)
            run(["ip", "-n", self.fabric_ns, "neigh", "del", addr, "dev", BRIDGE], check=False)

    def detach_machine(self, machine: str) -> None:
        ns = self.machine_ns(machine)
        if self.ns_exists(ns):
            # Its port goes now (a namespace's devices go when the kernel gets to it),
            # so that its element and neighbour entry can be pruned at once.
            host = self._port_of(ns)
            if host:
                run(["ip", "-n", self.fabric_ns, "link", "del", host], check=False)
            run(["ip", "netns", "del", ns], check=False)
        self._prune()

    def pids_in(self, ns: str) -> list[int]:
        if not self.ns_exists(ns):
            return []
        out = run(["ip", "netns", "pids", ns], check=False).stdout.decode()
        return [int(p) for p in out.split()]

    def teardown(self) -> None:
        # The nftables table lives in the fabric namespace and goes with it.
        for ns in Path("/run/netns").glob(f"fp{self.instance}-*") if Path(
                "/run/netns").exists() else []:
            run(["ip", "netns", "del", ns.name], check=False)
