"""The fabric's view of a machine: the MachineSpec the platform acts on, from its row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from frostpoint.fabric.platform import DiskSpec, MachineSpec
from frostpoint.service.models import Machine


def machine_spec(m: Machine) -> MachineSpec:
    return MachineSpec(m.name, m.slot, [DiskSpec(d.name, d.size_bytes, d.filesystem,
                                                 Path(d.image_path), d.encrypted)
                                        for d in m.disks],
                       kind=m.kind, memory_bytes=m.memory_bytes, cpus=m.cpus)


def taken_disks(disks: list[DiskSpec], params: dict[str, Any]) -> list[DiskSpec]:
    """The disks a backup job takes: those its params name ("disks", set from the
    protection's exclusions when the job starts), or all of them."""
    names = params.get("disks")
    return [d for d in disks if names is None or d.name in names]
