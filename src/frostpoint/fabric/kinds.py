"""The machines of this host, of every kind, as one MachinePlatform (fabric/platform.py).

A machine's kind is "sandbox" (fabric/sandbox.py: namespaces on the host kernel) or
"qemu" (fabric/qemu.py: a QEMU guest with its own kernel). This router hands each call
to the kind's platform: by the spec's kind, or for a machine named alone, by whether
the QEMU platform has it. What does not depend on the kind goes to the sandbox: the
pool, the fabric network and its endpoints, and the pool's files (disk locations,
snapshots as reflinks of the images, copies, file restores from an image), since both
kinds keep their disks as raw images in the one reflink pool.
"""

from __future__ import annotations

import socket
from contextlib import AbstractContextManager
from pathlib import Path

from frostpoint.errors.catalog import FrostpointError
from frostpoint.fabric import vmimport
from frostpoint.fabric.platform import (
    DiskSpec,
    ExecResult,
    GuestBackend,
    MachineSpec,
    Snapshot,
    SnapshotFolders,
)
from frostpoint.fabric.qemu import QemuPlatform
from frostpoint.fabric.sandbox import Sandbox
from frostpoint.protocol import GUEST_LOG

KINDS = ("sandbox", "qemu")


class HostMachines(SnapshotFolders):
    def __init__(self, sandbox: Sandbox, qemu: QemuPlatform) -> None:
        self.sandbox = sandbox
        self.qemu = qemu

    def _by_spec(self, spec: MachineSpec) -> Sandbox | QemuPlatform:
        if spec.kind not in KINDS:
            raise FrostpointError("InvalidInput", f"machine kind {spec.kind!r}: use "
                                  f"{' or '.join(KINDS)}")
        return self.qemu if spec.kind == "qemu" else self.sandbox

    def _by_name(self, machine: str) -> Sandbox | QemuPlatform:
        return self.qemu if self.qemu.has(machine) else self.sandbox

    # -- the platform itself: the pool and the fabric are shared ---------------------
    def ensure(self) -> None:
        self.sandbox.ensure()

    def release(self) -> None:
        self.sandbox.release()

    def endpoint_sockets(self, address: str, ports: tuple[int, ...]) -> list[socket.socket]:
        return self.sandbox.endpoint_sockets(address, ports)

    def attach_backend(self, backend: GuestBackend) -> None:
        """Both kinds' agents reach the service over HTTP on the fabric."""

    def machine_address(self, slot: int) -> str:
        return self.sandbox.machine_address(slot)

    def disk_location(self, machine: str, disk: str) -> str:
        return self.sandbox.disk_location(machine, disk)

    def scratch_dir(self) -> Path:
        return self.sandbox.scratch_dir()

    def inspect_import(self, path: Path) -> tuple[int, str]:
        _, size, fs = vmimport.inspect(path)
        return size, fs

    # -- by kind --------------------------------------------------------------------------
    def create(self, spec: MachineSpec, guest_files: dict[str, tuple[str, int]]) -> None:
        self._by_spec(spec).create(spec, guest_files)

    def start(self, spec: MachineSpec) -> None:
        self._by_spec(spec).start(spec)

    def stop(self, spec: MachineSpec, deallocate: bool = False) -> None:
        self._by_spec(spec).stop(spec, deallocate)

    def delete(self, spec: MachineSpec) -> None:
        self._by_spec(spec).delete(spec)

    def detach_disk(self, spec: MachineSpec, disk: DiskSpec) -> None:
        self._by_spec(spec).detach_disk(spec, disk)

    def is_running(self, machine: str) -> bool:
        return self._by_name(machine).is_running(machine)

    def disk_exists(self, disk: DiskSpec) -> bool:
        return disk.image_path.exists()

    def machine_facts(self, machine: str) -> dict[str, str]:
        if self.qemu.has(machine):
            return self.qemu.machine_facts(machine)
        return {"kind": "sandbox"}

    def console(self, machine: str) -> str:
        if self.qemu.has(machine):
            return self.qemu.console(machine)
        return (self.sandbox.read_guest_file(machine, f"{GUEST_LOG}/init.log")
                or b"")[-(64 << 10):].decode(errors="replace")

    def exec(self, machine: str, argv: list[str], timeout: float = 300,
             input: bytes | None = None) -> ExecResult:
        return self._by_name(machine).exec(machine, argv, timeout, input)

    def remount(self, machine: str, path: str, option: str) -> None:
        self._by_name(machine).remount(machine, path, option)

    def install_agent(self, machine: str, version: str | None) -> None:
        self._by_name(machine).install_agent(machine, version)

    def read_guest_file(self, machine: str, path: str) -> bytes | None:
        return self._by_name(machine).read_guest_file(machine, path)

    def write_guest_file(self, machine: str, path: str, data: bytes, mode: int = 0o644) -> None:
        self._by_name(machine).write_guest_file(machine, path, data, mode)

    def thaw(self, machine: str, disks: list[DiskSpec]) -> list[str]:
        return self._by_name(machine).thaw(machine, disks)

    # -- the pool's files: the same for every kind -------------------------------------
    def prepare_snapshot(self, machine: str, snapshot_id: str,
                         disks: list[DiskSpec]) -> None:
        self.sandbox.prepare_snapshot(machine, snapshot_id, disks)  # both kinds reflink

    def snapshot_disks(self, machine: str, snapshot_id: str,
                       disks: list[DiskSpec]) -> Snapshot:
        return self.sandbox.snapshot_disks(machine, snapshot_id, disks)

    def copy_disk(self, src: Path, dst: Path) -> None:
        self.sandbox.copy_disk(src, dst)

    def replace_disk(self, disk: DiskSpec, image: Path) -> None:
        self.sandbox.replace_disk(disk, image)

    def image_files(self, image: Path, filesystem: str,
                    key: bytes | None) -> AbstractContextManager[Path]:
        return self.sandbox.image_files(image, filesystem, key)

    def mount_image(self, image: Path, filesystem: str, at: Path) -> None:
        self.sandbox.mount_image(image, filesystem, at)  # on the host: any kind's disk

    def unmount_image(self, at: Path) -> None:
        self.sandbox.unmount_image(at)
