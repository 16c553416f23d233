"""The fabric's DHCP server: dnsmasq on the fabric bridge, for VMs' guests.

DHCP only (port=0: no DNS), in the fabric namespace, bound to the bridge alone. Each
slot's MAC has a static entry for the slot's fixed address, so DHCP never hands out
an address the anti-spoofing filter would drop; any other MAC is ignored, and there
is no dynamic pool. The lease carries no router and no DNS (nothing is routed), and
names the fabric address in option 245 (protocol.FABRIC_OPTION), as a cloud's DHCP
names its wire server: a VM's agent finds the fabric there (agent/lease.py).

DHCP requests come from guests: hostile. dnsmasq parses them, so it runs as the
unprivileged dnsmasq user with no capability but CAP_NET_ADMIN (which dnsmasq keeps
for DHCP), under no_new_privs and a bounding set of the few it needs to start; the
bridge filter (fabric/network.py) lets a port ask only with its own MAC, in the
frame and in the request, at a limited rate.

Its config, lease, pid and log files are under DATA/run/dhcp. The fabric starts it at
service start (again if it died), and it keeps running while the service is down, as
machines do; teardown (fabric/teardown.py) stops it.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

from frostpoint.fabric.network import BRIDGE, SLOTS, FabricNetwork
from frostpoint.fabric.system import run
from frostpoint.protocol import FABRIC_ADDRESS, FABRIC_OPTION, FABRIC_SUBNET

USER = "dnsmasq"  # made by Debian's dnsmasq-base
LEASE_TIME = "1h"
# What dnsmasq needs to start as root and then become USER keeping CAP_NET_ADMIN.
BOUNDING = "-all,+net_admin,+net_bind_service,+setuid,+setgid"


class DhcpServer:
    def __init__(self, data_dir: Path, network: FabricNetwork) -> None:
        self.network = network
        self.dir = data_dir / "run" / "dhcp"
        self.conf = self.dir / "dnsmasq.conf"
        self.leases = self.dir / "leases"
        self.pid_file = self.dir / "dnsmasq.pid"
        self.log = self.dir / "dnsmasq.log"

    def config(self) -> str:
        hosts = "".join(f"dhcp-host={self.network.machine_mac(s)},"
                        f"{self.network.machine_address(s)}\n" for s in SLOTS)
        return f"""\
# Written by the fabric at every service start (fabric/dhcp.py); not to be edited.
port=0
interface={BRIDGE}
bind-interfaces
no-resolv
no-hosts
no-ping
user={USER}
group=nogroup
dhcp-range={FABRIC_SUBNET}.0,static,255.255.255.0,{LEASE_TIME}
dhcp-ignore=tag:!known
dhcp-authoritative
dhcp-lease-max={len(SLOTS)}
dhcp-option=3
dhcp-option=6
dhcp-option={FABRIC_OPTION},{FABRIC_ADDRESS}
dhcp-leasefile={self.leases}
pid-file={self.pid_file}
log-facility={self.log}
quiet-dhcp
{hosts}"""

    def pid(self, in_fabric: bool = False) -> int | None:
        """The running dnsmasq of this fabric: the pid file's process, if it is dnsmasq
        with this config (a pid may have been reused by another process). in_fabric:
        and it serves the fabric namespace there is now (not one deleted under it)."""
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            ours = f"--conf-file={self.conf}".encode() in cmdline
            if ours and in_fabric:
                ours = os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(
                    f"/run/netns/{self.network.fabric_ns}").st_ino
        except (OSError, ValueError):
            return None
        return pid if ours else None

    def ensure(self) -> None:
        """Start dnsmasq if it is not running (after a crash, or the first start); a
        running one is restarted if its config changed."""
        if shutil.which("dnsmasq") is None:
            raise RuntimeError("dnsmasq is missing: run scripts/install-system-packages")
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)  # root's: dnsmasq opens its files before it drops root
        text = self.config()
        old = self.conf.read_text() if self.conf.exists() else None
        if self.pid(in_fabric=True) is not None and old == text:
            return
        self.stop()
        self.conf.write_text(text)
        run(["ip", "netns", "exec", self.network.fabric_ns, "setpriv",
             f"--bounding-set={BOUNDING}", "--no-new-privs",
             "dnsmasq", f"--conf-file={self.conf}"])
        deadline = time.monotonic() + 5
        while self.pid() is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"dnsmasq did not start: see {self.log}")
            time.sleep(0.05)  # dnsmasq writes its pid file once it has forked

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    """The process runs (a zombie has ended: whoever adopted it reaps it later)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
