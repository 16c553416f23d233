"""The one seam between the backup service and the machines it protects.

The service asks a `MachinePlatform` for everything that happens to a machine: make,
start, stop, deallocate and delete it, run a program in it, read and write the files
the host shares with its agent, snapshot and thaw its disks, install its agent, and
say whether it runs. It never sees how: no namespaces, loop devices, pool folders or
guest folders. Implementations:

- `fabric.kinds.HostMachines`: the real machines of this host (root; docs/machines.md),
  by kind: `fabric.sandbox.Sandbox` (namespaces) and `fabric.qemu.QemuPlatform` (QEMU);
- `fabric.memory.MemoryPlatform`: machines in memory with an in-process guest agent,
  for tests of the service's rules without root (docs/machines.md "The seam").

Disks and snapshots are named by opaque locations (strings the service stores and
hands back); a snapshot's disk can be opened as a file (`snapshot_image`), which is
what the vault reads.
"""

from __future__ import annotations

import shutil
import socket
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from frostpoint.protocol import DISK_ROOT


@dataclass
class DiskSpec:
    name: str
    size_bytes: int
    filesystem: str
    image_path: Path  # the disk's location (DiskPool path for the sandbox)
    encrypted: bool = False
    key: bytes | None = field(default=None, repr=False)  # its data key, to attach it
    source: Path | None = None  # a user's image (raw or qcow2) the disk is made from

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
    kind: str = "sandbox"  # or "qemu" (fabric/kinds.py picks the platform)
    memory_bytes: int = 1 << 30  # a QEMU guest's
    cpus: int = 1


@dataclass
class ExecResult:
    returncode: int
    stdout: bytes
    stderr: bytes


@dataclass
class Snapshot:
    """Copies of a machine's disks at one moment, kept until deleted."""

    location: str  # opaque; stored on the restore point
    disks: list[str]


class SnapshotFolders:
    """Both platforms keep a snapshot as a folder (its location) of NAME.img files."""

    def snapshot_exists(self, location: str) -> bool:
        return Path(location).is_dir()

    def snapshot_image(self, location: str, disk: str) -> Path:
        return Path(location) / f"{disk}.img"

    def delete_snapshot(self, location: str) -> None:
        shutil.rmtree(location, ignore_errors=True)

    def prepare_snapshot(self, machine: str, snapshot_id: str,
                         disks: list[DiskSpec]) -> None:
        """Nothing to prepare unless the platform says otherwise."""


class GuestBackend(Protocol):
    """What a machine's agent talks to (the wire and host endpoints' backend,
    fabric/endpoints.py MachineBackend): the in-memory platform's guest calls it
    directly, the sandbox's agent over HTTP."""

    def machine_for_token(self, token: str) -> str | None: ...
    def goal_state(self, machine_id: str) -> tuple[str, dict[str, Any]]: ...
    def record_heartbeat(self, machine_id: str, body: dict[str, Any]) -> None: ...
    def record_status(self, machine_id: str, body: dict[str, Any]) -> None: ...
    def take_snapshot(self, machine_id: str, body: dict[str, Any]) -> dict[str, Any]: ...
    def snapshot_task(self, machine_id: str, task_id: str) -> dict[str, Any]: ...


