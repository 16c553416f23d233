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
    job = service.backup(A, timeout=120)
    assert job["status"] == "Completed", job["error"]


def run_in(ns: str, code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=timeout)


def connects(ns: str, to: str, port: int, source: str | None = None) -> bool:
    """A TCP connection from inside ns to to:port is answered within 3 s."""
    bind = f"s.bind(({source!r}, 0)); " if source else ""
    code = (f"import socket; s = socket.socket(); s.settimeout(3); {bind}"
            f"s.connect(({to!r}, {port}))")
    return run_in(ns, code).returncode == 0


@pytest.fixture
def listener_in_b(net: FabricNetwork, service: Service) -> Iterator[tuple[str, int]]:
    """A TCP listener on alice's address, in alice's namespace."""
    b_ip, port = service.client.get(f"/machines/{B}")["address"], 7000
    code = (f"import socket, sys; s = socket.socket(); s.bind(({b_ip!r}, {port})); "
            "s.listen(8); print('ready', flush=True); sys.stdin.read()")
    proc = in_netns(net.machine_ns(B), [sys.executable, "-c", code], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    yield b_ip, port
    proc.communicate(timeout=10)


def test_machines_cannot_reach_each_other(service: Service, net: FabricNetwork,
                                         listener_in_b: tuple[str, int]) -> None:
    a_ns, b_ns = net.machine_ns(A), net.machine_ns(B)
    b_ip, port = listener_in_b
    assert connects(b_ns, b_ip, port)  # the listener is there
    # Directly on the segment, even knowing alice's MAC...
    ip(a_ns, "neigh", "replace", b_ip, "lladdr", link_mac(b_ns, "eth0"), "dev", "eth0")
    try:
        assert not connects(a_ns, b_ip, port)
    finally:
        ip(a_ns, "neigh", "del", b_ip, "dev", "eth0", check=False)
    # ...or through the fabric as a router.
    ip(a_ns, "route", "add", f"{b_ip}/32", "via", FABRIC_ADDRESS)
    try:
        assert not connects(a_ns, b_ip, port)
    finally:
        ip(a_ns, "route", "del", f"{b_ip}/32", check=False)
    # Nothing leads out of the fabric namespace: its bridge and the machine ports only,
    # and it forwards nothing.
    links = {str(link["ifname"]) for link in json.loads(ip(net.fabric_ns, "-j", "link",
                                                            "show").stdout)}
    assert {x for x in links if not x.startswith(f"fp{net.instance}h")} == {"lo", "fpbr0"}
    forward = run_in(net.fabric_ns, "print(open('/proc/sys/net/ipv4/ip_forward').read())")
    assert forward.stdout.strip() == "0"
    job = service.backup(A, timeout=120)
    assert job["status"] == "Completed", job["error"]


def test_guest_cloning_another_machines_mac_and_address_reaches_nothing(
        service: Service, net: FabricNetwork) -> None:
    a_ns, b_ns = net.machine_ns(A), net.machine_ns(B)
    b_ip = service.client.get(f"/machines/{B}")["address"]
    a_mac, b_mac = link_mac(a_ns, "eth0"), link_mac(b_ns, "eth0")
    ip(a_ns, "link", "set", "eth0", "address", b_mac)
    ip(a_ns, "addr", "add", f"{b_ip}/32", "dev", "eth0")
    try:
        # Mallory, as alice, cannot open a connection to the fabric...
        assert not connects(a_ns, FABRIC_ADDRESS, WIRE_PORT, source=b_ip)
        # ...and alice, still sharing her MAC with mallory, backs up.
        assert service.backup(B, timeout=120)["status"] == "Completed"
    finally:
        ip(a_ns, "addr", "del", f"{b_ip}/32", "dev", "eth0", check=False)
    # The fabric puts the machine's own MAC back when it starts.
    service.client.post(f"/machines/{A}/stop", {})
    service.client.post(f"/machines/{A}/start", {})
    assert link_mac(a_ns, "eth0") == a_mac
    service.wait_agent_ready(A)
    job = service.backup(A, timeout=120)
    assert job["status"] == "Completed", job["error"]


def test_filter_follows_machines_and_adopts_running_ones(service: Service,
                                                        net: FabricNetwork) -> None:
    def elements_for(address: str) -> list[tuple[str, str, str]]:
        return [e for e in net.port_elements() if e[2] == address]

    c = service.client
    c.post("/machines", {"name": "carol", "disks": [{"name": "data", "size": "64M"}]})
    c_ip = c.get("/machines/carol")["address"]
    [(port, mac, _)] = elements_for(c_ip)
    assert link_mac(net.machine_ns("carol"), "eth0") == mac
    assert neighbour_mac(net.fabric_ns, c_ip) == mac
    c.delete("/machines/carol")
    assert elements_for(c_ip) == [] and neighbour_mac(net.fabric_ns, c_ip) is None
    assert port not in {str(link["ifname"]) for link in json.loads(
        ip(net.fabric_ns, "-j", "link", "show").stdout)}
    # A machine that kept running across a restart of the service, attached without an
    # element (as by a release before the filter), is let through again at start.
    a_ip = c.get(f"/machines/{A}")["address"]
    [(a_port, a_mac, _)] = elements_for(a_ip)
    subprocess.run(["ip", "netns", "exec", net.fabric_ns, "nft", "delete", "element",
                    "bridge", "frostpoint", "ports", f'{{ "{a_port}" . {a_mac} . {a_ip} }}'],
                   check=True)
    service.stop()
    service.start()
    assert elements_for(a_ip) == [(a_port, a_mac, a_ip)]
    service.wait_agent_ready(A)
    job = service.backup(A, timeout=120)
    assert job["status"] == "Completed", job["error"]
