"""Sandbox machines: a guest that sees only itself (docs/machines.md).

A machine has its own network, mount, PID, UTS and IPC namespaces. Its root is the
guest image (fabric/image.py) mounted read-only, with writable layers of its own for
/etc, /var and /root (overlayfs, upper dirs in DATA/machines/NAME/layer), tmpfs /tmp,
/run and a minimal /dev; pivot_root drops the host's tree from its mount namespace.
Its disks are raw images in the disk pool, attached as loop devices and mounted at
/mnt/NAME (nodev, nosuid). The guest's /etc/frostpoint, /var/lib/frostpoint-agent and
/var/log/frostpoint are bind mounts of DATA/machines/NAME/{etc,lib,log}, which the host
only touches through fabric/guestfs.py. Everything that enters a machine goes through
fabric/guestns.py, which restricts the process as the guest is before it executes
anything there. A guest has no CAP_SYS_ADMIN: its FIFREEZE and FITHAW are done by the
machine's freeze broker (fabric/freezebroker.py), on its own disks only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from frostpoint.errors.catalog import FrostpointError
from frostpoint.fabric import fscrypt, guestfs
from frostpoint.fabric.brokers import FreezeBrokers
from frostpoint.fabric.clone import Stages
from frostpoint.fabric.dhcp import DhcpServer
from frostpoint.fabric.hostthaw import thaw_disks_from_host
from frostpoint.fabric.image import ensure_image
from frostpoint.fabric.network import FabricNetwork, instance_id
from frostpoint.fabric.platform import (
    DiskSpec,
    ExecResult,
    GuestBackend,
    MachineSpec,
    Snapshot,
    SnapshotFolders,
)
from frostpoint.fabric.pool import DiskPool, make_disk_image, reflink
from frostpoint.fabric.system import (
    bind_in_netns,
    guest_helper,
    is_mountpoint,
    loop_devices,
    run,
    thaw_machine_disks,
)
from frostpoint.protocol import DISK_ROOT, GUEST_ETC, GUEST_LIB, GUEST_LOG

SHUTDOWN_GRACE_S = 10.0  # a guest's processes get this long to exit on SIGTERM at power-off
# Writable layers over the read-only image (overlayfs, upper dir per machine).
LAYERS = ("etc", "var", "root")
# The bind-mount targets in those layers: a guest may have left a symlink there.
BIND_TARGETS = {"etc": GUEST_ETC, "lib": GUEST_LIB, "log": GUEST_LOG}
# A guest's filesystem mounted on the host (file restores): nothing of it counts there.
GUEST_MOUNT_OPTIONS = "nodev,nosuid,noexec"
GUEST_INIT = ["python3", "-m", "frostpoint.agent.init"]  # the agent supervisor
DEV_NODES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
             ("urandom", 1, 9), ("tty", 5, 0))


class Sandbox(SnapshotFolders):
    """Start, stop, exec and delete sandbox machines on this host: the real
    MachinePlatform (fabric/platform.py)."""

    def __init__(self, data_dir: Path, pool: DiskPool, network: FabricNetwork) -> None:
        self.data_dir = data_dir
        self.pool = pool
        self.network = network
        self.ns_dir = data_dir / "run" / "mntns"
        self.roots_dir = data_dir / "run" / "roots"  # mount points of machines' roots
        self.init_dir = data_dir / "run" / "init"  # host pid of each machine's PID 1
        self.brokers = FreezeBrokers(data_dir / "run" / "broker")
        self.stages = Stages()  # clones staged before a freeze (fabric/clone.py)

    # -- paths ---------------------------------------------------------------
    def guest_dir(self, machine: str) -> Path:
        return self.data_dir / "machines" / machine

    def guest_path(self, machine: str, guest_path: str) -> Path:
        """Where a guest path under /etc/frostpoint, /var/lib/.., /var/log/.. lives: to
        name it; read or write it only through fabric.guestfs (the guest plants links)."""
        for prefix, sub in ((GUEST_ETC, "etc"), (GUEST_LIB, "lib"), (GUEST_LOG, "log")):
            if guest_path == prefix or guest_path.startswith(prefix + "/"):
                return self.guest_dir(machine) / sub / guest_path[len(prefix):].lstrip("/")
        raise ValueError(f"{guest_path} is not a shared guest path")

    def mntns_file(self, machine: str) -> Path:
        return self.ns_dir / machine

    def layer_dir(self, machine: str) -> Path:
        return self.guest_dir(machine) / "layer"

    def init_pid(self, machine: str) -> int | None:
        try:
            return int((self.init_dir / machine).read_text())
        except (FileNotFoundError, ValueError):
            return None

    # -- lifecycle -----------------------------------------------------------
    def create_disks(self, spec: MachineSpec) -> None:
        for disk in spec.disks:
            make_disk_image(disk)
        for sub in ("etc", "lib", "log"):
            (self.guest_dir(spec.name) / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.guest_dir(spec.name) / "etc", 0o700)
        for layer in LAYERS:
            for sub in ("upper", "work"):
                (self.layer_dir(spec.name) / layer / sub).mkdir(parents=True, exist_ok=True)

    def is_running(self, machine: str) -> bool:
        return bool(self.network.pids_in(self.network.machine_ns(machine)))

    def start(self, spec: MachineSpec) -> None:
        self.network.attach_machine(spec.name, spec.slot)
        self._make_mount_ns(spec)
        self.brokers.start(spec.name, self.pool.root / "disks" / spec.name)
        self.start_init(spec.name)

    def install_agent(self, machine: str, version: str | None) -> None:
        """Record the agent release on the machine (None: an image without the agent)."""
        etc = self.guest_dir(machine)
        if version:
            guestfs.write_text(etc, "etc/agent.installed", f"frostpoint-agent {version}\n")
        else:
            guestfs.unlink(etc, "etc/agent.installed")

    def prepare(self) -> None:
        # A mount namespace is kept alive by bind-mounting it onto a file, which needs
        # a mount with private propagation under it.
        self.ns_dir.mkdir(parents=True, exist_ok=True)
        if not is_mountpoint(self.ns_dir):
            run(["mount", "--bind", str(self.ns_dir), str(self.ns_dir)])
        run(["mount", "--make-private", str(self.ns_dir)])

    def _clear_bind_targets(self, machine: str) -> None:
        """The bind mounts' targets are in the guest's writable layers: whatever the
        guest left there that is not a real folder (a symlink to a host path, a file,
        an overlay whiteout) is removed, so the image's folder shows and the mount
        lands in the machine. The machine is stopped: nothing races this."""
        layer = self.layer_dir(machine)
        for target in BIND_TARGETS.values():
            top, *rest = target.strip("/").split("/")
            path = layer / top / "upper"
            for part in rest:
                path = path / part
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    break
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(path)
                    break

    def _make_mount_ns(self, spec: MachineSpec) -> None:
        self.prepare()
        nsfile = self.mntns_file(spec.name)
        if nsfile.exists() and is_mountpoint(nsfile):
            return
        image = ensure_image()
        root = self.roots_dir / spec.name
        root.mkdir(parents=True, exist_ok=True)
        self._clear_bind_targets(spec.name)
        nsfile.touch()
        run(["unshare", f"--mount={nsfile}", "--propagation", "private", "true"])
        r, layer = str(root), self.layer_dir(spec.name)
        # Built with the host's tools while the namespace still has the host's tree;
        # pivot_root below then makes it the machine's whole world.
        script = [f"mount --bind {image} {r}",
                  f"mount -o remount,bind,ro,nosuid,nodev {r}"]
        for name in LAYERS:
            (layer / name / "upper").mkdir(parents=True, exist_ok=True)
            (layer / name / "work").mkdir(parents=True, exist_ok=True)
            script.append(f"mount -t overlay -o lowerdir={image}/{name},upperdir="
                          f"{layer}/{name}/upper,workdir={layer}/{name}/work,nosuid,nodev"
                          f" frostpoint-{name} {r}/{name}")
        script += [f"mount -t tmpfs -o mode=1777,size=256m,nosuid,nodev frostpoint-tmp {r}/tmp",
                   f"mount -t tmpfs -o mode=0755,size=64m,nosuid,nodev frostpoint-run {r}/run",
                   f"mount -t tmpfs -o mode=0755,size=1m,nosuid,noexec frostpoint-dev {r}/dev"]
        script += [f"mknod -m 666 {r}/dev/{n} c {major} {minor}" for n, major, minor in DEV_NODES]
        script += [f"mkdir {r}/dev/pts {r}/dev/shm",
                   f"mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,nosuid,noexec "
                   f"frostpoint-pts {r}/dev/pts",
                   f"ln -s pts/ptmx {r}/dev/ptmx",
                   f"mount -t tmpfs -o mode=1777,size=64m,nosuid,nodev frostpoint-shm "
                   f"{r}/dev/shm",
                   f"ln -s /proc/self/fd {r}/dev/fd", f"ln -s /proc/self/fd/0 {r}/dev/stdin",
                   f"ln -s /proc/self/fd/1 {r}/dev/stdout",
                   f"ln -s /proc/self/fd/2 {r}/dev/stderr",
                   f"mount -t tmpfs -o mode=0755,nosuid,nodev frostpoint-mnt {r}{DISK_ROOT}"]
        for disk in spec.disks:
            loop = self._attach_loop(disk.image_path)
            # nouuid: a restored copy of an XFS disk shares its UUID with the original.
            opts = "nodev,nosuid" + (",nouuid" if disk.filesystem == "xfs" else "")
            script += [f"mkdir -p {r}{disk.mountpoint} {r}{disk.raw_mountpoint}",
                       f"mount -o {opts} {loop} {r}{disk.raw_mountpoint}"]
        g = self.guest_dir(spec.name)
        for sub, target in BIND_TARGETS.items():
            (g / sub).mkdir(parents=True, exist_ok=True)
            # No symlink is left on the way (_clear_bind_targets); an opaque folder the
            # guest made may hide the image's one.
            script += [f"mkdir -p {r}{target}", f"mount --bind {g / sub} {r}{target}",
                       f"mount -o remount,bind,nosuid,nodev {r}{target}"]
        enter = ["nsenter", f"--mount={nsfile}", "--"]
        run(enter + ["sh", "-ec", "; ".join(script)])
        for disk in spec.disks:
            if disk.encrypted:  # the key goes in on stdin, never on a command line
                if disk.key is None:
                    raise ValueError(f"disk {disk.name} is encrypted: its key is needed")
                volume = run(enter + [sys.executable, "-m", "frostpoint.fabric.fscrypt",
                                      "unlock", r + disk.raw_mountpoint],
                             input=disk.key.hex().encode()).stdout.decode().strip()
                run(enter + ["mount", "--bind", volume, r + disk.mountpoint])
        run(guest_helper("pivot", "--mntns", str(nsfile), r))

    @staticmethod
    def _attach_loop(image: Path) -> str:
        existing = run(["losetup", "-j", str(image)], check=False).stdout.decode().strip()
        if existing:
            return existing.split(":", 1)[0]
        return run(["losetup", "--find", "--show", str(image)]).stdout.decode().strip()

    def start_init(self, machine: str) -> None:
        """The machine's PID 1 (fabric/guestns.py), which starts the agent supervisor;
        their output goes to the guest's /var/log/frostpoint/init.log."""
        log = guestfs.open_append(self.guest_dir(machine), "log/init.log")
        try:
            out = run(guest_helper("init", "--netns", self._netns_path(machine),
                                   "--mntns", str(self.mntns_file(machine)),
                                   "--hostname", machine, "--log-fd", str(log),
                                   "--broker", str(self.brokers.socket(machine))),
                      pass_fds=(log,), env={"FROSTPOINT_GUEST_INIT": json.dumps(GUEST_INIT)})
        finally:
            os.close(log)
        self.init_dir.mkdir(parents=True, exist_ok=True)
        (self.init_dir / machine).write_text(out.stdout.decode().strip())

    def _netns_path(self, machine: str) -> str:
        return f"/run/netns/{self.network.machine_ns(machine)}"

    def enter_cmd(self, machine: str) -> list[str]:
        """A command line prefix that runs a program inside the machine: in all its
        namespaces, as restricted as the guest."""
        return guest_helper("exec", "--netns", self._netns_path(machine),
                            "--mntns", str(self.mntns_file(machine)),
                            "--broker", str(self.brokers.socket(machine)),
                            "--pid", str(self.init_pid(machine) or 0), "--")

    def exec(self, machine: str, argv: list[str], timeout: float = 300,
             input: bytes | None = None) -> ExecResult:
        try:
            p = subprocess.run(self.enter_cmd(machine) + argv, capture_output=True,
                               timeout=timeout, input=input)
        except subprocess.TimeoutExpired as e:  # it is killed with its host-side parent
            raise FrostpointError("VmExecTimedOut", f"the command in {machine} did not "
                                  f"finish within {timeout:g} s",
                                  {"machine": machine, "timeout_s": timeout}) from e
        return ExecResult(p.returncode, p.stdout, p.stderr)

    def start_process(self, machine: str, argv: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.enter_cmd(machine) + argv, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def unmount_disk(self, machine: str, disk: DiskSpec) -> None:
        """Thaw and unmount one disk of a running machine, from the host side (the
        guest itself cannot unmount)."""
        paths = list(dict.fromkeys((disk.mountpoint, disk.raw_mountpoint)))
        run(guest_helper("umount", "--mntns", str(self.mntns_file(machine)), "--rmdir",
                         *paths), check=False)

    def remount(self, machine: str, path: str, option: str) -> None:
        """Make a mount in the machine exec or noexec (the doctor's remedy)."""
        run(guest_helper("remount", "--mntns", str(self.mntns_file(machine)), path, option))

    def host_pid(self, machine: str, guest_pid: int) -> int | None:
        """The host's pid of the process the machine knows as guest_pid."""
        init = self.init_pid(machine)
        if init is None:
            return None
        try:
            ns = os.readlink(f"/proc/{init}/ns/pid")
        except OSError:
            return None
        for pid in self.network.pids_in(self.network.machine_ns(machine)):
            try:
                if os.readlink(f"/proc/{pid}/ns/pid") != ns:
                    continue
                for line in open(f"/proc/{pid}/status"):
                    if line.startswith("NSpid:") and int(line.split()[-1]) == guest_pid:
                        return pid
            except (OSError, ValueError):
                continue
        return None

    def stop(self, spec: MachineSpec, deallocate: bool = False) -> None:
        """Power off: every process in the machine ends, disks are unmounted;
        deallocate: its network port is released too."""
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
            mounts = [m for d in spec.disks
                      for m in dict.fromkeys((d.raw_mountpoint, d.mountpoint))][::-1]
            if mounts:
                run(guest_helper("umount", "--mntns", str(nsfile), *mounts), check=False)
            run(["umount", str(nsfile)], check=False)
        nsfile.unlink(missing_ok=True)
        (self.init_dir / spec.name).unlink(missing_ok=True)
        self.brokers.stop(spec.name)
        for disk in spec.disks:
            self.detach_loops(disk.image_path)
        if deallocate:
            self.network.detach_machine(spec.name)

    @staticmethod
    def detach_loops(image: Path) -> None:
        """Detach every loop device backed by image, also when the file was deleted."""
        for device, backing in loop_devices():
            if backing == str(image):
                run(["losetup", "-d", device], check=False)

    def delete(self, spec: MachineSpec) -> None:
        self.stop(spec, deallocate=True)
        for disk in spec.disks:
            disk.image_path.unlink(missing_ok=True)
        run(["rm", "-rf", str(self.guest_dir(spec.name)),
             str(self.pool.root / "disks" / spec.name)], check=False)
        with contextlib.suppress(OSError):
            (self.roots_dir / spec.name).rmdir()

    # -- the rest of MachinePlatform (fabric/platform.py) ------------------------------
    def ensure(self) -> None:
        # What exists already (a restart after a crash keeps machines running on it) is
        # never released by release(); only what this start made.
        self._made = {"pool_image": not self.pool.image.exists(),
                      "pool_mount": not is_mountpoint(self.pool.root),
                      "fabric_ns": not self.network.ns_exists(self.network.fabric_ns),
                      "mntns_mount": not is_mountpoint(self.ns_dir)}
        self.pool.ensure()
        self.network.ensure_fabric()
        DhcpServer(self.data_dir, self.network).ensure()  # for VMs' guests
        self.prepare()

    def release(self) -> None:
        """Undo what ensure made, after a start that failed: no loop device, pool
        mount, 64 GiB pool file, fabric namespace or mount is left behind."""
        made = getattr(self, "_made", {})
        if made.get("mntns_mount"):
            while is_mountpoint(self.ns_dir):
                if run(["umount", str(self.ns_dir)], check=False).returncode:
                    break
        if made.get("fabric_ns") and self.network.ns_exists(self.network.fabric_ns):
            DhcpServer(self.data_dir, self.network).stop()
            run(["ip", "netns", "del", self.network.fabric_ns], check=False)
        if made.get("pool_mount") and is_mountpoint(self.pool.root):
            run(["umount", str(self.pool.root)], check=False)  # frees its loop device
        if made.get("pool_image") and not is_mountpoint(self.pool.root):
            self.pool.image.unlink(missing_ok=True)

    def endpoint_sockets(self, address: str, ports: tuple[int, ...]) -> list[socket.socket]:
        return [bind_in_netns(self.network.fabric_ns, address, port) for port in ports]

    def attach_backend(self, backend: GuestBackend) -> None:
        """The sandbox's agents reach the service over HTTP (endpoint_sockets)."""

    def machine_address(self, slot: int) -> str:
        return self.network.machine_address(slot)

    def disk_location(self, machine: str, disk: str) -> str:
        return str(self.pool.disk_path(machine, disk))

    def scratch_dir(self) -> Path:
        return self.pool.root  # where copies of disks reflink

    def create(self, spec: MachineSpec, guest_files: dict[str, tuple[str, int]]) -> None:
        self.create_disks(spec)
        for path, (text, mode) in guest_files.items():
            self.write_guest_file(spec.name, path, text.encode(), mode)

    def detach_disk(self, spec: MachineSpec, disk: DiskSpec) -> None:
        if self.mntns_file(spec.name).exists():
            self.unmount_disk(spec.name, disk)
        self.detach_loops(disk.image_path)
        disk.image_path.unlink(missing_ok=True)

    def disk_exists(self, disk: DiskSpec) -> bool:
        return disk.image_path.exists()

    def _guest_rel(self, machine: str, path: str) -> str:
        where = self.guest_path(machine, path)
        return str(where.relative_to(self.guest_dir(machine)))

    def read_guest_file(self, machine: str, path: str) -> bytes | None:
        try:
            return guestfs.read_bytes(self.guest_dir(machine), self._guest_rel(machine, path))
        except FileNotFoundError:
            return None

    def write_guest_file(self, machine: str, path: str, data: bytes, mode: int = 0o644) -> None:
        guestfs.write_bytes(self.guest_dir(machine), self._guest_rel(machine, path), data,
                            mode=mode)

    def prepare_snapshot(self, machine: str, snapshot_id: str,
                         disks: list[DiskSpec]) -> None:
        self.stages.stage(machine, self.pool.snapshot_dir(machine, snapshot_id),
                          [(d.name, d.image_path) for d in disks])

    def snapshot_disks(self, machine: str, snapshot_id: str,
                       disks: list[DiskSpec]) -> Snapshot:
        target = self.pool.snapshot_dir(machine, snapshot_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Cloned under a temporary name and renamed into place: a snapshot folder, once
        # there, is complete, and a rename never replaces a folder with files in it.
        # A folder staged before the freeze only catches up on what changed since.
        tmp = self.stages.catch_up(machine, target, [(d.name, d.image_path) for d in disks])
        try:
            if tmp is None:
                tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
                for disk in disks:
                    reflink(disk.image_path, tmp / f"{disk.name}.img")
            os.rename(tmp, target)
        except OSError as e:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            if target.exists():
                raise FileExistsError(f"snapshot {snapshot_id} exists already") from e
            raise
        return Snapshot(str(target), [d.name for d in disks])

    def copy_disk(self, src: Path, dst: Path) -> None:
        try:
            reflink(src, dst)  # instant when both are in the pool
        except OSError:
            subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)

    def replace_disk(self, disk: DiskSpec, image: Path) -> None:
        os.replace(image, disk.image_path)  # scratch_dir is in the pool: one filesystem

    def thaw(self, machine: str, disks: list[DiskSpec]) -> list[str]:
        return thaw_disks_from_host(self.data_dir / "run" / "thaw" / machine,
                                    [(d.name, d.filesystem, d.image_path) for d in disks])

    @contextlib.contextmanager
    def image_files(self, image: Path, filesystem: str,
                    key: bytes | None) -> Iterator[Path]:
        # Beside the disks, not beside the image: that may be a read-only file system.
        mnt = Path(tempfile.mkdtemp(prefix=".mnt-", dir=self.scratch_dir()))
        try:
            self.mount_image(image, filesystem, mnt)
            try:
                yield fscrypt.unlock(mnt, key) if key else mnt
            finally:
                run(["umount", str(mnt)], check=False)
        finally:
            with contextlib.suppress(OSError):
                mnt.rmdir()


    def mount_image(self, image: Path, filesystem: str, at: Path) -> None:
        # The guest's filesystem: nothing of it counts on the host, and no journal is
        # replayed (noload, norecovery), so the copy is never written.
        opts = "ro,noload" if filesystem == "ext4" else "ro,norecovery,nouuid"
        run(["mount", "-o", f"loop,{opts},{GUEST_MOUNT_OPTIONS}", str(image), str(at)])

    def unmount_image(self, at: Path) -> None:
        if is_mountpoint(at):
            run(["umount", str(at)])


def host_pid(data_dir: Path, machine: str, guest_pid: int) -> int | None:
    """The host's pid of a machine's process, given its pid inside the machine."""
    net = FabricNetwork(instance_id(data_dir))
    return Sandbox(data_dir, DiskPool(data_dir), net).host_pid(machine, guest_pid)
