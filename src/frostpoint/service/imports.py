"""`frostpoint vm import`: a QEMU VM whose data disks are a user's own images (raw or
qcow2, converted into the pool by the fabric: fabric/vmimport.py). It boots the VM
image's root disk with the imported disks at /mnt/NAME, and starts without the agent:
`vm agent install` puts it in through the VM's channel (docs/machines.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from frostpoint.errors.catalog import FrostpointError
from frostpoint.service.machines import Machines


def import_vm(machines: Machines, name: str, disks: list[dict[str, str]], memory: str,
              cpus: int) -> dict[str, Any]:
    if not disks:
        raise FrostpointError("InvalidInput", "vm import needs at least one --disk NAME=PATH")
    asked = []
    for d in disks:
        source = Path(d["path"])
        size, fs = machines.rt.platform.inspect_import(source)  # refuses what it cannot take
        asked.append({"name": d["name"], "size": str(size), "filesystem": fs,
                      "source": source})
    return machines.create(name, asked, agent=False, kind="qemu", memory=memory, cpus=cpus)
