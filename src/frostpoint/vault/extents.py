"""Changed-block tracking from the filesystem: FIEMAP on reflinked snapshots.

Two reflink snapshots of one disk share physical extents wherever nothing was written
in between (a write to a shared extent is copied to a new place first). So a block
whose extents map to the same physical ranges in both snapshots holds the same bytes
and need not be read. Ranges with no extent are holes: zeros, never read.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from dataclasses import dataclass
from enum import Enum

FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_UNWRITTEN = 0x800  # allocated, reads as zeros
# Extents whose physical address says nothing reliable about their contents.
UNTRUSTED = 0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200  # unknown, delalloc, encoded, ...
_HEAD = struct.Struct("=QQLLLL")
_EXTENT = struct.Struct("=QQQQQLLLL")
BATCH = 1024


@dataclass(frozen=True)
class Extent:
    logical: int
    physical: int
    length: int
    flags: int


def fiemap(fd: int) -> list[Extent]:
    """All extents of an open file; OSError if the filesystem has no FIEMAP."""
    out: list[Extent] = []
    start = 0
    while True:
        buf = bytearray(_HEAD.size + BATCH * _EXTENT.size)
        _HEAD.pack_into(buf, 0, start, 2**64 - 1 - start, FIEMAP_FLAG_SYNC, 0, BATCH, 0)
        fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
        mapped = _HEAD.unpack_from(buf, 0)[3]
        if mapped == 0:
            return out
        last = False
        for i in range(mapped):
            lo, ph, ln, _r1, _r2, fl, _a, _b, _c = _EXTENT.unpack_from(
                buf, _HEAD.size + i * _EXTENT.size)
            out.append(Extent(lo, ph, ln, fl))
            last = bool(fl & FIEMAP_EXTENT_LAST)
        if last:
            return out
        start = out[-1].logical + out[-1].length


class Block(Enum):
    HOLE = "hole"  # no data: zeros without reading
    SAME = "same"  # same physical extents as the previous snapshot: reuse its chunk
    READ = "read"  # must be read
    PATCH = "patch"  # partly changed: only the frames the changed ranges touch are read


Ranges = list[tuple[int, int, bool]]  # (start, end, read?) relative to the block; else zero


def _lookup(exts: tuple[tuple[int, ...], ...], pos: int) -> tuple[int, int, int] | None:
    """(physical address, flags, end of the extent) at block offset pos, or None."""
    for rel, phys, length, flags in exts:
        if rel <= pos < rel + length:
            return phys + (pos - rel), flags, rel + length
    return None


def changed_ranges(cur: tuple[tuple[int, ...], ...], prev: tuple[tuple[int, ...], ...],
                   n: int) -> Ranges:
    """The ranges of a block whose bytes may differ from the previous snapshot's.

    A range mapped to the same physical place in both holds the same bytes; a range
    that is a hole now reads as zeros; everything else must be read.
    """
    cuts = {0, n}
    for rel, _p, length, _f in (*cur, *prev):
        cuts.update((min(rel, n), min(rel + length, n)))
    edges = sorted(cuts)
    out: Ranges = []
    for a, b in zip(edges, edges[1:], strict=False):
        c, p = _lookup(cur, a), _lookup(prev, a)
        if c is None:
            kind: bool | None = None if p is None else False  # hole now: zeros
        elif p is not None and c[0] == p[0] and c[1] == p[1]:
            kind = None  # same place, same bytes
        else:
            kind = True
        if kind is None:
            continue
        if out and out[-1][1] == a and out[-1][2] == kind:
            out[-1] = (out[-1][0], b, kind)
        else:
            out.append((a, b, kind))
    return out


def _per_block(extents: list[Extent], size: int, bs: int) -> list[tuple[tuple[int, ...], ...]]:
    """For each block, its extents clipped to the block, relative to the block start."""
    nblocks = -(-size // bs)
    blocks: list[list[tuple[int, ...]]] = [[] for _ in range(nblocks)]
    for e in extents:
        if e.flags & FIEMAP_EXTENT_UNWRITTEN and not e.flags & UNTRUSTED:
            continue  # reads as zeros, like a hole
        end = min(e.logical + e.length, size)
        pos = e.logical
        while pos < end:
            b = pos // bs
            if b >= nblocks:
                break
            stop = min(end, (b + 1) * bs)
            blocks[b].append((pos - b * bs, e.physical + (pos - e.logical), stop - pos,
                              e.flags & ~FIEMAP_EXTENT_LAST))
            pos = stop
    return [tuple(b) for b in blocks]


def plan(current_fd: int, size: int, bs: int, previous_fd: int | None = None,
         patches: dict[int, Ranges] | None = None) -> tuple[list[Block], str]:
    """What to do with each block of the current snapshot, and how it was decided.

    Without a previous snapshot (or without FIEMAP) every block with data is read.
    For PATCH blocks, `patches` receives the ranges that changed (data, or holes).
    """
    nblocks = -(-size // bs)
    try:
        cur = _per_block(fiemap(current_fd), size, bs)
    except OSError as e:
        return _plan_by_seek(current_fd, size, bs), f"no FIEMAP ({e.strerror}): full read"
    prev = None
    note = "full read (no previous snapshot)"
    if previous_fd is not None:
        try:
            if os.fstat(previous_fd).st_size == size:
                prev = _per_block(fiemap(previous_fd), size, bs)
                note = "incremental (shared extents)"
            else:
                note = "full read (previous snapshot has another size)"
        except OSError as e:
            note = f"full read (previous snapshot unreadable: {e.strerror})"
    out: list[Block] = []
    for i in range(nblocks):
        exts = cur[i]
        if not exts:
            out.append(Block.HOLE)
        elif prev is None or any(x[3] & UNTRUSTED for x in (*exts, *prev[i])):
            out.append(Block.READ)
        elif exts == prev[i]:
            out.append(Block.SAME)
        else:
            n = min(bs, size - i * bs)
            ranges = changed_ranges(exts, prev[i], n)
            to_read = sum(b - a for a, b, read in ranges if read)
            if patches is not None and to_read <= n // 2:
                patches[i] = ranges
                out.append(Block.PATCH)
            else:
                out.append(Block.READ)
    return out, note


def _plan_by_seek(fd: int, size: int, bs: int) -> list[Block]:
    """Holes by SEEK_DATA/SEEK_HOLE, for filesystems without FIEMAP."""
    nblocks = -(-size // bs)
    data = [False] * nblocks
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break  # no data after pos
            return [Block.READ] * nblocks  # no SEEK_DATA either: read everything
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        for b in range(start // bs, -(-end // bs)):
            data[b] = True
        pos = end
    return [Block.READ if d else Block.HOLE for d in data]
