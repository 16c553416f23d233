"""The fabric's DHCP server and the agent's discovery from its lease (option 245).

VMs get their address by DHCP; here a sandbox machine plays one: the guest image's own
ifupdown and dhclient run in the machine's network and mount namespaces as the root of
a VM would (a sandbox guest lacks CAP_NET_RAW, which a DHCP client needs), against the
real dnsmasq the fabric runs. The agent inside is the machine's own, restricted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import Service, needs_root, running_service
from frostpoint.fabric.dhcp import DhcpServer
from frostpoint.fabric.network import FabricNetwork, instance_id, mac_for
from frostpoint.protocol import GUEST_LEASE_FILE, GUEST_NETWORK_CONFIG

pytestmark = needs_root
M = "vmlike"


def net(service: Service) -> FabricNetwork:
    return FabricNetwork(instance_id(service.data_dir))


def as_vm_root(service: Service, script: str, check: bool = True,
               timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a shell script in the machine's network and mount namespaces, with the
    powers the root of a VM has there."""
    ns = net(service).machine_ns(M)
    p = subprocess.run(["nsenter", f"--net=/run/netns/{ns}",
                        f"--mount={service.data_dir / 'run' / 'mntns' / M}", "--",
                        "sh", "-c", script], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{script}: {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def addresses(service: Service) -> list[dict[str, Any]]:
    out = as_vm_root(service, "ip -j -4 addr show dev eth0").stdout
    return [a for link in json.loads(out) for a in link["addr_info"]]


def doctor(service: Service, *args: str) -> dict[str, Any]:
    return json.loads(service.cli("doctor", M, "--json", *args, check=False).stdout)


def discovery(service: Service) -> dict[str, Any]:
    return next(f for f in doctor(service)["findings"]
                if f["check"] == "guest.network.discovery")


def backup_succeeds(service: Service) -> None:
    service.wait_agent_ready(M, timeout=40)
    job = service.backup(M)
    assert job["status"] in ("Completed", "CompletedWithWarnings"), job.get("error")


@pytest.fixture(scope="module")
def machine(service: Service) -> str:
    service.protected_machine(M)
    return service.client.get(f"/machines/{M}")["address"]


def test_a_guest_gets_its_slots_address_and_the_fabric_by_dhcp(service: Service,
                                                               machine: str) -> None:
    # Boot as a VM does: no address, then ifupdown's `inet dhcp` runs dhclient.
    as_vm_root(service, "ip addr flush dev eth0 && mkdir -p /run/network && ifup eth0")
    got = addresses(service)
    assert [a["local"] for a in got] == [machine], got
    assert got[0]["valid_life_time"] < 0xFFFFFFFF, "a DHCP lease has a lifetime"
    lease = as_vm_root(service, f"cat {GUEST_LEASE_FILE}").stdout
    assert "option fabric-address 10.213.0.1;" in lease, lease
    assert "default" not in as_vm_root(service, "ip route").stdout, "nothing is routed"
    # The agent, Endpoint.Address=auto, finds the fabric in the lease alone.
    assert "Endpoint.Address=auto" in service.exec(M, "cat /etc/frostpoint/agent.conf")
    service.cli_json("vm", "agent", "restart", M)
    backup_succeeds(service)
    found = discovery(service)
    assert found["status"] == "pass" and "option 245" in found["message"], found


def test_dhcp_off_with_a_static_address_gives_the_code_the_finding_and_the_fix(
        service: Service, machine: str) -> None:
    # DHCP off as a user turns it off: the static address in the network config.
    as_vm_root(service, f"ifdown eth0 && printf 'auto eth0\\niface eth0 inet static\\n"
               f"    address {machine}/24\\n' > {GUEST_NETWORK_CONFIG} && ifup eth0")
    assert [(a["local"], a["valid_life_time"]) for a in addresses(service)] == [
        (machine, 0xFFFFFFFF)]
    service.cli_json("vm", "agent", "restart", M)
    time.sleep(13)  # past the heartbeat limit
    job = service.backup(M, timeout=120)
    assert job["status"] == "Failed", job
    assert job["error"]["code"] == "UserErrorGuestAgentStatusUnavailable", job["error"]
    log = (service.guest_file(M, "log") / "agent.log").read_text()
    assert "DHCP is off for eth0" in log
    found = discovery(service)
    assert found["status"] == "fail", found
    assert found["code"] == "UserErrorGuestAgentStatusUnavailable"
    assert "DHCP is off for eth0" in found["message"] and machine in found["message"]
    assert any("inet dhcp" in f for f in found["fix"]), found["fix"]
    doctor(service, "--fix")  # names the fabric's well-known address: a safe fix
    assert "Endpoint.Address=10.213.0.1" in service.exec(M, "cat /etc/frostpoint/agent.conf")
    backup_succeeds(service)
    # The finding's other fix, DHCP back on, gives the lease and discovery again.
    for command in found["fix"][:-1]:
        as_vm_root(service, command.removeprefix(f"frostpoint vm exec {M} -- "))
    service.exec(M, "sed -i 's/^Endpoint.Address=.*/Endpoint.Address=auto/' "
                 "/etc/frostpoint/agent.conf")
    service.cli_json("vm", "agent", "restart", M)
    backup_succeeds(service)
    assert "option 245" in discovery(service)["message"]


# A DHCPREQUEST for chaddr (argv[2]) and address argv[3], sent from eth0 with the MAC
# argv[1]; prints the address of every answer for that chaddr seen within 2 s.
REQUEST = r"""
import os, socket, struct, sys, time
me, chaddr = (bytes.fromhex(a.replace(":", "")) for a in sys.argv[1:3])
want = socket.inet_aton(sys.argv[3])
xid = os.urandom(4)
bootp = (struct.pack("!BBBB4sHH4s4s4s4s", 1, 1, 6, 0, xid, 0, 0, *(b"\0" * 4,) * 4)
         + chaddr + b"\0" * 10 + b"\0" * 192 + b"\x63\x82\x53\x63"
         + bytes([53, 1, 3, 50, 4]) + want + bytes([55, 2, 1, 245, 255]))
udp = struct.pack("!HHHH", 68, 67, 8 + len(bootp), 0) + bootp
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, b"\0" * 4,
                 b"\xff" * 4)
csum = sum(struct.unpack("!10H", ip))
csum = (csum & 0xFFFF) + (csum >> 16)
ip = ip[:10] + struct.pack("!H", ~csum & 0xFFFF) + ip[12:]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
s.bind(("eth0", 0))
s.settimeout(0.2)
s.send(b"\xff" * 6 + me + b"\x08\x00" + ip + udp)
end = time.monotonic() + 2
while time.monotonic() < end:
    try:
        frame = s.recv(2048)
    except TimeoutError:
        continue
    body = frame[14 + 20 + 8:]
    if frame[14 + 9] == 17 and body[0] == 2 and body[4:8] == xid and body[28:34] == chaddr:
        print(socket.inet_ntoa(body[16:20]))
"""


def request(service: Service, me: str, chaddr: str, address: str) -> list[str]:
    """Ask for address for chaddr from the machine's port, with its MAC me."""
    ns = net(service).machine_ns(M)
    p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", REQUEST, me,
                        chaddr, address], capture_output=True, text=True, timeout=30,
                       check=True)
    return p.stdout.split()


