"""Verify: read every manifest and the chunks they reference, decrypt and re-hash;
report what is damaged or missing, with every place it is used."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from frostpoint.vault.errors import Cancelled, InvalidRequest, NotInVault, VaultCorrupt
from frostpoint.vault.pacing import Progress, cancel_check, throttled
from frostpoint.vault.repo import Repository, pack_id_of
from frostpoint.vault.reports import ChunkProblem, ChunkRef, VerifyReport
from frostpoint.vault.restorer import check_chunk

VERIFY_THREADS = 4


def _cancelled() -> Cancelled:
    return Cancelled("the verify was cancelled; nothing was changed")


def verify(repo: Repository, progress: Progress | None = None, sample: float = 100.0,
           should_cancel: Callable[[], bool] | None = None) -> VerifyReport:
    """Read every manifest and every chunk they reference; decrypt and re-hash.

    sample: the percentage of chunks to re-read (chosen at random); manifests and
    indexes are always all read. progress(chunks_done, chunks_total). Never raises
    for damaged data: reports it.
    """
    check = cancel_check(should_cancel, _cancelled)
    progress = throttled(progress)
    report = VerifyReport(damaged_indexes=list(repo.damaged_indexes))
    # chunk id -> places it is used (compact tuples; ChunkRef only for problems)
    refs: dict[bytes, list[tuple[str, str, int]]] = {}
    for rp in repo.list_restore_points():
        check()
        try:
            doc = repo.read_manifest(rp)
        except VaultCorrupt:
            report.damaged_manifests.append(rp)
            continue
        except (NotInVault, InvalidRequest):
            continue  # deleted meanwhile; a foreign name
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
        loc = repo.index.get(cid)
        if loc is None:
            base = repo.index.orphans.get(cid)
            report.missing.append(problem(cid, None, "chunk is in no index" if base is None
                                          else f"its base chunk {base.hex()} is in no index"))
        else:
            by_pack.setdefault(loc[0], []).append(cid)

    def check_pack(pack_obj: str) -> tuple[list[ChunkProblem], list[ChunkProblem]]:
        damaged: list[ChunkProblem] = []
        missing: list[ChunkProblem] = []
        pack_id = pack_id_of(pack_obj)
        if stop.is_set():
            return [], []  # cancelled: the result is never used
        try:
            data = repo.backend.get(pack_obj)  # one GET per pack, not per chunk
        except FileNotFoundError:
            return [], [problem(c, pack_id, "pack is missing") for c in by_pack[pack_obj]]
        for cid in by_pack[pack_obj]:
            _, off, length = repo.index[cid]
            try:
                check_chunk(repo, cid, pack_id, data[off:off + length], {})
            except VaultCorrupt as e:
                damaged.append(problem(cid, pack_id, e.detail))
        return damaged, missing

    total = len(refs)
    done = len(report.missing)
    stop = threading.Event()
    pool = ThreadPoolExecutor(VERIFY_THREADS, thread_name_prefix="vault-verify")
    try:
        for pack_obj, (damaged, missing) in zip(
                by_pack, pool.map(check_pack, by_pack), strict=True):
            check()
            report.damaged += damaged
            report.missing += missing
            done += len(by_pack[pack_obj])
            if progress is not None:
                progress(done, total)
    except BaseException:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if progress is not None:
        progress(total, total)
    report.chunks_checked = total
    report.damaged.sort(key=lambda p: p.chunk_id)
    report.missing.sort(key=lambda p: p.chunk_id)
    return report
