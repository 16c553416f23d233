"""Release everything a service's fabric holds on this host: the DHCP server, processes
in its namespaces (QEMU guests too, which run in the fabric's), mount namespaces, loop
devices, namespaces, the pool mount.

Used by `frostpoint quickstart --down` and by tests, so nothing is left behind even
when machines were not deleted one by one.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from frostpoint.fabric.brokers import FreezeBrokers
from frostpoint.fabric.dhcp import DhcpServer
from frostpoint.fabric.network import FabricNetwork, instance_id
from frostpoint.fabric.pool import DiskPool
from frostpoint.fabric.system import (
    is_mountpoint,
    loop_devices,
    run,
    thaw_machine_disks,
)


def teardown_host(data_dir: Path) -> None:
    net = FabricNetwork(instance_id(data_dir))
    nsroot = Path("/run/netns")
    names = [p.name for p in nsroot.glob(f"fp{net.instance}-*")] if nsroot.exists() else []
    DhcpServer(data_dir, net).stop()  # by its pid file; the kill below is the fallback
    ns_dir = data_dir / "run" / "mntns"
    for f in ns_dir.iterdir() if ns_dir.exists() else []:
        if is_mountpoint(f):
            thaw_machine_disks(f)
    for ns in names:
        for pid in net.pids_in(ns):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    time.sleep(0.2)
    FreezeBrokers(data_dir / "run" / "broker").stop_all()
    if ns_dir.exists():
        for f in ns_dir.iterdir():
            while is_mountpoint(f):
                if run(["umount", str(f)], check=False).returncode != 0:
                    break
        while is_mountpoint(ns_dir):
            if run(["umount", str(ns_dir)], check=False).returncode != 0:
                break
    pool = DiskPool(data_dir)
    _release_host_mounts(pool.root)
    for device, backing in loop_devices():
        if backing.startswith(str(pool.root) + "/"):
            run(["losetup", "-d", device], check=False)
    net.teardown()  # QEMU guests run in the fabric namespace: killed with it above
    run(["rm", "-rf", f"/run/frostpoint/{net.instance}"], check=False)  # their sockets
    pool.teardown()


def _release_host_mounts(pool_root: Path) -> None:
    """Restore mounts and vault readers in the pool (`restore mount`, `rp browse`):
    their reader processes end, their mounts go (deepest first), so the pool unmounts."""
    under = str(pool_root) + "/"
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if under.encode() in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ValueError):
            pass
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    for point in sorted((p for p in points if p.startswith(under)), reverse=True):
        run(["umount", "-l", point], check=False)