def test_a_guest_asking_with_another_mac_gets_no_lease(service: Service,
                                                       machine: str) -> None:
    own = mac_for(machine)  # the MAC the fabric gives the machine's address
    assert request(service, own, own, machine) == [machine], "its own lease is acked"
    # Another slot's MAC in the request, from the guest's own port: no answer, and
    # dnsmasq (which would ack it: it has that slot's entry) never saw it.
    other = mac_for("10.213.0.200")
    assert request(service, own, other, "10.213.0.200") == []
    leases = (service.data_dir / "run" / "dhcp" / "leases").read_text()
    assert own in leases and other not in leases, leases
    # The guest changes its MAC to that other one and asks by DHCP: no lease either.
    p = as_vm_root(service, f"ip link set eth0 address {other} && rm -f /tmp/l && "
                   "timeout 5 dhclient -1 -d -lf /tmp/l -pf /tmp/p eth0", check=False)
    assert p.returncode != 0, p.stderr
    assert "DHCPOFFER" not in p.stderr and "DHCPACK" not in p.stderr, p.stderr
    as_vm_root(service, f"ip link set eth0 address {own}")


def ended(pid: int) -> bool:
    """Gone, or a zombie its adopter has not reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_dnsmasq_is_confined_outlives_the_service_restarts_when_dead_and_goes_at_teardown(
        ) -> None:
    gen = running_service()
    svc = next(gen)
    dhcp = DhcpServer(svc.data_dir, net(svc))
    try:
        pid = dhcp.pid()
        assert pid is not None
        status = Path(f"/proc/{pid}/status").read_text()
        uid = next(ln.split()[1] for ln in status.splitlines() if ln.startswith("Uid:"))
        caps = next(ln.split()[1] for ln in status.splitlines() if ln.startswith("CapEff:"))
        assert uid != "0" and int(caps, 16) == 1 << 12, (uid, caps)  # CAP_NET_ADMIN only
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(
            f"/run/netns/{net(svc).fabric_ns}").st_ino, "in the fabric namespace"
        svc.stop()
        assert dhcp.pid() == pid, "it keeps serving while the service is down"
        os.kill(pid, 9)
        time.sleep(0.2)
        svc.start()
        assert dhcp.pid() not in (None, pid), "a dead one is started again"
        last = dhcp.pid()
    finally:
        gen.close()  # stops the service and tears the fabric down
    assert last is not None and ended(last)
    assert not subprocess.run(["pgrep", "-f", str(svc.data_dir)], capture_output=True
                              ).stdout, "nothing of the fabric runs"
