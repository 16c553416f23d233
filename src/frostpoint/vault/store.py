"""The vault: deduplicated, encrypted, crash-safe storage of disk images.

Commit order is the whole crash-safety story (docs/vault-format.md):
pack -> its index -> (all packs of a backup) -> manifest. Each step is an atomic put,
and each step only becomes visible to readers through the next one, so a crash at any
moment leaves either a complete restore point or none.
"""

from __future__ import annotations

import functools
import os
import queue
import random
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from frostpoint.errors.catalog import FrostpointError
from frostpoint.vault import extents
from frostpoint.vault import format as fmt
from frostpoint.vault.backend import Backend
from frostpoint.vault.crypto import Chunk, Frame, VaultKeys, frame_spans, table_read_size
from frostpoint.vault.index import ChunkIndex

Progress = Callable[[int, int], None]
# What the pool hands back for one block: chunk id (b"": all zeros), the sealed chunk
# (None: already stored), its base chunk id (None: it has none).
Prepared = tuple[bytes, bytes | None, bytes | None]

# Hash+seal pool size; blake3, zstd and AES-GCM release the GIL, so threads scale.
DEFAULT_THREADS = max(2, min(8, os.cpu_count() or 2))
RESTORE_THREADS = 4
VERIFY_THREADS = 4
# How often a backup asks should_cancel during its block loop, and how often backup
# and restore report progress. The service's callbacks are database queries and
# writes, too dear for every block (a 2 GiB disk has 2048 blocks). The check before
# the manifest and the final progress report are always made.
CANCEL_CHECK_S = 0.05
PROGRESS_EVERY_S = 0.1


@dataclass
class BackupStats:
    bytes_read: int = 0       # bytes read from the disk images
    bytes_scanned: int = 0    # bytes covered so far (read, or known without reading)
    bytes_total: int = 0      # sum of disk sizes
    blocks_total: int = 0
    zero_blocks: int = 0      # all-zero blocks: recorded as null, never stored
    chunks_new: int = 0       # chunks sealed and written by this backup
    chunks_reused: int = 0    # non-zero blocks whose chunk was already stored (dedup)
    bytes_stored: int = 0     # sealed chunk bytes written to packs
    blocks_unchanged: int = 0  # same extents as the previous snapshot: not read
    blocks_hole: int = 0      # holes in the image: not read
    blocks_patched: int = 0   # partly changed: only the frames a change touches read
    duration_s: float = 0.0
    cbt: dict[str, str] = field(default_factory=dict)  # disk -> how blocks were chosen


@dataclass(frozen=True)
class ChunkRef:
    """One place a chunk is used: restore point, disk, byte offset of the block."""

    restore_point: str
    disk: str
    offset: int


@dataclass
class ChunkProblem:
    chunk_id: str              # hex
    pack: str | None           # pack id hex, None if the chunk is in no index
    reason: str
    refs: list[ChunkRef] = field(default_factory=list)


@dataclass
class VerifyReport:
    restore_points: int = 0
    chunks_checked: int = 0
    damaged: list[ChunkProblem] = field(default_factory=list)   # present but bad
    missing: list[ChunkProblem] = field(default_factory=list)   # referenced, not there
    damaged_manifests: list[str] = field(default_factory=list)  # restore point ids
    damaged_indexes: list[str] = field(default_factory=list)    # pack ids

    @property
    def ok(self) -> bool:
        return not (self.damaged or self.missing or self.damaged_manifests
                    or self.damaged_indexes)


# One backup lock per vault id in this process, shared by every Vault object of that
# vault: GC's sweep must exclude backups of the same vault whichever object runs them
# (two objects for one vault each had a lock of their own, so a GC through one could
# delete packs a backup through the other had written but not yet named in a manifest).
_BACKUP_LOCKS: dict[str, threading.Lock] = {}
_BACKUP_LOCKS_GUARD = threading.Lock()


def backup_lock(vault_id: str) -> threading.Lock:
    with _BACKUP_LOCKS_GUARD:
        return _BACKUP_LOCKS.setdefault(vault_id, threading.Lock())


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _pack_id_of(pack_obj: str) -> str:
    return pack_obj.rsplit("/", 1)[-1]


@functools.lru_cache(maxsize=4)
def _zeros(n: int) -> bytes:
    return bytes(n)


