"""Reading chunks back: fetch, decrypt, re-hash (shared by restore, verify and the
archiver's partial reads), and restoring a disk of a restore point to a file."""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from frostpoint.vault.crypto import Chunk
from frostpoint.vault.errors import ChunkMissing, NotInVault, VaultCorrupt
from frostpoint.vault.pacing import Progress, throttled
from frostpoint.vault.repo import Repository, pack_id_of

RESTORE_THREADS = 4


def read_chunk(repo: Repository, cid: bytes, where: dict[str, Any]) -> list[bytes | memoryview]:
    """Fetch, decrypt and re-hash one chunk: its frames' plaintexts, in order; any
    problem -> VaultDataCorrupt."""
    blob, pack_id, details = fetch_sealed(repo, cid, where)
    return check_chunk(repo, cid, pack_id, blob, details)

def fetch_sealed(repo: Repository, cid: bytes, where: dict[str, Any]
                 ) -> tuple[bytes, str, dict[str, Any]]:
    """The sealed bytes of one chunk, its pack id and details for errors."""
    h = cid.hex()
    loc = repo.index.get(cid)
    if loc is None:
        raise ChunkMissing(f"chunk {h} is missing from the vault",
                           {"chunk": h, **where})
    pack_obj, off, length = loc
    pack_id = pack_id_of(pack_obj)
    details = {"chunk": h, "pack": pack_id, **where}
    try:
        blob = repo.backend.get_range(pack_obj, off, length)
    except FileNotFoundError:
        raise ChunkMissing(f"pack {pack_id} of chunk {h} is missing",
                           details) from None
    return blob, pack_id, details

def check_chunk(repo: Repository, cid: bytes, pack_id: str, blob: bytes | memoryview,
                details: dict[str, Any]) -> list[bytes | memoryview]:
    """Decrypt a chunk, take the frames it names from its base, decompress and
    re-hash every frame: the frame plaintexts, in order. The digests must give
    cid. Any problem -> VaultDataCorrupt naming the chunk (and its base)."""
    h = cid.hex()
    keys = repo.keys

    def damaged(what: str) -> VaultCorrupt:
        return VaultCorrupt(f"chunk {h} in pack {pack_id} {what}",
                            details)

    def opened(c: bytes, sealed: bytes | memoryview) -> Chunk:
        try:
            return keys.open_chunk(sealed, c)
        except VaultCorrupt as e:
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
            base_blob, _pack, _ = fetch_sealed(repo, chunk.base, {})
        except VaultCorrupt as e:
            raise damaged(f"needs base chunk {chunk.base.hex()}: {e.detail}") from None
        base = opened(chunk.base, base_blob)
        if base.base is not None or len(base.frames) != len(chunk.frames):
            raise damaged(f"has a base chunk {chunk.base.hex()} of another layout")
    plains: list[bytes | memoryview] = []
    for k, f in enumerate(chunk.frames):
        src = f if f.stored is not None or base is None else base.frames[k]
        where = ("" if src is f or chunk.base is None
                 else f" (kept in base chunk {chunk.base.hex()})")
        try:
            plain = keys.frame_plaintext(src)
        except VaultCorrupt as e:
            raise damaged(f"is damaged: {e.detail} (frame {k}{where})") from None
        if len(plain) != f.raw_len or keys.frame_digest(plain) != f.digest:
            raise damaged(f"is damaged: frame {k} does not match its digest{where}")
        plains.append(plain)
    if keys.id_of_digests(chunk.digests) != cid:
        raise damaged("does not match its id")
    return plains

def restore_disk(repo: Repository, rp_id: str, disk_name: str, target: Path,
                 progress: Progress | None = None) -> None:
    doc = repo.read_manifest(rp_id)
    disk = doc["disks"].get(disk_name)
    if disk is None:
        raise NotInVault(f"restore point {rp_id} has no disk {disk_name}",
                         {"restore_point": rp_id, "disk": disk_name, "disks": sorted(doc["disks"])})
    size, bs, blocks = int(disk["size"]), int(disk["block_size"]), disk["blocks"]
    progress = throttled(progress)
    target = Path(target)
    # Written under another name, renamed when complete: a failed restore never
    # leaves a file that looks like a finished one.
    partial = target.with_name(target.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    pool = ThreadPoolExecutor(RESTORE_THREADS, thread_name_prefix="vault-restore")
    try:
        os.ftruncate(fd, size)  # holes everywhere; zero blocks are never written

        def fetch(cid: bytes, off: int, n: int) -> None:
            frames = read_chunk(
                repo, cid, {"restore_point": rp_id, "disk": disk_name, "offset": off})
            length = sum(map(len, frames))
            if length != n:
                raise VaultCorrupt(f"chunk {cid.hex()} has length {length}, "
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
