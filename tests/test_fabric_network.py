"""The fabric network cannot be spoofed (issue 10, part 3).

A guest is root in its own network namespace: it can add addresses, change its MAC and
send raw frames. These tests do that from one machine (mallory) and check that another
(alice) still reaches the real fabric, that mallory sees none of alice's traffic, and
that machines cannot reach each other at all.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Service, needs_root
from frostpoint.fabric.network import FabricNetwork
from frostpoint.protocol import FABRIC_ADDRESS, HOST_PORT, WIRE_PORT
from frostpoint.service.runtime import instance_id

pytestmark = needs_root
ATTACKER = Path(__file__).with_name("fabric_attacker.py")
A, B = "mallory", "alice"
CANARY = b"frostpoint-canary-3f9a"


@pytest.fixture(scope="module")
def net(service: Service) -> Iterator[FabricNetwork]:
    service.protected_machine(A)
    service.protected_machine(B)
    yield FabricNetwork(instance_id(service.data_dir))


def ip(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True,
                          check=check)


def link_mac(ns: str, dev: str) -> str:
    return str(json.loads(ip(ns, "-j", "link", "show", dev).stdout)[0]["address"])


def neighbour_mac(ns: str, address: str) -> str | None:
    entries = json.loads(ip(ns, "-j", "neigh", "show", address).stdout)
    return entries[0].get("lladdr") if entries else None


def in_netns(ns: str, argv: list[str], **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", ns, *argv], text=True, **kw)


def send_canary(net: FabricNetwork, to: str) -> None:
    """A UDP datagram from the fabric to a machine: proof that a capture works."""
    code = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f"s.sendto(b'{CANARY.decode()}', ('{to}', 9))")
    subprocess.run(["ip", "netns", "exec", net.fabric_ns, sys.executable, "-c", code],
                   check=True)


def ipv4_ends(frame: bytes) -> tuple[str, str] | None:
    """(source, destination) of an Ethernet frame carrying IPv4, else None."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return None
    return socket.inet_ntoa(frame[26:30]), socket.inet_ntoa(frame[30:34])


def test_spoofing_guest_gets_none_of_another_machines_traffic(
        service: Service, net: FabricNetwork) -> None:
    a_ns, b_ns = net.machine_ns(A), net.machine_ns(B)
    a_ip = service.client.get(f"/machines/{A}")["address"]
    b_ip = service.client.get(f"/machines/{B}")["address"]
    fabric_mac = link_mac(net.fabric_ns, "fpbr0")
    b_mac = link_mac(b_ns, "eth0")
    token = (service.guest_file(B, "etc") / "agent.token").read_bytes().strip()
    # Mallory claims the fabric address and alice's, and listens on the fabric's ports.
    ip(a_ns, "addr", "add", f"{FABRIC_ADDRESS}/32", "dev", "eth0")
    ip(a_ns, "addr", "add", f"{b_ip}/32", "dev", "eth0")
    cfg = {"iface": "eth0", "my_mac": link_mac(a_ns, "eth0"), "victim_mac": b_mac,
           "victim_ip": b_ip, "fabric_mac": fabric_mac, "fabric_ip": FABRIC_ADDRESS,
           "ports": [WIRE_PORT, HOST_PORT]}
    attacker = in_netns(a_ns, [sys.executable, str(ATTACKER), json.dumps(cfg)],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert attacker.stdout is not None and attacker.stdout.readline() == "ready\n"
        time.sleep(2)  # poisoning has had its chance before alice's agent next calls
        job = service.backup(B, timeout=120)
        assert job["status"] == "Completed", job
        # alice still knows the fabric by its real MAC, and the fabric knows alice's.
        assert neighbour_mac(b_ns, FABRIC_ADDRESS) == fabric_mac
        assert neighbour_mac(net.fabric_ns, b_ip) == b_mac
        send_canary(net, a_ip)
        time.sleep(0.5)
    finally:
        out, _ = attacker.communicate(timeout=30)  # closes its stdin: it reports
        ip(a_ns, "addr", "del", f"{FABRIC_ADDRESS}/32", "dev", "eth0", check=False)
        ip(a_ns, "addr", "del", f"{b_ip}/32", "dev", "eth0", check=False)
    report = json.loads(out.splitlines()[-1])
    # No agent of alice's connected to the forged fabric.
    assert not [p for p in report["peers"] if p.startswith(b_ip + ":")], report["peers"]
    frames = [bytes.fromhex(f) for f in report["frames"]]
    assert [f for f in frames if CANARY in f], "the capture missed the fabric's canary"
    leaked = [e for f in frames if (e := ipv4_ends(f)) and b_ip in e]
    assert not leaked, f"mallory saw {len(leaked)} IPv4 frames of alice's: {leaked[:5]}"
    assert not [f for f in frames if token in f], "mallory saw alice's bearer token"
    # Mallory's own machine still works once it stops lying.
    assert service.backup(A, timeout=120)["status"] == "Completed"