def _touched_frames(spans: list[tuple[int, int]], ranges: extents.Ranges) -> list[int]:
    """The frames that a changed range (data or hole) of the block overlaps."""
    return [k for k, (fa, fb) in enumerate(spans) if any(a < fb and b > fa
                                                         for a, b, _read in ranges)]


def _cancelled() -> FrostpointError:
    return FrostpointError("JobCancelled", "the backup was cancelled; no restore point "
                           "was created")


class _Every:
    """Calling it says whether `seconds` have passed since it last said so (the first
    call says yes)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.next_at = float("-inf")

    def __call__(self) -> bool:
        now = time.monotonic()
        if now < self.next_at:
            return False
        self.next_at = now + self.seconds
        return True


def _cancel_check(should_cancel: Callable[[], bool] | None) -> Callable[[], None]:
    """Raises JobCancelled when should_cancel says so, asking at most every
    CANCEL_CHECK_S seconds."""
    due = _Every(CANCEL_CHECK_S)

    def check() -> None:
        if should_cancel is not None and due() and should_cancel():
            raise _cancelled()
    return check


def _throttled(progress: Progress | None) -> Progress | None:
    """progress, called at most every PROGRESS_EVERY_S seconds, and always at the end."""
    if progress is None:
        return None
    due = _Every(PROGRESS_EVERY_S)

    def report(done: int, total: int) -> None:
        if done >= total or due():
            progress(done, total)
    return report


class _PackWriter:
    """Accumulates sealed chunks of one backup into packs; flushes pack, then index."""

    def __init__(self, vault: Vault, stats: BackupStats) -> None:
        self._vault = vault
        self._stats = stats
        # Packs are uploaded by one background thread, so reading and sealing go on
        # while a pack is written; at most one pack waits (bounded memory).
        self._uploads: queue.Queue[tuple[str, bytes, list[fmt.IndexEntry]] | None] = (
            queue.Queue(maxsize=1))
        self._uploading: dict[bytes, None] = {}
        self._error: BaseException | None = None
        self._uploader = threading.Thread(target=self._upload_loop, name="vault-upload",
                                          daemon=True)
        self._uploader.start()
        self._new_pack()

    def _new_pack(self) -> None:
        self.pack_id = secrets.token_hex(16)
        self.buf = bytearray()  # the pack being filled; one copy of each sealed chunk
        self.entries: list[fmt.IndexEntry] = []
        self.size = 0
        # Chunks in the unflushed pack: known for dedup within this backup, but not
        # yet in the vault index (which only holds chunks whose pack+index are durable).
        self.pending: dict[bytes, None] = {}

    def knows(self, cid: bytes) -> bool:
        return cid in self._vault._index or cid in self.pending or cid in self._uploading

    def add(self, cid: bytes, sealed: bytes | None, base: bytes | None = None) -> None:
        if self.knows(cid):
            self._stats.chunks_reused += 1
            return
        if sealed is None:  # cannot happen: a chunk once known stays known
            raise RuntimeError(f"chunk {cid.hex()} vanished from the index")
        if self.size and self.size + len(sealed) > self._vault.config.pack_target_size:
            self.flush()
        self.entries.append((cid, self.size, len(sealed), base))
        self.buf += sealed
        self.pending[cid] = None
        self.size += len(sealed)
        self._stats.chunks_new += 1

    def flush(self) -> None:
        """Hand the current pack to the uploader (waits while one is still queued)."""
        if self._error is not None:
            raise self._error
        if not self.buf:
            return
        self._uploading.update(self.pending)
        # bytearray is bytes-like for every backend; no second copy of the pack.
        self._uploads.put((self.pack_id, self.buf, self.entries))  # type: ignore[arg-type]
        self._new_pack()

    def finish(self) -> None:
        """Flush the last pack and wait until every pack and index is durable."""
        try:
            self.flush()
        finally:
            self._uploads.put(None)
            self._uploader.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Stop uploading (a queued pack is dropped: it was never indexed)."""
        if self._uploader.is_alive():
            if self._error is None:
                self._error = RuntimeError("backup aborted")
            self._uploads.put(None)
            self._uploader.join()

    def _upload_loop(self) -> None:
        v = self._vault
        while (item := self._uploads.get()) is not None:
            if self._error is not None:
                continue  # drain: the backup fails; nothing more is written
            pack_id, data, entries = item
            try:
                pack_obj = fmt.pack_name(pack_id)
                # 1. the pack, durable. Until its index exists nobody will read it.
                v.backend.put(pack_obj, data)
                # 2. its index: from now on later backups dedup against these chunks.
                v.backend.put(fmt.index_name(pack_id), v._keys.seal(
                    fmt.encode_index(entries), fmt.index_aad(pack_id)))
                # Index before uploading is cleared, so a concurrent `knows` never misses.
                for cid, off, length, base in entries:
                    v._index.add(cid, pack_obj, off, length, base)
                    self._uploading.pop(cid, None)
                self._stats.bytes_stored += len(data)
            except BaseException as e:  # noqa: BLE001 - re-raised in the backup's thread
                self._error = e


