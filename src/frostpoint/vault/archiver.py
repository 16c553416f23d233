"""The backup pipeline: read the disk images (only the blocks that changed, when a
previous snapshot is given), hash and seal chunks in a pool, hand them to the pack
writer, and commit the manifest last (docs/vault-format.md)."""

from __future__ import annotations

import functools
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from frostpoint.vault import extents
from frostpoint.vault import format as fmt
from frostpoint.vault.crypto import Frame, frame_spans, table_read_size
from frostpoint.vault.errors import (
    AlreadyExists,
    Cancelled,
    DiskReadFailed,
    InvalidRequest,
    NotInVault,
    VaultCorrupt,
    VaultError,
)
from frostpoint.vault.pacing import Progress, cancel_check, throttled
from frostpoint.vault.packer import PackWriter
from frostpoint.vault.repo import Repository, now_iso
from frostpoint.vault.reports import BackupStats
from frostpoint.vault.restorer import fetch_sealed

# What the pool hands back for one block: chunk id (b"": all zeros), the sealed chunk
# (None: already stored), its base chunk id (None: it has none).
Prepared = tuple[bytes, bytes | None, bytes | None]


@functools.lru_cache(maxsize=4)
def _zeros(n: int) -> bytes:
    return bytes(n)


def _touched_frames(spans: list[tuple[int, int]], ranges: extents.Ranges) -> list[int]:
    """The frames that a changed range (data or hole) of the block overlaps."""
    return [k for k, (fa, fb) in enumerate(spans) if any(a < fb and b > fa
                                                         for a, b, _read in ranges)]


def _cancelled() -> Cancelled:
    return Cancelled("the backup was cancelled; no restore point was created")