@runtime_checkable  # isinstance checks the methods are there (tests/test_layering.py)
class MachinePlatform(Protocol):
    """Everything the service does to machines (see the module's docstring)."""

    # -- the platform itself -------------------------------------------------------
    def ensure(self) -> None:
        """Make the platform usable (pool, fabric network); at server start."""

    def release(self) -> None:
        """Undo what ensure() made, after a start that failed."""

    def endpoint_sockets(self, address: str, ports: tuple[int, ...]) -> list[socket.socket]:
        """Listening sockets where machines reach the service (wire, host endpoints)."""

    def attach_backend(self, backend: GuestBackend) -> None:
        """What the machines' agents talk to (only an in-process guest needs it)."""

    # -- naming ----------------------------------------------------------------------
    def machine_address(self, slot: int) -> str: ...
    def disk_location(self, machine: str, disk: str) -> str: ...
    def scratch_dir(self) -> Path:
        """A folder beside the disks for temporary copies of them (restores)."""

    def inspect_import(self, path: Path) -> tuple[int, str]:
        """A user's disk image to import into a VM (raw or qcow2): (its size in bytes,
        its filesystem), or InvalidInput saying why it cannot be imported."""

    # -- lifecycle ---------------------------------------------------------------------
    def create(self, spec: MachineSpec, guest_files: dict[str, tuple[str, int]]) -> None:
        """Make the disks and the machine's shared folders, with guest_files (guest
        path -> (text, mode)) written in; the machine is not started."""

    def start(self, spec: MachineSpec) -> None: ...
    def stop(self, spec: MachineSpec, deallocate: bool = False) -> None: ...
    def delete(self, spec: MachineSpec) -> None: ...
    def detach_disk(self, spec: MachineSpec, disk: DiskSpec) -> None:
        """Unmount a disk of a (running or stopped) machine and delete it."""

    # -- facts ---------------------------------------------------------------------------
    def is_running(self, machine: str) -> bool: ...
    def disk_exists(self, disk: DiskSpec) -> bool: ...
    def machine_facts(self, machine: str) -> dict[str, str]:
        """What the platform says of a machine: its kind, a VM's accelerator."""

    def console(self, machine: str) -> str:
        """The end of the machine's console: a VM's serial log, a sandbox's init log."""

    # -- inside the machine -----------------------------------------------------------
    def exec(self, machine: str, argv: list[str], timeout: float = 300,
             input: bytes | None = None) -> ExecResult: ...
    def remount(self, machine: str, path: str, option: str) -> None:
        """Make a mount in the machine exec or noexec (the guest cannot mount)."""

    def install_agent(self, machine: str, version: str | None) -> None:
        """Put agent release `version` on the machine (None: take it away)."""

    def read_guest_file(self, machine: str, path: str) -> bytes | None:
        """A file under the guest's /etc/frostpoint, /var/lib/frostpoint-agent or
        /var/log/frostpoint (None if it is not there); never follows a guest's link."""

    def write_guest_file(self, machine: str, path: str, data: bytes, mode: int = 0o644) -> None:
        ...

    # -- disks -------------------------------------------------------------------------------
    def prepare_snapshot(self, machine: str, snapshot_id: str,
                         disks: list[DiskSpec]) -> None:
        """Work done before the guest freezes so that snapshot_disks, which runs while
        it is frozen, is short; optional: snapshot_disks is right without it."""

    def snapshot_disks(self, machine: str, snapshot_id: str,
                       disks: list[DiskSpec]) -> Snapshot:
        """Copy every disk, all or nothing; the same snapshot_id twice is refused
        (FileExistsError): a snapshot, once there, is never written again."""

    def snapshot_exists(self, location: str) -> bool: ...
    def snapshot_image(self, location: str, disk: str) -> Path:
        """A disk of a snapshot as a file to read (the vault's backup and restores)."""

    def delete_snapshot(self, location: str) -> None: ...
    def copy_disk(self, src: Path, dst: Path) -> None:
        """A new disk image dst with src's bytes (instant where the pool reflinks)."""

    def replace_disk(self, disk: DiskSpec, image: Path) -> None:
        """Make a stopped machine's disk hold image's bytes; image (made under
        scratch_dir) is moved into place."""

    def thaw(self, machine: str, disks: list[DiskSpec]) -> list[str]:
        """Thaw the machine's frozen disks from the host; returns the names thawed."""

    def image_files(self, image: Path, filesystem: str,
                    key: bytes | None) -> AbstractContextManager[Path]:
        """The files of a copy of a disk (file restores), for the host to read while
        the context lasts: read-only, and nothing of the guest's filesystem (device
        nodes, set-id bits, programs) counts on the host; unlocked with key if the disk
        is encrypted."""

    def mount_image(self, image: Path, filesystem: str, at: Path) -> None:
        """Mount a copy of a disk (not encrypted) at the empty folder `at`, as
        image_files does (read-only, nodev, nosuid, noexec), until unmount_image."""

    def unmount_image(self, at: Path) -> None:
        """Undo mount_image (nothing mounted there: nothing to do)."""