class Vault:
    """A vault on a Backend. Use Vault.create / Vault.open.

    One backup at a time per vault in a process, whichever Vault object runs it
    (serialized by a lock keyed by vault id, which GC's sweep takes too); restores and
    verify may run alongside. The chunk index is loaded at open; chunks written by another
    process after that are not deduplicated against (harmless: stored again).
    """

    def __init__(self, backend: Backend, keys: VaultKeys, config: fmt.VaultConfig) -> None:
        self.backend = backend
        self.config = config
        self._keys = keys
        # chunk id -> (pack object name, offset, sealed length), and its base chunk
        # (see crypto.Chunk); about 60 bytes per chunk (vault/index.py)
        self._index = ChunkIndex()
        self.damaged_indexes: list[str] = []
        self.threads = DEFAULT_THREADS
        self._backup_lock = backup_lock(config.vault_id)

    # --- create / open ------------------------------------------------------------

    @classmethod
    def create(cls, backend: Backend, master_key: bytes, *,
               pack_target_size: int = fmt.DEFAULT_PACK_TARGET,
               block_size: int = fmt.BLOCK_SIZE) -> Vault:
        keys = VaultKeys(master_key)
        if backend.exists(fmt.CONFIG):
            raise FrostpointError("Conflict", f"a vault already exists at {backend!r}")
        if not 0 < pack_target_size <= fmt.MAX_PACK_TARGET:
            raise FrostpointError("InvalidInput", "pack_target_size must be 1 B to 1 GiB")
        if not fmt.valid_block_size(block_size):
            raise FrostpointError("InvalidInput", "block_size must be a multiple of 4 KiB "
                                  "from 64 KiB to 16 MiB")
        vault_id = secrets.token_hex(16)
        config = fmt.VaultConfig(
            vault_id=vault_id,
            block_size=block_size,
            pack_target_size=pack_target_size,
            created=_now(),
        )
        backend.put(fmt.CONFIG, config.to_bytes(keys))
        return cls(backend, keys, config)

    @classmethod
    def open(cls, backend: Backend, master_key: bytes) -> Vault:
        keys = VaultKeys(master_key)
        try:
            raw = backend.get(fmt.CONFIG)
        except FileNotFoundError:
            raise FrostpointError("NotFound", f"no vault at {backend!r}") from None
        config = fmt.VaultConfig.from_bytes(raw, keys)  # checks key and authenticity
        vault = cls(backend, keys, config)
        vault._load_index()
        return vault

    def _load_index(self) -> None:
        pack_ids = [n[len(fmt.INDEX):] for n in self.backend.list(fmt.INDEX)]
        pack_ids = [p for p in pack_ids if fmt.is_pack_id(p)]

        def load(pack_id: str) -> tuple[str, list[fmt.IndexEntry] | None]:
            try:
                blob = self.backend.get(fmt.index_name(pack_id))
                return pack_id, fmt.decode_index(
                    self._keys.open_sealed(blob, fmt.index_aad(pack_id)))
            except FileNotFoundError:
                return pack_id, []  # deleted since the listing (a GC)
            except FrostpointError:
                return pack_id, None

        loaded: list[tuple[str, list[fmt.IndexEntry]]] = []
        with ThreadPoolExecutor(VERIFY_THREADS) as pool:
            for pack_id, entries in pool.map(load, pack_ids):
                if entries is None:
                    # Not fatal: its chunks are stored again by later backups; verify
                    # reports it, and restore points using them report missing chunks.
                    self.damaged_indexes.append(pack_id)
                    continue
                loaded.append((fmt.pack_name(pack_id), entries))
        # A chunk whose base is in no index is left out (GC keeps bases; this is for
        # a damaged vault): nothing is built on it, and verify reports its users.
        self._index.load(loaded)

    def read_index(self, pack_id: str) -> list[fmt.IndexEntry]:
        """The index of one pack; FileNotFoundError if it has none."""
        blob = self.backend.get(fmt.index_name(pack_id))
        return fmt.decode_index(self._keys.open_sealed(blob, fmt.index_aad(pack_id)))

    def gc(self, grace_seconds: float = 24 * 3600.0) -> Any:
        """Mark and sweep unreferenced packs (see vault/gc.py); returns a GcReport."""
        from frostpoint.vault.gc import collect
        return collect(self, grace_seconds)

    @property
    def vault_id(self) -> str:
        return self.config.vault_id

    def locate_chunk(self, chunk_id: str) -> tuple[str, int, int] | None:
        """(pack id, offset, sealed length) of a chunk (hex id), or None if not stored."""
        loc = self._index.get(bytes.fromhex(chunk_id))
        return None if loc is None else (_pack_id_of(loc[0]), loc[1], loc[2])

    # --- restore points -----------------------------------------------------------

    def list_restore_points(self) -> list[str]:
        names = (n[len(fmt.MANIFESTS):] for n in self.backend.list(fmt.MANIFESTS))
        return sorted(n for n in names if "/" not in n)

    def read_manifest(self, rp_id: str) -> dict[str, Any]:
        fmt.check_rp_id(rp_id)
        try:
            blob = self.backend.get(fmt.manifest_name(rp_id))
        except FileNotFoundError:
            raise FrostpointError("NotFound", f"restore point {rp_id} does not exist",
                                  {"restore_point": rp_id}) from None
        try:
            doc = fmt.decode_manifest(
                self._keys.open_sealed(blob, fmt.manifest_aad(rp_id)))
        except FrostpointError as e:
            raise FrostpointError(
                "VaultDataCorrupt", f"manifest of restore point {rp_id} is damaged: "
                f"{e.detail}", {"restore_point": rp_id}) from None
        if doc.get("id") != rp_id:
            raise FrostpointError("VaultDataCorrupt",
                                  f"manifest of restore point {rp_id} names another id",
                                  {"restore_point": rp_id})
        return doc

    def delete_restore_point(self, rp_id: str) -> None:
        """Delete the manifest only; unreferenced chunks are reclaimed by a later GC."""
        fmt.check_rp_id(rp_id)
        name = fmt.manifest_name(rp_id)
        if not self.backend.exists(name):
            raise FrostpointError("NotFound", f"restore point {rp_id} does not exist",
                                  {"restore_point": rp_id})
        self.backend.delete(name)

    # --- backup -------------------------------------------------------------------

    def backup(self, rp_id: str, disks: Mapping[str, Path],
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
            raise FrostpointError("InvalidInput", "a backup needs at least one disk")
        for name in disks:
            if not isinstance(name, str) or not name:
                raise FrostpointError("InvalidInput", f"invalid disk name {name!r}")
        labels = dict(labels or {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise FrostpointError("InvalidInput", "labels must map strings to strings")

        with self._backup_lock:
            if self.backend.exists(fmt.manifest_name(rp_id)):
                raise FrostpointError("Conflict", f"restore point {rp_id} already exists",
                                      {"restore_point": rp_id})
            t0 = time.monotonic()
            stats = BackupStats()
            fds: dict[str, int] = {}
            writer: _PackWriter | None = None
            pool = ThreadPoolExecutor(self.threads, thread_name_prefix="vault-seal")
            try:
                sizes: dict[str, int] = {}
                for name, path in disks.items():
                    try:
                        fds[name] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                    except FileNotFoundError:
                        raise FrostpointError(
                            "NotFound", f"disk {name}: image {path} does not exist",
                            {"disk": name}) from None
                    sizes[name] = os.lseek(fds[name], 0, os.SEEK_END)  # works for devices
                stats.bytes_total = sum(sizes.values())
                writer = _PackWriter(self, stats)
                cancel_check = _cancel_check(should_cancel)
                progress = _throttled(progress)
                manifest_disks: dict[str, Any] = {}
                for name in disks:
                    prev = self._previous_blocks(name, sizes[name], previous, stats)
                    blocks = self._backup_disk(pool, writer, stats, name, fds[name],
                                               sizes[name], progress, cancel_check, prev)
                    manifest_disks[name] = {"size": sizes[name],
                                            "block_size": self.config.block_size,
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
                "vault_id": self.vault_id,
                "created": _now(),
                "labels": labels,
                "disks": manifest_disks,
            }
            # 3. the manifest, last: the restore point exists from this put on.
            self.backend.put(fmt.manifest_name(rp_id),
                             self._keys.seal(fmt.encode_manifest(doc),
                                             fmt.manifest_aad(rp_id)))
            stats.duration_s = time.monotonic() - t0
            return stats

    def _prepare(self, writer: _PackWriter, data: bytes) -> Prepared:
        # Runs in the pool. Skip sealing for chunks already stored; a duplicate that
        # races in flight is sealed twice and dropped by writer.add (rare, harmless).
        digests = self._keys.frame_digests(data)
        cid = self._keys.id_of_digests(digests)
        if writer.knows(cid):
            return cid, None, None
        return cid, self._keys.seal_chunk(cid, self._keys.encode_block(data, digests)), None

    def _previous_blocks(self, name: str, size: int,
                         previous: Mapping[str, tuple[Path, str]] | None,
                         stats: BackupStats) -> tuple[int, list[str | None]] | None:
        """The previous snapshot (open fd) and its manifest's blocks, if trustworthy."""
        if not previous or name not in previous:
            return None
        path, prev_rp = previous[name]
        try:
            disk = self.read_manifest(prev_rp)["disks"].get(name)
        except FrostpointError as e:
            stats.cbt[name] = f"full read (previous restore point unusable: {e.code})"
            return None
        if disk is None or int(disk["size"]) != size or int(
                disk["block_size"]) != self.config.block_size:
            stats.cbt[name] = "full read (previous restore point has another layout)"
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            stats.cbt[name] = f"full read (previous snapshot gone: {e.strerror})"
            return None
        return fd, list(disk["blocks"])

    def _read_block(self, writer: _PackWriter, fd: int, off: int, n: int,
                    disk: str) -> Prepared:
        """A block read whole: all zeros (b"") or prepared. Runs in the pool."""
        data = self._pread(fd, n, off, disk)
        if data == _zeros(n):  # a memcmp
            return b"", None, None
        return self._prepare(writer, data)

    def _previous_chunk(self, cid: bytes, n: int
                        ) -> tuple[bytes, list[Frame], list[bool | None]]:
        """What a block built on the previous chunk cid (n bytes) needs of it: the base
        to name (cid itself, or its base), the frames as the new chunk keeps them
        (stored None: named in that base), and whether each frame compressed (None:
        unknown). A chunk without a base costs one ranged read of its table; one with
        a base is read whole, to copy the frames it stores. Its digests must give cid."""
        keys = self._keys
        if self._index.base(cid) is not None:
            blob, _pack, _details = self._fetch_sealed(cid, {})
            chunk = keys.open_chunk(blob, cid)
            if chunk.base is None:
                raise FrostpointError("VaultDataCorrupt", f"chunk {cid.hex()} has no base")
            base, frames = chunk.base, chunk.frames
            hints: list[bool | None] = [f.compressed if f.stored is not None else None
                                        for f in frames]
        else:
            pack_obj, off, length = self._index[cid]
            try:
                head = self.backend.get_range(pack_obj, off, min(length, table_read_size(n)))
            except FileNotFoundError:
                raise FrostpointError("VaultDataCorrupt", f"pack of chunk {cid.hex()} is "
                                      "missing") from None
            base_of_it, rows, _ = keys.open_table(head, cid)
            if base_of_it is not None:
                raise FrostpointError("VaultDataCorrupt", f"chunk {cid.hex()} has a base "
                                      "its index does not name")
            base = cid
            frames = [Frame(r.raw_len, r.digest, None) for r in rows]
            hints = [r.stored_len < r.raw_len for r in rows]
        if keys.id_of_digests([f.digest for f in frames]) != cid or base not in self._index:
            raise FrostpointError("VaultDataCorrupt", f"chunk {cid.hex()} cannot be built on")
        return base, frames, hints

    def _prepare_patch(self, writer: _PackWriter, fd: int, off: int, n: int,
                       prev_cid: bytes | None, ranges: extents.Ranges,
                       disk: str) -> Prepared:
        """A partly changed block: the frames a changed range touches are read from the
        disk, hashed and compressed; every other frame is named in the base chunk (the
        previous chunk, or its base), which is not read. Over a zero block, the other
        frames are zero frames. Runs in the pool."""
        keys = self._keys
        spans = frame_spans(n)
        base: bytes | None = None
        hints: list[bool | None] = [None] * len(spans)
        if prev_cid is None:
            frames = [keys.zero_frame(b - a) for a, b in spans]
        else:
            try:
                base, frames, hints = self._previous_chunk(prev_cid, n)
            except FrostpointError:
                frames = []  # a damaged previous chunk: never build on it
            if [f.raw_len for f in frames] != [b - a for a, b in spans]:
                return self._prepare(writer, self._pread(fd, n, off, disk))  # read whole
        touched = _touched_frames(spans, ranges)
        for k in touched:
            fa, fb = spans[k]
            raw = self._pread(fd, fb - fa, off + fa, disk)
            frames[k] = Frame(fb - fa, keys.frame_digest(raw), raw)  # encoded if new
        if all(f.digest == keys.zero_frame(f.raw_len).digest for f in frames):
            return b"", None, None  # became all zeros: recorded as a zero block
        cid = keys.id_of_digests([f.digest for f in frames])
        if writer.knows(cid):
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
            raise FrostpointError("BackUpOperationFailed",
                                  f"disk {disk} shrank while it was read", {"disk": disk})
        return data

    def _backup_disk(self, pool: ThreadPoolExecutor, writer: _PackWriter,
                     stats: BackupStats, name: str, fd: int, size: int,
                     progress: Progress | None,
                     cancel_check: Callable[[], None],
                     prev: tuple[int, list[str | None]] | None = None) -> list[str | None]:
        bs = self.config.block_size
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
        limit = 2 * self.threads
        inflight: deque[tuple[int, int, int, Future[Prepared] | None]] = deque()

        def drain_one() -> None:
            i, n, read, fut = inflight.popleft()
            if fut is not None:
                cid, sealed, base = fut.result()
                if cid == b"":  # a patched block that became all zeros
                    stats.zero_blocks += 1
                else:
                    writer.add(cid, sealed, base)
                    blocks[i] = cid.hex()
            stats.bytes_read += read
            stats.bytes_scanned += n
            if progress is not None:
                progress(stats.bytes_scanned, stats.bytes_total)

        for i in range(nblocks):
            cancel_check()
            off = i * bs
            n = min(bs, size - off)
            if plan[i] is extents.Block.HOLE:
                stats.blocks_hole += 1
                stats.zero_blocks += 1
                inflight.append((i, n, 0, None))
                continue
            if plan[i] is extents.Block.SAME:
                h = prev_blocks[i]
                if h is None or bytes.fromhex(h) in self._index:
                    stats.blocks_unchanged += 1
                    if h is None:
                        stats.zero_blocks += 1
                    else:
                        stats.chunks_reused += 1
                    blocks[i] = h
                    inflight.append((i, n, 0, None))
                    continue
            prev_cid = bytes.fromhex(prev_blocks[i]) if prev_blocks and prev_blocks[
                i] is not None else None
            if plan[i] is extents.Block.PATCH and (prev_cid is None or prev_cid in self._index):
                ranges = patches[i]
                spans = frame_spans(n)
                read = sum(spans[k][1] - spans[k][0] for k in _touched_frames(spans, ranges))
                stats.blocks_patched += 1
                inflight.append((i, n, read, pool.submit(
                    self._prepare_patch, writer, fd, off, n, prev_cid, ranges, name)))
                while len(inflight) > limit:
                    drain_one()
                continue
            # Read in the pool too: two reads in flight, overlapping compression.
            inflight.append((i, n, n, pool.submit(self._read_block, writer, fd, off, n, name)))
            while len(inflight) > limit:
                drain_one()
        while inflight:
            drain_one()
        return blocks

    # --- restore ------------------------------------------------------------------

    def _read_chunk(self, cid: bytes, where: dict[str, Any]) -> list[bytes | memoryview]:
        """Fetch, decrypt and re-hash one chunk: its frames' plaintexts, in order; any
        problem -> VaultDataCorrupt."""
        blob, pack_id, details = self._fetch_sealed(cid, where)
        return self._check_chunk(cid, pack_id, blob, details)

    def _fetch_sealed(self, cid: bytes, where: dict[str, Any]
                      ) -> tuple[bytes, str, dict[str, Any]]:
        """The sealed bytes of one chunk, its pack id and details for errors."""
        h = cid.hex()
        loc = self._index.get(cid)
        if loc is None:
            raise FrostpointError("VaultDataCorrupt", f"chunk {h} is missing from the vault",
                                  {"chunk": h, **where})
        pack_obj, off, length = loc
        pack_id = _pack_id_of(pack_obj)
        details = {"chunk": h, "pack": pack_id, **where}
        try:
            blob = self.backend.get_range(pack_obj, off, length)
        except FileNotFoundError:
            raise FrostpointError("VaultDataCorrupt", f"pack {pack_id} of chunk {h} is missing",
                                  details) from None
        return blob, pack_id, details

    def _check_chunk(self, cid: bytes, pack_id: str, blob: bytes | memoryview,
                     details: dict[str, Any]) -> list[bytes | memoryview]:
        """Decrypt a chunk, take the frames it names from its base, decompress and
        re-hash every frame: the frame plaintexts, in order. The digests must give
        cid. Any problem -> VaultDataCorrupt naming the chunk (and its base)."""
        h = cid.hex()
        keys = self._keys

        def damaged(what: str) -> FrostpointError:
            return FrostpointError("VaultDataCorrupt", f"chunk {h} in pack {pack_id} {what}",
                                   details)

        def opened(c: bytes, sealed: bytes | memoryview) -> Chunk:
            try:
                return keys.open_chunk(sealed, c)
            except FrostpointError as e:
                what = e.detail.removeprefix("sealed object ")  # failed authentication..
                if what == e.detail:
                    what = f"is damaged: {what}"
                if c != cid:
                    what = f"has a damaged base chunk {c.hex()}: {what}"
                raise damaged(what) from None

        chunk = opened(cid, blob)
        base: Chunk | None = None
        if chunk.base is not None:
            try:
                base_blob, _pack, _ = self._fetch_sealed(chunk.base, {})
            except FrostpointError as e:
                raise damaged(f"needs base chunk {chunk.base.hex()}: {e.detail}") from None
            base = opened(chunk.base, base_blob)
            if base.base is not None or len(base.frames) != len(chunk.frames):
                raise damaged(f"has a base chunk {chunk.base.hex()} of another layout")
        plains: list[bytes | memoryview] = []
        for k, f in enumerate(chunk.frames):
            src = f if f.stored is not None or base is None else base.frames[k]
            where = "" if src is f else f" (kept in base chunk {chunk.base.hex()})"
            try:
                plain = keys.frame_plaintext(src)
            except FrostpointError as e:
                raise damaged(f"is damaged: {e.detail} (frame {k}{where})") from None
            if len(plain) != f.raw_len or keys.frame_digest(plain) != f.digest:
                raise damaged(f"is damaged: frame {k} does not match its digest{where}")
            plains.append(plain)
        if keys.id_of_digests(chunk.digests) != cid:
            raise damaged("does not match its id")
        return plains

    def restore_disk(self, rp_id: str, disk_name: str, target: Path,
                     progress: Progress | None = None) -> None:
        doc = self.read_manifest(rp_id)
        disk = doc["disks"].get(disk_name)
        if disk is None:
            raise FrostpointError(
                "NotFound", f"restore point {rp_id} has no disk {disk_name}",
                {"restore_point": rp_id, "disk": disk_name, "disks": sorted(doc["disks"])})
        size, bs, blocks = int(disk["size"]), int(disk["block_size"]), disk["blocks"]
        progress = _throttled(progress)
        target = Path(target)
        # Written under another name, renamed when complete: a failed restore never
        # leaves a file that looks like a finished one.
        partial = target.with_name(target.name + ".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        pool = ThreadPoolExecutor(RESTORE_THREADS, thread_name_prefix="vault-restore")
        try:
            os.ftruncate(fd, size)  # holes everywhere; zero blocks are never written

            def fetch(cid: bytes, off: int, n: int) -> None:
                frames = self._read_chunk(
                    cid, {"restore_point": rp_id, "disk": disk_name, "offset": off})
                length = sum(map(len, frames))
                if length != n:
                    raise FrostpointError(
                        "VaultDataCorrupt", f"chunk {cid.hex()} has length {length}, "
                        f"block at {off} needs {n}", {"chunk": cid.hex(), "offset": off})
                while frames:  # pwritev: no joined copy of the block
                    wrote = os.pwritev(fd, frames, off)
                    off += wrote
                    while frames and wrote >= len(frames[0]):
                        wrote -= len(frames.pop(0))
                    if frames and wrote:
                        frames[0] = frames[0][wrote:]

            done = 0
            inflight: deque[tuple[int, Future[None]]] = deque()
            for i, h in enumerate(blocks):
                off = i * bs
                n = min(bs, size - off)
                if h is None:
                    done += n
                    if progress is not None:
                        progress(done, size)
                    continue
                inflight.append((n, pool.submit(fetch, bytes.fromhex(h), off, n)))
                while len(inflight) > 2 * RESTORE_THREADS or (
                        inflight and inflight[0][1].done()):
                    n0, fut = inflight.popleft()
                    fut.result()
                    done += n0
                    if progress is not None:
                        progress(done, size)
            while inflight:
                n0, fut = inflight.popleft()
                fut.result()
                done += n0
                if progress is not None:
                    progress(done, size)
            os.fsync(fd)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            os.close(fd)
            try:
                os.unlink(partial)
            except FileNotFoundError:
                pass
            raise
        pool.shutdown(wait=True)
        os.close(fd)
        os.replace(partial, target)
        dfd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    # --- verify -------------------------------------------------------------------

    def verify(self, progress: Progress | None = None, sample: float = 100.0) -> VerifyReport:
        """Read every manifest and every chunk they reference; decrypt and re-hash.

        sample: the percentage of chunks to re-read (chosen at random); manifests and
        indexes are always all read. progress(chunks_done, chunks_total). Never raises
        for damaged data: reports it.
        """
        report = VerifyReport(damaged_indexes=list(self.damaged_indexes))
        # chunk id -> places it is used (compact tuples; ChunkRef only for problems)
        refs: dict[bytes, list[tuple[str, str, int]]] = {}
        for rp in self.list_restore_points():
            try:
                doc = self.read_manifest(rp)
            except FrostpointError as e:
                if e.code == "VaultDataCorrupt":
                    report.damaged_manifests.append(rp)
                continue  # NotFound: deleted meanwhile; InvalidInput: foreign name
            report.restore_points += 1
            for disk_name, disk in doc["disks"].items():
                bs = int(disk["block_size"])
                for i, h in enumerate(disk["blocks"]):
                    if h is not None:
                        refs.setdefault(bytes.fromhex(h), []).append((rp, disk_name, i * bs))

        def problem(cid: bytes, pack: str | None, reason: str) -> ChunkProblem:
            return ChunkProblem(cid.hex(), pack, reason,
                                [ChunkRef(*r) for r in refs[cid]])

        if sample < 100.0:
            rng = random.Random()
            refs = {c: r for c, r in refs.items() if rng.random() * 100.0 < sample}
        by_pack: dict[str, list[bytes]] = {}
        for cid in refs:
            loc = self._index.get(cid)
            if loc is None:
                base = self._index.orphans.get(cid)
                report.missing.append(problem(cid, None, "chunk is in no index" if base is None
                                              else f"its base chunk {base.hex()} is in no index"))
            else:
                by_pack.setdefault(loc[0], []).append(cid)

        def check_pack(pack_obj: str) -> tuple[list[ChunkProblem], list[ChunkProblem]]:
            damaged: list[ChunkProblem] = []
            missing: list[ChunkProblem] = []
            pack_id = _pack_id_of(pack_obj)
            try:
                data = self.backend.get(pack_obj)  # one GET per pack, not per chunk
            except FileNotFoundError:
                return [], [problem(c, pack_id, "pack is missing") for c in by_pack[pack_obj]]
            for cid in by_pack[pack_obj]:
                _, off, length = self._index[cid]
                try:
                    self._check_chunk(cid, pack_id, data[off:off + length], {})
                except FrostpointError as e:
                    damaged.append(problem(cid, pack_id, e.detail))
            return damaged, missing

        total = len(refs)
        done = len(report.missing)
        with ThreadPoolExecutor(VERIFY_THREADS, thread_name_prefix="vault-verify") as pool:
            for pack_obj, (damaged, missing) in zip(
                    by_pack, pool.map(check_pack, by_pack), strict=True):
                report.damaged += damaged
                report.missing += missing
                done += len(by_pack[pack_obj])
                if progress is not None:
                    progress(done, total)
        report.chunks_checked = total
        report.damaged.sort(key=lambda p: p.chunk_id)
        report.missing.sort(key=lambda p: p.chunk_id)
        return report


def destroy(backend: Backend) -> int:
    """Delete the vault objects at backend (the names the format writes, nothing else:
    a foreign file in the location survives); returns how many. `config` goes last, so a
    delete that stops half way still leaves a location that reads as a vault."""
    names = [n for n in backend.list("") if fmt.is_vault_object(n)]
    names.sort(key=lambda n: n == fmt.CONFIG)
    for name in names:
        backend.delete(name)
    return len(names)
