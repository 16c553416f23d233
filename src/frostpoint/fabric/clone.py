"""A snapshot clone whose frozen part costs what changed, not the image's extent count.

A whole-file FICLONE remaps every extent of the image, one transaction each on XFS:
tens of milliseconds once copy-on-write has split the image into thousands of extents,
and all of it while the guest is frozen. So the clone is done in two steps:

1. stage (guest running): FICLONE the image into the snapshot's temporary folder and
   record the staged copy's extent map (logical, physical, length, flags).
2. catch_up (guest frozen): FIEMAP the image and re-clone (FICLONERANGE) only the
   ranges whose mapping is not exactly one the staged copy has.

Why that is exact: right after step 1 both files map every byte to the same physical
blocks, and the staged copy keeps those blocks referenced, so a later write to the
image goes to a new place (copy-on-write) and changes the image's mapping there. A
range whose (logical, physical, length, flags) is still one of the staged copy's holds
the same bytes. Anything else (a new extent, a hole punched, an unwritten extent
written, a size change) is re-cloned from the image, holes included.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

FICLONE = 0x40049409
FICLONERANGE = 0x4020940D
FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_SHARED = 0x2000
# Extents whose physical address says nothing reliable about their contents
# (unknown, delalloc, encoded, data-encrypted, not-aligned, inline, tail).
UNTRUSTED = 0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200 | 0x400
_HEAD = struct.Struct("=QQLLLL")
_EXTENT = struct.Struct("=QQQ16xL12x")
_BATCH = 4096
_CLONE_RANGE = struct.Struct("=qQQQ")
log = logging.getLogger(__name__)

Mapping = tuple[int, int, int, int]  # logical, physical, length, flags (less SHARED/LAST)


def extent_map(fd: int) -> list[Mapping]:
    """Every extent of an open file, written back first (FIEMAP_FLAG_SYNC)."""
    out: list[Mapping] = []
    start = 0
    while True:
        buf = bytearray(_HEAD.size + _BATCH * _EXTENT.size)
        _HEAD.pack_into(buf, 0, start, 2**64 - 1 - start, FIEMAP_FLAG_SYNC, 0, _BATCH, 0)
        fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
        mapped = _HEAD.unpack_from(buf, 0)[3]
        if mapped == 0:
            return out
        ext = list(_EXTENT.iter_unpack(memoryview(buf)[_HEAD.size:
                                                      _HEAD.size + mapped * _EXTENT.size]))
        out.extend((lo, ph, ln, fl & ~(FIEMAP_EXTENT_SHARED | FIEMAP_EXTENT_LAST))
                   for lo, ph, ln, fl in ext)
        if ext[-1][3] & FIEMAP_EXTENT_LAST:
            return out
        start = ext[-1][0] + ext[-1][2]


@dataclass
class Staged:
    """A clone of an image taken while the guest ran, and the mapping it had then."""

    image: Path
    copy: Path
    size: int
    mappings: frozenset[Mapping]


def stage(image: Path, copy: Path) -> Staged:
    with open(image, "rb") as s, open(copy, "wb") as d:
        fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
        size = os.fstat(s.fileno()).st_size
        # The copy's own map: it is never written, so it stays what it is now.
        mapped = frozenset(m for m in extent_map(d.fileno()) if not m[3] & UNTRUSTED)
    return Staged(image, copy, size, mapped)


def changed(current: list[Mapping], staged: frozenset[Mapping]) -> list[tuple[int, int]]:
    """Ranges (start, end) where the image may differ from the staged copy, merged."""
    dirty: list[tuple[int, int]] = []
    now = set()
    for m in current:
        if m in staged and not m[3] & UNTRUSTED:
            now.add(m)
        else:
            dirty.append((m[0], m[0] + m[2]))
    # Extents the copy has and the image no longer maps as such (holes punched since).
    dirty.extend((m[0], m[0] + m[2]) for m in staged - now)
    dirty.sort()
    merged: list[tuple[int, int]] = []
    for lo, hi in dirty:
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def catch_up(staged: Staged) -> int:
    """Make the staged copy hold the image's bytes now; returns the ranges re-cloned.

    Runs while the guest is frozen: one FIEMAP of the image plus one FICLONERANGE per
    changed range. A size change re-clones the whole file."""
    with open(staged.image, "rb") as s, open(staged.copy, "r+b") as d:
        size = os.fstat(s.fileno()).st_size
        if size != staged.size:
            fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
            return 1
        ranges = changed(extent_map(s.fileno()), staged.mappings)
        for lo, hi in ranges:
            # Length 0 clones to the end of the file (which need not be block aligned).
            n = 0 if hi >= size else hi - lo
            if lo >= size:
                continue
            fcntl.ioctl(d.fileno(), FICLONERANGE, _CLONE_RANGE.pack(s.fileno(), lo, n, lo))
        return len(ranges)


Disks = list[tuple[str, Path]]  # (disk name, image) in snapshot order


class Stages:
    """Snapshot folders staged while the guest runs, by snapshot folder; at most one
    per machine (a machine has one backup at a time). A staged folder is hidden
    (.NAME.stage) and becomes the snapshot only by the rename snapshot_disks does."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.staged: dict[str, tuple[Path, Path, Disks, list[Staged]]] = {}

    def stage(self, machine: str, target: Path, disks: Disks) -> None:
        """Clone the disks beside target; a failure only means a slower snapshot."""
        with self.lock:
            old = self.staged.pop(machine, None)
        if old is not None:
            shutil.rmtree(old[1], ignore_errors=True)
        if target.exists():
            return
        folder = target.with_name(f".{target.name}.stage")
        shutil.rmtree(folder, ignore_errors=True)
        try:
            folder.mkdir(parents=True)
            staged = [stage(image, folder / f"{name}.img") for name, image in disks]
        except OSError as e:
            log.warning("staging snapshot %s failed (%s): it will be cloned whole", target, e)
            shutil.rmtree(folder, ignore_errors=True)
            return
        with self.lock:
            self.staged[machine] = (target, folder, disks, staged)

    def catch_up(self, machine: str, target: Path, disks: Disks) -> Path | None:
        """The staged folder for target made current, or None (clone it whole)."""
        with self.lock:
            entry = self.staged.get(machine)
            if entry is None or entry[0] != target:
                return None
            del self.staged[machine]
        _, folder, staged_disks, staged = entry
        if staged_disks != disks:
            shutil.rmtree(folder, ignore_errors=True)
            return None
        try:
            for s in staged:
                catch_up(s)
        except OSError as e:
            log.warning("catching up snapshot %s failed (%s): cloning it whole", target, e)
            shutil.rmtree(folder, ignore_errors=True)
            return None
        return folder
