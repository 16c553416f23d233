"""QEMU guests: real virtual machines with their own kernel (docs/machines.md).

A VM is a QEMU process (started in the fabric's network namespace, so it can open its
tap there; QEMU's seccomp sandbox on) with:
- its root disk, a reflink of the VM image's raw ext4 (fabric/vmdisk.py), on NVMe
  (built into the guest kernel: it boots without an initrd, which halves a TCG boot);
- its data disks, raw images in the pool, on virtio-blk with serial=NAME (the guest
  mounts each at /mnt/NAME); cache=writeback: QEMU writes through the host page cache
  and passes the guest's flushes on as fdatasync, so when a guest FIFREEZE returns
  every write it flushed is in the image file, and the host's FICLONE (which writes
  back the file's dirty pages first) clones exactly that;
- a tap on the fabric bridge (fabric/network.py attach_tap) with the slot's MAC; the
  guest gets its address and the fabric's (option 245) by DHCP (fabric/dhcp.py);
- the host channel, a virtio-serial port served by the guest (fabric/channel.py):
  exec, the guest's frostpoint files, thaw; never ssh;
- QMP on a unix socket (fabric/qmp.py) for power; the serial console to a log file.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from frostpoint.errors.catalog import FrostpointError
from frostpoint.fabric import accel, channel, qmp, vmdisk, vmimport
from frostpoint.fabric.network import FabricNetwork
from frostpoint.fabric.platform import DiskSpec, ExecResult, MachineSpec, SnapshotFolders
from frostpoint.fabric.pool import DiskPool, make_disk_image, reflink
from frostpoint.fabric.system import run
from frostpoint.protocol import AGENT_INSTALLED

QEMU = accel.QEMU
BOOT_S = float(os.environ.get("FROSTPOINT_VM_BOOT_S", 240))  # TCG on a busy host is slow
# ACPI power-off grace: systemd shuts down in seconds; the test init ignores the button.
SHUTDOWN_GRACE_S = 60.0
CONSOLE_TAIL = 64 << 10
OS_DISK = "_os"  # the root disk's file name in the pool (no machine disk name has a _)


def _small_init() -> bool:
    """FROSTPOINT_VM_INIT=small: tests boot the small init, not systemd (50 s under TCG
    here); the product boots systemd."""
    return os.environ.get("FROSTPOINT_VM_INIT", "systemd") == "small"


class QemuPlatform(SnapshotFolders):
    """Start, stop, exec and delete QEMU guests (the kind "qemu"; fabric/kinds.py)."""

    def __init__(self, data_dir: Path, pool: DiskPool, network: FabricNetwork) -> None:
        self.data_dir = data_dir
        self.pool = pool
        self.network = network

    # -- paths -----------------------------------------------------------------------
    def vm_dir(self, machine: str) -> Path:
        return self.data_dir / "vms" / machine

    def run_dir(self, machine: str) -> Path:
        """Sockets and the pid file: short paths (a unix socket's is at most 107)."""
        return Path("/run/frostpoint") / self.network.instance / machine

    def os_disk(self, machine: str) -> Path:
        return self.pool.disk_path(machine, OS_DISK)

    def has(self, machine: str) -> bool:
        return (self.vm_dir(machine) / "vm.json").exists()

    def config(self, machine: str) -> dict[str, Any]:
        try:
            return dict(json.loads((self.vm_dir(machine) / "vm.json").read_text()))
        except (OSError, ValueError):
            return {}

    def _save(self, machine: str, **changes: Any) -> None:
        path = self.vm_dir(machine) / "vm.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**self.config(machine), **changes}))
        os.replace(tmp, path)

    # -- lifecycle -------------------------------------------------------------------
    def create(self, spec: MachineSpec, guest_files: dict[str, tuple[str, int]]) -> None:
        if any(d.encrypted for d in spec.disks):
            raise FrostpointError("InvalidInput", "encrypted disks are for sandbox machines "
                                  "only: a QEMU guest would need the data key inside it")
        self.vm_dir(spec.name).mkdir(parents=True, exist_ok=True)
        self._save(spec.name, slot=spec.slot, memory_bytes=spec.memory_bytes, cpus=spec.cpus)
        for disk in spec.disks:
            if disk.source is not None:  # the user's own (vm import)
                vmimport.convert(disk.source, disk.image_path)
            else:
                make_disk_image(disk)
        os_disk = self.os_disk(spec.name)
        os_disk.parent.mkdir(parents=True, exist_ok=True)
        reflink(vmdisk.root_image(self.pool.root / "images"), os_disk)
        vmdisk.write_files(os_disk, {p: (t.encode(), m) for p, (t, m) in guest_files.items()})

    def pid(self, machine: str) -> int | None:
        """The VM's QEMU, if it runs (checked against its command line: pids recycle)."""
        try:
            pid = int((self.run_dir(machine) / "qemu.pid").read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if str(self.run_dir(machine) / "qmp.sock").encode() in cmdline else None

    def is_running(self, machine: str) -> bool:
        return self.pid(machine) is not None

    def _cmdline(self, spec: MachineSpec, acc: accel.Accel, boot: vmdisk.BootFiles) -> list[str]:
        rd, name = self.run_dir(spec.name), spec.name
        mac = self.network.machine_mac(spec.slot)
        # No address here: the guest's own config gets it by DHCP from the fabric (its
        # slot's MAC has a static entry there: fabric/dhcp.py, fabric/guestnet.py).
        append = ["root=/dev/nvme0n1", "rw", "console=ttyS0", "quiet", "net.ifnames=0",
                  "panic=-1", f"frostpoint.hostname={name}"]
        if _small_init():
            append.append("init=/usr/lib/frostpoint-agent/frostpoint-vm-init")
        cmd = [QEMU, "-name", name, "-nodefaults", "-no-user-config", "-display", "none",
               "-no-reboot", *acc.qemu_args(), "-m", f"{spec.memory_bytes >> 20}M",
               "-smp", str(spec.cpus),
               "-sandbox", "on,obsolete=deny,resourcecontrol=deny",
               "-kernel", str(boot.kernel), "-append", " ".join(append),
               "-drive", f"file={self.os_disk(name)},if=none,id=os,format=raw,cache=writeback",
               "-device", "nvme,drive=os,serial=frostpoint-os"]
        for d in spec.disks:
            cmd += ["-drive", f"file={d.image_path},if=none,id=d-{d.name},format=raw,"
                    "cache=writeback,discard=unmap",
                    "-device", f"virtio-blk-pci,drive=d-{d.name},serial={d.name}"]
        cmd += ["-netdev", f"tap,id=net0,ifname={self.network.tap_name(spec.slot)},"
                "script=no,downscript=no",
                "-device", f"virtio-net-pci,netdev=net0,mac={mac}",
                "-device", "virtio-serial-pci",
                "-chardev", f"socket,id=ch0,path={rd / 'channel.sock'},server=on,wait=off",
                "-device", "virtserialport,chardev=ch0,name=org.frostpoint.channel.0",
                "-chardev", f"file,id=con0,path={self.vm_dir(name) / 'console.log'}",
                "-serial", "chardev:con0",
                "-qmp", f"unix:{rd / 'qmp.sock'},server=on,wait=off",
                "-daemonize", "-pidfile", str(rd / "qemu.pid")]
        return cmd

    def start(self, spec: MachineSpec) -> None:
        if self.is_running(spec.name):
            return
        boot = vmdisk.boot_files()
        acc = accel.choose(boot.kernel)
        self.network.attach_tap(spec.slot)
        rd = self.run_dir(spec.name)
        shutil.rmtree(rd, ignore_errors=True)
        rd.mkdir(parents=True, mode=0o700)
        (self.vm_dir(spec.name) / "console.log").write_bytes(b"")  # one boot's console
        self._save(spec.name, accel=acc.name, accel_reason=acc.reason, small_init=_small_init())
        # -daemonize: QEMU returns once it runs (or with its error), its parent init.
        p = subprocess.run(["ip", "netns", "exec", self.network.fabric_ns,
                            *self._cmdline(spec, acc, boot)], capture_output=True, timeout=120,
                           stdin=subprocess.DEVNULL)
        if p.returncode:
            raise FrostpointError("UserErrorCrpReportedUserError", f"QEMU did not start VM "
                                  f"{spec.name}: {p.stderr.decode(errors='replace')[-800:]}")
        self.wait_booted(spec.name)

    def wait_booted(self, machine: str, timeout: float = BOOT_S) -> None:
        """Until the guest's channel answers (its boot setup has run by then)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._request(machine, "ping", timeout=min(5.0, timeout))
                return
            except channel.ChannelError:
                if not self.is_running(machine):
                    raise FrostpointError("UserErrorCrpReportedUserError", f"VM {machine} "
                                          "exited while booting: frostpoint vm console "
                                          f"{machine}") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self, spec: MachineSpec, deallocate: bool = False) -> None:
        """ACPI power-off (the guest shuts down), QMP quit after the grace, SIGKILL if
        QEMU still runs; deallocate: its tap (fabric port) goes too."""
        name, qmp_sock = spec.name, self.run_dir(spec.name) / "qmp.sock"
        pid = self.pid(name)
        if pid is not None:
            grace = 3.0 if self.config(name).get("small_init", _small_init()) else \
                SHUTDOWN_GRACE_S
            with contextlib.suppress(channel.ChannelError):
                self._request(name, "exec", timeout=10, argv=["sync"], timeout_s=5)
            with contextlib.suppress(qmp.QMPUnavailable):
                qmp.command(qmp_sock, "system_powerdown")
            if not self._wait_gone(pid, grace):
                with contextlib.suppress(qmp.QMPUnavailable):
                    qmp.command(qmp_sock, "quit")
                if not self._wait_gone(pid, 10):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    self._wait_gone(pid, 5)
        shutil.rmtree(self.run_dir(name), ignore_errors=True)
        if deallocate:
            self.network.detach_tap(spec.slot)

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not Path(f"/proc/{pid}").exists():
                return True
            time.sleep(0.1)
        return not Path(f"/proc/{pid}").exists()

    def delete(self, spec: MachineSpec) -> None:
        self.stop(spec, deallocate=True)
        for disk in spec.disks:
            disk.image_path.unlink(missing_ok=True)
        self.os_disk(spec.name).unlink(missing_ok=True)
        shutil.rmtree(self.pool.root / "disks" / spec.name, ignore_errors=True)
        shutil.rmtree(self.vm_dir(spec.name), ignore_errors=True)

    def detach_disk(self, spec: MachineSpec, disk: DiskSpec) -> None:
        if self.is_running(spec.name):
            raise FrostpointError("UserErrorVmNotInDesirableState",
                                  f"stop VM {spec.name} first: its disks are detached while "
                                  "it is off", {"machine": spec.name})
        disk.image_path.unlink(missing_ok=True)

    # -- inside the machine: the channel ------------------------------------------------
    def _request(self, machine: str, op: str, timeout: float = 30,
                 **fields: Any) -> dict[str, Any]:
        return channel.request(self.run_dir(machine) / "channel.sock", machine, op,
                               timeout=timeout, **fields)

    def exec(self, machine: str, argv: list[str], timeout: float = 300,
             input: bytes | None = None) -> ExecResult:
        reply = self._request(machine, "exec", timeout=timeout + 10, argv=argv,
                              input=base64.b64encode(input or b"").decode(), timeout_s=timeout)
        rc = reply.get("returncode")
        if not isinstance(rc, int) or isinstance(rc, bool):
            raise channel.ChannelError("GuestChannelUnavailable", f"the host channel of "
                                       f"{machine} sent a returncode that is not a number")
        return ExecResult(rc, channel.b64field(reply, "stdout", machine),
                          channel.b64field(reply, "stderr", machine))

    def read_guest_file(self, machine: str, path: str) -> bytes | None:
        if not self.is_running(machine):
            return vmdisk.read_file(self.os_disk(machine), path)
        reply = self._request(machine, "read", path=path)
        if reply.get("data") is None:
            return None
        return channel.b64field(reply, "data", machine)

    def write_guest_file(self, machine: str, path: str, data: bytes, mode: int = 0o644) -> None:
        if not self.is_running(machine):
            vmdisk.write_files(self.os_disk(machine), {path: (data, mode)})
            return
        self._request(machine, "write", path=path, data=base64.b64encode(data).decode(),
                      mode=mode)

    def install_agent(self, machine: str, version: str | None) -> None:
        """The VM image has the agent package; the marker says it is installed, and the
        agent's unit (or the test init's supervisor) starts it."""
        if version:
            marker = f"frostpoint-agent {version}\n".encode()
            self.write_guest_file(machine, AGENT_INSTALLED, marker)
            if self.is_running(machine):
                self.exec(machine, ["sh", "-c", "[ -d /run/systemd/system ] || exit 0; "
                                    "systemctl start frostpoint-agent"], timeout=60)
        elif self.is_running(machine):
            self.exec(machine, ["sh", "-c", f"rm -f {AGENT_INSTALLED}; [ -d /run/systemd/"
                                "system ] && systemctl stop frostpoint-agent; true"], timeout=60)
        else:
            run(["debugfs", "-w", "-R", f"rm {AGENT_INSTALLED}", str(self.os_disk(machine))],
                check=False)

    def remount(self, machine: str, path: str, option: str) -> None:
        r = self.exec(machine, ["mount", "-o", f"remount,{option}", path], timeout=30)
        if r.returncode:
            raise FrostpointError("UserErrorCrpReportedUserError", f"remount {path} in "
                                  f"{machine}: {r.stderr.decode(errors='replace')[-300:]}")

    def thaw(self, machine: str, disks: list[DiskSpec]) -> list[str]:
        """Thaw the guest's frozen disks through its channel (FITHAW in the guest kernel:
        the host cannot reach a guest's superblock); its error says why it cannot."""
        if not self.is_running(machine):
            return []  # a VM that is off holds no frozen filesystem
        try:
            reply = self._request(machine, "thaw", timeout=15)
        except channel.ChannelError as e:
            raise channel.ChannelError("GuestChannelUnavailable", f"cannot thaw {machine} "
                                       f"from the host: {e.detail}; a reboot of the VM "
                                       "thaws it", e.details) from e
        names = {d.name for d in disks}
        thawed = reply.get("thawed")
        return [str(n) for n in thawed if n in names] if isinstance(thawed, list) else []

    def console(self, machine: str) -> str:
        path = self.vm_dir(machine) / "console.log"
        try:
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - CONSOLE_TAIL))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def machine_facts(self, machine: str) -> dict[str, str]:
        cfg = self.config(machine)
        return {"kind": "qemu", "accel": str(cfg.get("accel", "")),
                "accel_reason": str(cfg.get("accel_reason", ""))}
