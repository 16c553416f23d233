"""The fabric network: one namespace holding a bridge with the fabric address, and a
veth pair per machine into the machine's own namespace. Nothing is routed outside."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from frostpoint.fabric.system import run
from frostpoint.protocol import FABRIC_ADDRESS, FABRIC_SUBNET, HOST_PORT, PREFIX_LEN, WIRE_PORT

BRIDGE = "fpbr0"
# TCP connections one source address may hold to each endpoint port: a guest that
# opens thousands of idle ones would use up the service's file descriptors. The agent
# needs a handful.
MAX_CONNECTIONS = 64
log = logging.getLogger("frostpoint.fabric.network")


class FabricNetwork:
    def __init__(self, instance: str) -> None:
        self.instance = instance  # a few hex digits: several services may share a host
        self.fabric_ns = f"fp{instance}-fabric"

    def machine_ns(self, machine: str) -> str:
        return f"fp{self.instance}-m-{machine}"

    def machine_address(self, slot: int) -> str:
        return f"{FABRIC_SUBNET}.{slot + 10}"

    def _host_link(self, slot: int) -> str:
        return f"fp{self.instance}h{slot}"[:15]

    @staticmethod
    def ns_exists(ns: str) -> bool:
        return Path(f"/run/netns/{ns}").exists()

    def ensure_fabric(self) -> None:
        ns = self.fabric_ns
        if not self.ns_exists(ns):
            run(["ip", "netns", "add", ns])
        if run(["ip", "-n", ns, "link", "show", BRIDGE], check=False).returncode != 0:
            run(["ip", "-n", ns, "link", "add", BRIDGE, "type", "bridge"])
            run(["ip", "-n", ns, "addr", "add", f"{FABRIC_ADDRESS}/{PREFIX_LEN}", "dev", BRIDGE])
        run(["ip", "-n", ns, "link", "set", BRIDGE, "up"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        self._limit_connections()

    def _limit_connections(self) -> None:
        if shutil.which("iptables") is None:
            log.warning("iptables is missing: connections per machine are not limited")
            return
        for port in (WIRE_PORT, HOST_PORT):
            rule = ["INPUT", "-p", "tcp", "--syn", "--dport", str(port), "-m", "connlimit",
                    "--connlimit-above", str(MAX_CONNECTIONS), "--connlimit-mask", "32",
                    "-j", "REJECT", "--reject-with", "tcp-reset"]
            ipt = ["ip", "netns", "exec", self.fabric_ns, "iptables", "-w"]
            if run([*ipt, "-C", *rule], check=False).returncode != 0:
                run([*ipt, "-A", *rule])

    def attach_machine(self, machine: str, slot: int) -> None:
        ns = self.machine_ns(machine)
        if not self.ns_exists(ns):
            run(["ip", "netns", "add", ns])
        if run(["ip", "-n", ns, "link", "show", "eth0"], check=False).returncode != 0:
            host = self._host_link(slot)
            run(["ip", "-n", self.fabric_ns, "link", "del", host], check=False)
            run(["ip", "-n", self.fabric_ns, "link", "add", host, "type", "veth",
                 "peer", "name", "eth0", "netns", ns])
            run(["ip", "-n", self.fabric_ns, "link", "set", host, "master", BRIDGE, "up"])
            run(["ip", "-n", ns, "addr", "add",
                 f"{self.machine_address(slot)}/{PREFIX_LEN}", "dev", "eth0"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        # The lease: a default route via the fabric, which is how agents discover it.
        run(["ip", "-n", ns, "route", "replace", "default", "via", FABRIC_ADDRESS])

    def detach_machine(self, machine: str) -> None:
        ns = self.machine_ns(machine)
        if self.ns_exists(ns):
            run(["ip", "netns", "del", ns], check=False)  # its veth end goes with it

    def pids_in(self, ns: str) -> list[int]:
        if not self.ns_exists(ns):
            return []
        out = run(["ip", "netns", "pids", ns], check=False).stdout.decode()
        return [int(p) for p in out.split()]

    def teardown(self) -> None:
        for ns in Path("/run/netns").glob(f"fp{self.instance}-*") if Path(
                "/run/netns").exists() else []:
            run(["ip", "netns", "del", ns.name], check=False)