def backup(repo: Repository, rp_id: str, disks: Mapping[str, Path],
           labels: dict[str, str] | None = None,
           progress: Progress | None = None,
           should_cancel: Callable[[], bool] | None = None,
           previous: Mapping[str, tuple[Path, str]] | None = None) -> BackupStats:
    """Back up disk images as restore point rp_id.

    previous maps a disk to (its previous snapshot image, that snapshot's restore
    point in this vault): blocks whose extents both images share are not read, and
    reuse the previous manifest's chunk (changed-block tracking).
    """
    fmt.check_rp_id(rp_id)
    if not disks:
        raise InvalidRequest("a backup needs at least one disk")
    for name in disks:
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"invalid disk name {name!r}")
    labels = dict(labels or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise InvalidRequest("labels must map strings to strings")

    with repo.backup_lock:
        if repo.backend.exists(fmt.manifest_name(rp_id)):
            raise AlreadyExists(f"restore point {rp_id} already exists",
                                {"restore_point": rp_id})
        t0 = time.monotonic()
        stats = BackupStats()
        fds: dict[str, int] = {}
        writer: PackWriter | None = None
        pool = ThreadPoolExecutor(repo.threads, thread_name_prefix="vault-seal")
        try:
            sizes: dict[str, int] = {}
            for name, path in disks.items():
                try:
                    fds[name] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    raise NotInVault(f"disk {name}: image {path} does not exist",
                                     {"disk": name}) from None
                sizes[name] = os.lseek(fds[name], 0, os.SEEK_END)  # works for devices
            stats.bytes_total = sum(sizes.values())
            writer = PackWriter(repo, stats)
            archiver = Archiver(repo, writer)
            check = cancel_check(should_cancel, _cancelled)
            progress = throttled(progress)
            manifest_disks: dict[str, Any] = {}
            for name in disks:
                prev = archiver.previous_blocks(name, sizes[name], previous, stats)
                blocks = archiver.backup_disk(pool, stats, name, fds[name], sizes[name],
                                              progress, check, prev)
                manifest_disks[name] = {"size": sizes[name],
                                        "block_size": repo.config.block_size,
                                        "blocks": blocks}
            writer.finish()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        finally:
            # On error/cancel: drop queued work, wait for running workers.
            pool.shutdown(wait=True, cancel_futures=True)
            for fd in fds.values():
                os.close(fd)

        if should_cancel is not None and should_cancel():
            raise _cancelled()
        doc = {
            "version": fmt.FORMAT_VERSION,
            "id": rp_id,
            "vault_id": repo.vault_id,
            "created": now_iso(),
            "labels": labels,
            "disks": manifest_disks,
        }
        # 3. the manifest, last: the restore point exists from this put on.
        repo.backend.put(fmt.manifest_name(rp_id),
                         repo.keys.seal(fmt.encode_manifest(doc),
                                         fmt.manifest_aad(rp_id)))
        stats.duration_s = time.monotonic() - t0
        return stats


class Archiver:
    """The block pipeline of one backup: which blocks to read, and how each becomes a
    chunk (whole, patched on its previous chunk, or reused), handed to the pack writer."""

    def __init__(self, repo: Repository, writer: PackWriter) -> None:
        self.repo = repo
        self.writer = writer

    def prepare(self, data: bytes) -> Prepared:
        # Runs in the pool. Skip sealing for chunks already stored; a duplicate that
        # races in flight is sealed twice and dropped by writer.add (rare, harmless).
        digests = self.repo.keys.frame_digests(data)
        cid = self.repo.keys.id_of_digests(digests)
        if self.writer.knows(cid):
            return cid, None, None
        return cid, self.repo.keys.seal_chunk(cid, self.repo.keys.encode_block(data, digests)), None

    def previous_blocks(self, name: str, size: int,
                         previous: Mapping[str, tuple[Path, str]] | None,
                         stats: BackupStats) -> tuple[int, list[str | None]] | None:
        """The previous snapshot (open fd) and its manifest's blocks, if trustworthy."""
        if not previous or name not in previous:
            return None
        path, prev_rp = previous[name]
        try:
            disk = self.repo.read_manifest(prev_rp)["disks"].get(name)
        except VaultError as e:
            stats.cbt[name] = f"full read (previous restore point unusable: {e.detail})"
            return None
        if disk is None or int(disk["size"]) != size or int(
                disk["block_size"]) != self.repo.config.block_size:
            stats.cbt[name] = "full read (previous restore point has another layout)"
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            stats.cbt[name] = f"full read (previous snapshot gone: {e.strerror})"
            return None
        return fd, list(disk["blocks"])

    def read_block(self, fd: int, off: int, n: int, disk: str) -> Prepared:
        """A block read whole: all zeros (b"") or prepared. Runs in the pool."""
        data = self._pread(fd, n, off, disk)
        if data == _zeros(n):  # a memcmp
            return b"", None, None
        return self.prepare(data)

    def previous_chunk(self, cid: bytes, n: int
                        ) -> tuple[bytes, list[Frame], list[bool | None]]:
        """What a block built on the previous chunk cid (n bytes) needs of it: the base
        to name (cid itself, or its base), the frames as the new chunk keeps them
        (stored None: named in that base), and whether each frame compressed (None:
        unknown). A chunk without a base costs one ranged read of its table; one with
        a base is read whole, to copy the frames it stores. Its digests must give cid."""
        keys = self.repo.keys
        if self.repo.index.base(cid) is not None:
            blob, _pack, _details = fetch_sealed(self.repo, cid, {})
            chunk = keys.open_chunk(blob, cid)
            if chunk.base is None:
                raise VaultCorrupt(f"chunk {cid.hex()} has no base")
            base, frames = chunk.base, chunk.frames
            hints: list[bool | None] = [f.compressed if f.stored is not None else None
                                        for f in frames]
        else:
            pack_obj, off, length = self.repo.index[cid]
            try:
                head = self.repo.backend.get_range(pack_obj, off, min(length, table_read_size(n)))
            except FileNotFoundError:
                raise VaultCorrupt(f"pack of chunk {cid.hex()} is "
                                   "missing") from None
            base_of_it, rows, _ = keys.open_table(head, cid)
            if base_of_it is not None:
                raise VaultCorrupt(f"chunk {cid.hex()} has a base "
                                   "its index does not name")
            base = cid
            frames = [Frame(r.raw_len, r.digest, None) for r in rows]
            hints = [r.stored_len < r.raw_len for r in rows]
        if keys.id_of_digests([f.digest for f in frames]) != cid or base not in self.repo.index:
            raise VaultCorrupt(f"chunk {cid.hex()} cannot be built on")
        return base, frames, hints

    def prepare_patch(self, fd: int, off: int, n: int,
                      prev_cid: bytes | None, ranges: extents.Ranges,
                       disk: str) -> Prepared:
        """A partly changed block: the frames a changed range touches are read from the
        disk, hashed and compressed; every other frame is named in the base chunk (the
        previous chunk, or its base), which is not read. Over a zero block, the other
        frames are zero frames. Runs in the pool."""
        keys = self.repo.keys
        spans = frame_spans(n)
        base: bytes | None = None
        hints: list[bool | None] = [None] * len(spans)
        if prev_cid is None:
            frames = [keys.zero_frame(b - a) for a, b in spans]
        else:
            try:
                base, frames, hints = self.previous_chunk(prev_cid, n)
            except VaultCorrupt:
                frames = []  # a damaged previous chunk: never build on it
            if [f.raw_len for f in frames] != [b - a for a, b in spans]:
                return self.prepare(self._pread(fd, n, off, disk))  # read whole
        touched = _touched_frames(spans, ranges)
        for k in touched:
            fa, fb = spans[k]
            raw = self._pread(fd, fb - fa, off + fa, disk)
            frames[k] = Frame(fb - fa, keys.frame_digest(raw), raw)  # encoded if new
        if all(f.digest == keys.zero_frame(f.raw_len).digest for f in frames):
            return b"", None, None  # became all zeros: recorded as a zero block
        cid = keys.id_of_digests([f.digest for f in frames])
        if self.writer.knows(cid):
            return cid, None, None
        for k in touched:
            f = frames[k]
            assert f.stored is not None
            frames[k] = keys.encode_frame(f.stored, f.digest, hints[k])
        if all(f.stored is not None for f in frames):
            base = None  # every frame is stored here: the chunk needs no base
        return cid, keys.seal_chunk(cid, frames, base), base

    @staticmethod
    def _pread(fd: int, n: int, off: int, disk: str) -> bytes:
        data = os.pread(fd, n, off)
        if len(data) != n:
            raise DiskReadFailed(f"disk {disk} shrank while it was read", {"disk": disk})
        return data

    def backup_disk(self, pool: ThreadPoolExecutor, stats: BackupStats, name: str, fd: int,
                    size: int, progress: Progress | None, check: Callable[[], None],
                    prev: tuple[int, list[str | None]] | None = None) -> list[str | None]:
        bs = self.repo.config.block_size
        nblocks = -(-size // bs)
        blocks: list[str | None] = [None] * nblocks
        stats.blocks_total += nblocks
        patches: dict[int, extents.Ranges] = {}
        try:
            plan, note = extents.plan(fd, size, bs, prev[0] if prev else None, patches)
        finally:
            if prev:
                os.close(prev[0])
        stats.cbt.setdefault(name, note)
        prev_blocks = prev[1] if prev else []
        # Bounded look-ahead: at most `limit` blocks (plus their sealed form) in memory,
        # whatever the disk size. Results are consumed in order, so packs are laid out
        # in disk order.
        limit = 2 * self.repo.threads
        inflight: deque[tuple[int, int, int, Future[Prepared] | None]] = deque()

        def drain_one() -> None:
            i, n, read, fut = inflight.popleft()
            if fut is not None:
                cid, sealed, base = fut.result()
                if cid == b"":  # a patched block that became all zeros
                    stats.zero_blocks += 1
                else:
                    if base is None and sealed is not None and not self.writer.knows(cid):
                        stats.plain_bytes_new += n
                        stats.sealed_bytes_new += len(sealed)
                    self.writer.add(cid, sealed, base)
                    blocks[i] = cid.hex()
            stats.bytes_read += read
            stats.bytes_scanned += n
            if progress is not None:
                progress(stats.bytes_scanned, stats.bytes_total)

        for i in range(nblocks):
            check()
            off = i * bs
            n = min(bs, size - off)
            if plan[i] is extents.Block.HOLE:
                stats.blocks_hole += 1
                stats.zero_blocks += 1
                inflight.append((i, n, 0, None))
                continue
            if plan[i] is extents.Block.SAME:
                h = prev_blocks[i]
                if h is None or bytes.fromhex(h) in self.repo.index:
                    stats.blocks_unchanged += 1
                    if h is None:
                        stats.zero_blocks += 1
                    else:
                        stats.chunks_reused += 1
                    blocks[i] = h
                    inflight.append((i, n, 0, None))
                    continue
            prev_hex = prev_blocks[i] if prev_blocks else None
            prev_cid = bytes.fromhex(prev_hex) if prev_hex is not None else None
            if plan[i] is extents.Block.PATCH and (prev_cid is None or prev_cid in self.repo.index):
                ranges = patches[i]
                spans = frame_spans(n)
                read = sum(spans[k][1] - spans[k][0] for k in _touched_frames(spans, ranges))
                stats.blocks_patched += 1
                inflight.append((i, n, read, pool.submit(
                    self.prepare_patch, fd, off, n, prev_cid, ranges, name)))
                while len(inflight) > limit:
                    drain_one()
                continue
            # Read in the pool too: two reads in flight, overlapping compression.
            inflight.append((i, n, n, pool.submit(self.read_block, fd, off, n, name)))
            while len(inflight) > limit:
                drain_one()
        while inflight:
            drain_one()
        return blocks
