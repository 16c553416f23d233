"""The names and sizes the management API accepts for machines and vaults, and the
lookup of a named object."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from frostpoint.errors.catalog import FrostpointError

# Machines and vaults: a name also names namespaces, links and folders on the host.
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,19}$")
SIZE_RE = re.compile(r"^(\d+)([KMGT]?)$")


def parse_size(text: str) -> int:
    m = SIZE_RE.match(text.strip().upper())
    if not m:
        raise FrostpointError("InvalidInput", f"bad size {text!r}: use e.g. 256M or 2G")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[m.group(2)]


def by_name(s: Session, model: Any, name: str, what: str) -> Any:
    """The object of model named name, or NotFound naming what it is."""
    obj = s.scalar(select(model).where(model.name == name))
    if obj is None:
        raise FrostpointError("NotFound", f"no {what} named {name!r}")
    return obj


def check_disk(d: dict[str, object]) -> tuple[str, int, str]:
    """A disk of a new machine as asked for: (name, size in bytes, filesystem)."""
    name, fs = str(d.get("name")), str(d.get("filesystem", "ext4"))
    if fs not in ("ext4", "xfs"):
        raise FrostpointError("InvalidInput", f"filesystem {fs} is not ext4 or xfs")
    size = parse_size(str(d.get("size", "256M")))
    if size < (16 << 20) or (fs == "xfs" and size < (300 << 20)):
        raise FrostpointError("InvalidInput",
                              f"disk {name} is too small for {fs}: the minimum "
                              f"is {'300' if fs == 'xfs' else '16'} MiB")
    if not NAME_RE.match(name):
        raise FrostpointError("InvalidInput", f"bad disk name {name!r}")
    return name, size, fs


def check_vm_size(kind: str, memory: str, cpus: int) -> int:
    """A machine's kind, and a QEMU guest's memory (bytes, returned) and CPUs."""
    if kind not in ("sandbox", "qemu"):
        raise FrostpointError("InvalidInput", f"machine kind {kind!r}: use sandbox or qemu")
    mem = parse_size(memory)
    if not (256 << 20) <= mem <= (16 << 30) or not 1 <= cpus <= 8:
        raise FrostpointError("InvalidInput", "a VM has 256M to 16G of memory and 1 to 8 "
                              f"CPUs (asked: {memory}, {cpus})")
    return mem
