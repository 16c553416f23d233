"""Sandbox machines: a network namespace plus a mount namespace with real disks.

A machine's disks are raw images in the disk pool, attached as loop devices and
mounted at /mnt/NAME inside the machine's own mount namespace; the guest's /etc,
/var/lib and /var/log for Frostpoint are bind mounts of a per-machine folder. The
guest init (agent supervisor) runs inside both namespaces.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from frostpoint.fabric.network import FabricNetwork
from frostpoint.fabric.pool import DiskPool
from frostpoint.fabric.system import is_mountpoint, loop_devices, run, thaw_machine_disks
from frostpoint.protocol import DISK_ROOT, GUEST_ETC, GUEST_LIB, GUEST_LOG

SHUTDOWN_GRACE_S = 10.0  # a guest's processes get this long to exit on SIGTERM at power-off


@dataclass
class DiskSpec:
    name: str
    size_bytes: int
    filesystem: str
    image_path: Path
    encrypted: bool = False
    key: bytes | None = field(default=None, repr=False)  # its data key, to attach it

    @property
    def mountpoint(self) -> str:
        return f"{DISK_ROOT}/{self.name}"

    @property
    def raw_mountpoint(self) -> str:
        """Where an encrypted disk's filesystem itself is mounted, out of the way; its
        encrypted volume is bind-mounted at the mount point."""
        return f"{DISK_ROOT}/.disks/{self.name}" if self.encrypted else self.mountpoint


@dataclass
class MachineSpec:
    name: str
    slot: int
    disks: list[DiskSpec] = field(default_factory=list)


class Sandbox:
    """Start, stop, exec and delete sandbox machines on this host."""

    def __init__(self, data_dir: Path, pool: DiskPool, network: FabricNetwork) -> None:
        self.data_dir = data_dir
        self.pool = pool
        self.network = network
        self.ns_dir = data_dir / "run" / "mntns"

    # -- paths ---------------------------------------------------------------
    def guest_dir(self, machine: str) -> Path:
        return self.data_dir / "machines" / machine

    def guest_path(self, machine: str, guest_path: str) -> Path:
        """Where a guest path under /etc/frostpoint, /var/lib/.., /var/log/.. lives."""
        for prefix, sub in ((GUEST_ETC, "etc"), (GUEST_LIB, "lib"), (GUEST_LOG, "log")):
            if guest_path == prefix or guest_path.startswith(prefix + "/"):
                return self.guest_dir(machine) / sub / guest_path[len(prefix):].lstrip("/")
        raise ValueError(f"{guest_path} is not a shared guest path")

    def mntns_file(self, machine: str) -> Path:
        return self.ns_dir / machine

    # -- lifecycle -----------------------------------------------------------
    def create_disks(self, spec: MachineSpec) -> None:
        for disk in spec.disks:
            disk.image_path.parent.mkdir(parents=True, exist_ok=True)
            with open(disk.image_path, "wb") as f:
                f.truncate(disk.size_bytes)
            if disk.filesystem == "xfs":
                run(["mkfs.xfs", "-q", str(disk.image_path)])
            else:
                encrypt = ["-O", "encrypt"] if disk.encrypted else []
                run(["mkfs.ext4", "-q", "-F", *encrypt, "-L", disk.name,
                     str(disk.image_path)])
        for sub in ("etc", "lib", "log"):
            (self.guest_dir(spec.name) / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.guest_dir(spec.name) / "etc", 0o700)

    def is_running(self, machine: str) -> bool:
        return bool(self.network.pids_in(self.network.machine_ns(machine)))

    def start(self, spec: MachineSpec) -> None:
        self.network.attach_machine(spec.name, spec.slot)
        self._make_mount_ns(spec)
        self.start_init(spec.name)

    def set_agent_installed(self, machine: str, version: str | None) -> None:
        """Record the agent release on the machine (None: an image without the agent)."""
        marker = self.guest_dir(machine) / "etc" / "agent.installed"
        if version:
            marker.write_text(f"frostpoint-agent {version}\n")
        else:
            marker.unlink(missing_ok=True)

    def prepare(self) -> None:
        # A mount namespace is kept alive by bind-mounting it onto a file, which needs
        # a mount with private propagation under it.
        self.ns_dir.mkdir(parents=True, exist_ok=True)
        if not is_mountpoint(self.ns_dir):
            run(["mount", "--bind", str(self.ns_dir), str(self.ns_dir)])
        run(["mount", "--make-private", str(self.ns_dir)])

    def _make_mount_ns(self, spec: MachineSpec) -> None:
        self.prepare()
        nsfile = self.mntns_file(spec.name)
        if nsfile.exists() and is_mountpoint(nsfile):
            return
        nsfile.touch()
        for d in (GUEST_ETC, GUEST_LIB, GUEST_LOG):
            Path(d).mkdir(parents=True, exist_ok=True)  # empty mount points on the host
        run(["unshare", f"--mount={nsfile}", "--propagation", "private", "true"])
        script = [f"mount -t tmpfs -o mode=0755 frostpoint-mnt {DISK_ROOT}"]
        for disk in spec.disks:
            loop = self._attach_loop(disk.image_path)
            # nouuid: a restored copy of an XFS disk shares its UUID with the original.
            opts = "-o nouuid " if disk.filesystem == "xfs" else ""
            script += [f"mkdir -p {disk.mountpoint} {disk.raw_mountpoint}",
                       f"mount {opts}{loop} {disk.raw_mountpoint}"]
        g = self.guest_dir(spec.name)
        for sub, target in (("etc", GUEST_ETC), ("lib", GUEST_LIB), ("log", GUEST_LOG)):
            (g / sub).mkdir(parents=True, exist_ok=True)
            script.append(f"mount --bind {g / sub} {target}")
        enter = ["nsenter", f"--mount={nsfile}", "--"]
        run(enter + ["sh", "-ec", "; ".join(script)])
        for disk in spec.disks:
            if disk.encrypted:  # the key goes in on stdin, never on a command line
                if disk.key is None:
                    raise ValueError(f"disk {disk.name} is encrypted: its key is needed")
                volume = run(enter + [sys.executable, "-m", "frostpoint.fabric.fscrypt",
                                      "unlock", disk.raw_mountpoint],
                             input=disk.key.hex().encode()).stdout.decode().strip()
                run(enter + ["mount", "--bind", volume, disk.mountpoint])

    @staticmethod
    def _attach_loop(image: Path) -> str:
        existing = run(["losetup", "-j", str(image)], check=False).stdout.decode().strip()
        if existing:
            return existing.split(":", 1)[0]
        return run(["losetup", "--find", "--show", str(image)]).stdout.decode().strip()

    def start_init(self, machine: str) -> None:
        log = open(self.guest_dir(machine) / "log" / "init.log", "ab")
        cmd = self.enter_cmd(machine) + [sys.executable, "-m", "frostpoint.agent.init"]
        subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                         start_new_session=True, close_fds=True)
        log.close()

    def enter_cmd(self, machine: str) -> list[str]:
        ns = self.network.machine_ns(machine)
        return ["nsenter", f"--net=/run/netns/{ns}", f"--mount={self.mntns_file(machine)}",
                "--"]

    def exec(self, machine: str, argv: list[str], timeout: float = 300,
             input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self.enter_cmd(machine) + argv, capture_output=True,
                              timeout=timeout, input=input)

    def start_process(self, machine: str, argv: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.enter_cmd(machine) + argv, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self, spec: MachineSpec, release_network: bool = False) -> None:
        """Power off: every process in the machine ends, disks are unmounted."""
        ns = self.network.machine_ns(spec.name)
        nsfile = self.mntns_file(spec.name)
        mounted = nsfile.exists() and is_mountpoint(nsfile)
        if mounted:
            thaw_machine_disks(nsfile)
        for sig, wait in ((signal.SIGTERM, SHUTDOWN_GRACE_S), (signal.SIGKILL, 3.0)):
            pids = self.network.pids_in(ns)
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while pids and time.monotonic() < deadline:
                time.sleep(0.05)
                pids = self.network.pids_in(ns)
            if not pids:
                break
        if mounted:
            mounts = " ".join(m for d in spec.disks
                              for m in dict.fromkeys((d.mountpoint, d.raw_mountpoint)))
            run(["nsenter", f"--mount={nsfile}", "--", "sh", "-c",
                 f"for m in {mounts}; do umount $m; done; true"], check=False)
            run(["umount", str(nsfile)], check=False)
        nsfile.unlink(missing_ok=True)
        for disk in spec.disks:
            self.detach_loops(disk.image_path)
        if release_network:
            self.network.detach_machine(spec.name)

    @staticmethod
    def detach_loops(image: Path) -> None:
        """Detach every loop device backed by image, also when the file was deleted."""
        for device, backing in loop_devices():
            if backing == str(image):
                run(["losetup", "-d", device], check=False)

    def delete(self, spec: MachineSpec) -> None:
        self.stop(spec, release_network=True)
        for disk in spec.disks:
            disk.image_path.unlink(missing_ok=True)
        run(["rm", "-rf", str(self.guest_dir(spec.name)),
             str(self.pool.root / "disks" / spec.name)], check=False)
