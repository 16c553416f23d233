"""An in-memory MachinePlatform: machines without root, for tests of the service's
rules (scheduling, jobs, retention, cleanup, limits) that run in seconds.

It is a faithful fake, not a stub: it keeps state and refuses what the sandbox
refuses. A machine must exist to be started, stopped or deleted, and be Running to
exec in it; a disk is a sparse file under ROOT/disks, and a snapshot is a copy of its
bytes under ROOT/snapshots (taken once, all disks or none: the same id twice is
refused); guest files are held per machine and only under the shared guest folders;
a freeze is bookkept per disk and ended by the guest, by power-off or by thaw().

Playing the guest's side of a backup: a running machine with an agent runs
`InProcessGuest`, a thread that does what the real agent and snapshot extension do
over HTTP, by calling the service's backend (fabric/platform.py GuestBackend, the
same methods the wire and host endpoints call): it heartbeats, reads the goal state,
and for a new sequence of the snapshot extension reports transitioning, asks whether
the task is live, freezes the disks (reports phase freezing), asks the host for the
snapshot (take_snapshot: the service's own claim and the platform's snapshot_disks),
thaws and reports success with the consistency, or the error the service gave. So the
service's snapshot-by-extension path runs unchanged; only the transport differs.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frostpoint.errors.catalog import FrostpointError
from frostpoint.fabric.platform import (
    DiskSpec,
    ExecResult,
    GuestBackend,
    MachineSpec,
    Snapshot,
    SnapshotFolders,
)
from frostpoint.protocol import GUEST_ETC, GUEST_LIB, GUEST_LOG, SNAPSHOT_EXTENSION

SHARED = (GUEST_ETC, GUEST_LIB, GUEST_LOG)


class PlatformRefused(RuntimeError):
    """What the sandbox would fail with: no such machine, not running, ..."""


@dataclass
class MemoryMachine:
    spec: MachineSpec
    power: str = "Stopped"  # Stopped | Running | Deallocated
    files: dict[str, bytes] = field(default_factory=dict)
    agent_version: str | None = None
    frozen: set[str] = field(default_factory=set)  # disk names frozen now
    guest: InProcessGuest | None = None
    die_when_frozen: bool = False  # a test's fault: every guest process dies mid-freeze
    hold_frozen_s: float = 0.0  # as vmbackup.json holdFrozenSeconds: a long freeze


class MemoryPlatform(SnapshotFolders):
    """MachinePlatform in memory (disks and snapshots in files under root)."""

    def __init__(self, root: Path, heartbeat_s: float = 0.1) -> None:
        self.root = root
        self.heartbeat_s = heartbeat_s
        self.machines: dict[str, MemoryMachine] = {}
        self.backend: GuestBackend | None = None
        self.lock = threading.RLock()

    # -- the platform itself ----------------------------------------------------------
    def ensure(self) -> None:
        (self.root / "disks").mkdir(parents=True, exist_ok=True)
        (self.root / "snapshots").mkdir(parents=True, exist_ok=True)

    def release(self) -> None:
        """Nothing outside root was made."""

    def endpoint_sockets(self, address: str, ports: tuple[int, ...]) -> list[socket.socket]:
        # The in-process guest calls the backend directly; loopback sockets keep the
        # server's endpoints up without a fabric address.
        out = []
        for _ in ports:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(16)
            s.setblocking(False)
            out.append(s)
        return out

    def attach_backend(self, backend: GuestBackend) -> None:
        self.backend = backend

    # -- naming ----------------------------------------------------------------------------
    def machine_address(self, slot: int) -> str:
        return f"memory-{slot}"

    def disk_location(self, machine: str, disk: str) -> str:
        return str(self.root / "disks" / machine / f"{disk}.img")

    def scratch_dir(self) -> Path:
        (self.root / "scratch").mkdir(parents=True, exist_ok=True)
        return self.root / "scratch"

    def inspect_import(self, path: Path) -> tuple[int, str]:
        raise FrostpointError("InvalidInput", "importing a disk image needs QEMU guests "
                              "(the host platform), not the in-memory one")

    # -- lifecycle ---------------------------------------------------------------------
    def _get(self, machine: str) -> MemoryMachine:
        m = self.machines.get(machine)
        if m is None:
            raise PlatformRefused(f"no machine {machine} on this platform")
        return m

    def create(self, spec: MachineSpec, guest_files: dict[str, tuple[str, int]]) -> None:
        with self.lock:
            if spec.name in self.machines:
                raise PlatformRefused(f"machine {spec.name} exists already")
            self.ensure()
            for disk in spec.disks:
                disk.image_path.parent.mkdir(parents=True, exist_ok=True)
                with open(disk.image_path, "wb") as f:
                    f.truncate(disk.size_bytes)
            m = MemoryMachine(spec)
            self.machines[spec.name] = m
        for path, (text, mode) in guest_files.items():
            self.write_guest_file(spec.name, path, text.encode(), mode)

    def start(self, spec: MachineSpec) -> None:
        with self.lock:
            m = self._get(spec.name)
            missing = [d.name for d in spec.disks if not d.image_path.exists()]
            if missing:
                raise PlatformRefused(f"disk(s) {missing} of {spec.name} are gone")
            if m.power == "Running":
                return
            m.spec, m.power = spec, "Running"
            self._start_guest(m)

    def _start_guest(self, m: MemoryMachine) -> None:
        if m.agent_version and m.guest is None:
            m.guest = InProcessGuest(self, m.spec.name)
            m.guest.start()

    def _stop_guest(self, m: MemoryMachine) -> None:
        guest, m.guest = m.guest, None
        if guest is not None:
            guest.stop()

    def stop(self, spec: MachineSpec, deallocate: bool = False) -> None:
        with self.lock:
            m = self._get(spec.name)
        self._stop_guest(m)  # outside the lock: the guest may be in a call
        with self.lock:
            m.frozen.clear()  # power-off ends a freeze, as the sandbox thaws first
            m.power = "Deallocated" if deallocate else "Stopped"

    def delete(self, spec: MachineSpec) -> None:
        if spec.name not in self.machines:
            return  # a delete finishing after a crash: nothing left
        self.stop(spec, deallocate=True)
        with self.lock:
            for disk in spec.disks:
                disk.image_path.unlink(missing_ok=True)
            shutil.rmtree(self.root / "disks" / spec.name, ignore_errors=True)
            del self.machines[spec.name]

    def detach_disk(self, spec: MachineSpec, disk: DiskSpec) -> None:
        with self.lock:
            m = self._get(spec.name)
            m.frozen.discard(disk.name)
            m.spec.disks = [d for d in m.spec.disks if d.name != disk.name]
            disk.image_path.unlink(missing_ok=True)

    # -- facts ---------------------------------------------------------------------------
    def is_running(self, machine: str) -> bool:
        m = self.machines.get(machine)
        return m is not None and m.power == "Running"

    def power_state(self, machine: str) -> str:
        return self._get(machine).power

    def machine_facts(self, machine: str) -> dict[str, str]:
        m = self.machines.get(machine)
        return {"kind": m.spec.kind} if m else {}

    def console(self, machine: str) -> str:
        return self._get(machine).files.get(f"{GUEST_LOG}/init.log", b"").decode(errors="replace")

    def disk_exists(self, disk: DiskSpec) -> bool:
        return disk.image_path.exists()

    # -- inside the machine -----------------------------------------------------------
    def exec(self, machine: str, argv: list[str], timeout: float = 300,
             input: bytes | None = None) -> ExecResult:
        """The few programs the service runs in a machine (frostpoint-agent restart,
        thaw); anything else is not found, as in a guest without it."""
        with self.lock:
            m = self._get(machine)
            if m.power != "Running":
                raise PlatformRefused(f"machine {machine} is {m.power}: nothing to exec in")
        if argv[:2] == ["frostpoint-agent", "restart"]:
            if not m.agent_version:
                return ExecResult(127, b"", b"frostpoint-agent: not found\n")
            self._stop_guest(m)
            with self.lock:
                self._start_guest(m)
            return ExecResult(0, b"", b"")
        if argv[:2] == ["frostpoint-agent", "thaw"]:
            with self.lock:
                thawed, m.frozen = sorted(m.frozen), set()
            return ExecResult(0, " ".join(thawed).encode(), b"")
        return ExecResult(127, b"", f"{argv[0]}: not found\n".encode())

    def remount(self, machine: str, path: str, option: str) -> None:
        self._get(machine)

    def install_agent(self, machine: str, version: str | None) -> None:
        with self.lock:
            m = self._get(machine)
            m.agent_version = version
            if version is None:
                m.files.pop(f"{GUEST_ETC}/agent.installed", None)
            else:
                m.files[f"{GUEST_ETC}/agent.installed"] = f"frostpoint-agent {version}\n".encode()
            if m.power == "Running" and version:
                self._start_guest(m)  # the machine's init starts a new agent

    @staticmethod
    def _shared(path: str) -> None:
        if not any(path == p or path.startswith(p + "/") for p in SHARED):
            raise ValueError(f"{path} is not a shared guest path")

    def read_guest_file(self, machine: str, path: str) -> bytes | None:
        self._shared(path)
        with self.lock:
            return self._get(machine).files.get(path)

    def write_guest_file(self, machine: str, path: str, data: bytes, mode: int = 0o644) -> None:
        self._shared(path)
        with self.lock:
            self._get(machine).files[path] = bytes(data)

    # -- disks -------------------------------------------------------------------------------
    def snapshot_disks(self, machine: str, snapshot_id: str,
                       disks: list[DiskSpec]) -> Snapshot:
        with self.lock:
            self._get(machine)
            target = self.root / "snapshots" / machine / snapshot_id
            if target.exists():
                raise FileExistsError(f"snapshot {snapshot_id} exists already")
            tmp = target.with_name(f".{snapshot_id}.tmp")
            tmp.mkdir(parents=True)
            try:
                for disk in disks:  # a copy of the bytes: later writes do not reach it
                    shutil.copyfile(disk.image_path, tmp / f"{disk.name}.img")
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            tmp.rename(target)
            return Snapshot(str(target), [d.name for d in disks])

    def copy_disk(self, src: Path, dst: Path) -> None:
        shutil.copyfile(src, dst)

    def replace_disk(self, disk: DiskSpec, image: Path) -> None:
        with self.lock:
            m = next((m for m in self.machines.values()
                      if any(d.image_path == disk.image_path for d in m.spec.disks)), None)
            if m is None:
                raise PlatformRefused(f"no machine has disk {disk.name} at {disk.image_path}")
            if m.power == "Running":
                raise PlatformRefused(f"machine {m.spec.name} is running: stop it first")
            shutil.move(image, disk.image_path)

    def thaw(self, machine: str, disks: list[DiskSpec]) -> list[str]:
        with self.lock:
            m = self.machines.get(machine)
            if m is None:
                return []
            names = {d.name for d in disks}
            thawed = sorted(m.frozen & names)
            m.frozen -= names
            return thawed

    def image_files(self, image: Path, filesystem: str,
                    key: bytes | None) -> AbstractContextManager[Path]:
        # Memory disks hold bytes, not filesystems: file restores need the sandbox.
        raise PlatformRefused("disks of the memory platform have no filesystem to read")

    def mount_image(self, image: Path, filesystem: str, at: Path) -> None:
        raise PlatformRefused("disks of the memory platform have no filesystem to mount")

    def unmount_image(self, at: Path) -> None:
        return None

    # -- for tests: what a program in the guest would do -------------------------------
    def write_disk(self, machine: str, disk: str, data: bytes, offset: int = 0) -> None:
        with self.lock:
            m = self._get(machine)
            if m.power != "Running":
                raise PlatformRefused(f"machine {machine} is {m.power}")
            if disk in m.frozen:
                raise PlatformRefused(f"disk {disk} of {machine} is frozen")
            spec = next(d for d in m.spec.disks if d.name == disk)
            with open(spec.image_path, "r+b") as f:
                f.seek(offset)
                f.write(data)

    def read_disk(self, location: str, disk: str, size: int, offset: int = 0) -> bytes:
        with open(self.snapshot_image(location, disk), "rb") as f:
            f.seek(offset)
            return f.read(size)


class InProcessGuest:
    """The agent and snapshot extension of one machine, in a thread (module docstring)."""

    def __init__(self, platform: MemoryPlatform, machine: str) -> None:
        self.platform = platform
        self.machine = machine
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True,
                                       name=f"guest-{machine}")
        self.done_seq = -1

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if threading.current_thread() is not self.thread:
            self.thread.join(10)

    def _conf(self) -> dict[str, str]:
        raw = self.platform.read_guest_file(self.machine, f"{GUEST_ETC}/agent.conf") or b""
        return dict(ln.split("=", 1) for ln in raw.decode().splitlines() if "=" in ln)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            backend = self.platform.backend
            try:
                if backend is not None:
                    self._tick(backend)
            except Exception:  # noqa: BLE001 - a real agent retries next beat, too
                pass
            self.stopping.wait(self.platform.heartbeat_s)

    def _tick(self, backend: GuestBackend) -> None:
        token = self.platform.read_guest_file(self.machine, f"{GUEST_ETC}/agent.token")
        mid = backend.machine_for_token((token or b"").decode().strip())
        if mid is None:
            return
        m = self.platform.machines.get(self.machine)
        enabled = self._conf().get("Extensions.Enabled", "y") == "y"
        backend.record_heartbeat(mid, {"version": m.agent_version if m else "",
                                       "status": "Ready", "extensions_enabled": enabled})
        if not enabled:
            return
        _, goal = backend.goal_state(mid)
        for ext in goal.get("extensions", []):
            if (ext.get("name") == SNAPSHOT_EXTENSION and ext.get("state") == "enabled"
                    and int(ext["sequence"]) > self.done_seq):
                self.done_seq = int(ext["sequence"])
                self._snapshot(backend, mid, ext)

    def _report(self, backend: GuestBackend, mid: str, ext: dict[str, Any], status: str,
                code: str | None = None, message: str = "", **extra: Any) -> None:
        backend.record_status(mid, {"extensions": [{
            "name": ext["name"], "version": ext["version"], "sequence": ext["sequence"],
            "status": status, "code": code, "message": message, "warnings": [], **extra}]})

    def _snapshot(self, backend: GuestBackend, mid: str, ext: dict[str, Any]) -> None:
        settings = ext.get("settings") or {}
        task = str(settings.get("taskId", ""))
        self._report(backend, mid, ext, "transitioning", message="starting")
        try:
            backend.snapshot_task(mid, task)
        except Exception as e:  # noqa: BLE001 - the service's refusal is the status
            self._fail(backend, mid, ext, e)
            return
        disks = [str(d["mountpoint"]).rsplit("/", 1)[-1] for d in settings.get("disks", [])]
        m = self.platform.machines.get(self.machine)
        if m is None:
            return
        self._report(backend, mid, ext, "transitioning", message="freezing",
                     phase="freezing", mounts=[d["mountpoint"] for d in settings["disks"]])
        with self.platform.lock:
            m.frozen |= set(disks)
            if m.die_when_frozen:  # kill -9 of everything: nobody left to thaw
                self.stopping.set()
                return
        t0 = time.monotonic()
        self.stopping.wait(m.hold_frozen_s)
        try:
            result = backend.take_snapshot(mid, {"taskId": task, "frozen": True})
        except Exception as e:  # noqa: BLE001
            with self.platform.lock:
                m.frozen -= set(disks)
            self._fail(backend, mid, ext, e)
            return
        with self.platform.lock:
            m.frozen -= set(disks)
        self._report(backend, mid, ext, "success", message="snapshot taken",
                     consistency="FileSystemConsistent",
                     freezeMs=round((time.monotonic() - t0) * 1000, 2), snapshot=result)

    def _fail(self, backend: GuestBackend, mid: str, ext: dict[str, Any],
              e: Exception) -> None:
        code = getattr(e, "code", None) or "ExtensionOperationFailedForManagedDisks"
        self._report(backend, mid, ext, "error", code, str(e),
                     details=dict(getattr(e, "details", {}) or {}))
