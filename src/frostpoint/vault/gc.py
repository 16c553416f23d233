"""Garbage collection: mark and sweep with a safety margin, without stopping backups.

A pack is deleted only when two marks at least `grace` apart both found none of its
chunks referenced by any manifest (the first mark records it in `gc/pending`). A
backup in another process that deduplicated against such a pack has written its
manifest by the second mark, so the pack is kept. Within this process the sweep runs
under the vault's backup lock and re-reads manifests written since the mark, so the
lock is held only for the deletes. A chunk that keeps frames in a base chunk keeps that
base alive (the pack indexes name every chunk's base), and so does every chunk of a
kept pack, live or not: no indexed chunk ever names a deleted base. Packs with some
live chunks are kept whole (repacking is not done yet); their dead bytes are reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from frostpoint.vault import format as fmt
from frostpoint.vault.errors import Cancelled, NotInVault, VaultCorrupt, VaultError
from frostpoint.vault.pacing import Progress, cancel_check, throttled
from frostpoint.vault.repo import Repository
from frostpoint.vault.reports import GcReport

__all__ = ["DEFAULT_GRACE", "GcReport", "collect"]

PENDING = fmt.GC_PENDING
DEFAULT_GRACE = 24 * 3600.0


def _cancelled() -> Cancelled:
    return Cancelled("the GC was cancelled; the packs deleted so far stay deleted, the "
                     "rest are collected by a later run")


def _referenced(vault: Repository, names: list[str],
                step: Callable[[], None] = lambda: None) -> tuple[set[bytes], int]:
    refs: set[bytes] = set()
    count = 0
    for rp in names:
        step()
        try:
            doc = vault.read_manifest(rp)
        except NotInVault:
            continue  # deleted meanwhile
        except VaultError as e:
            # A manifest we cannot read may still reference anything: delete nothing.
            raise VaultCorrupt(f"GC stopped: manifest {rp} is unreadable ({e.detail})",
                               {"restore_point": rp}) from None
        count += 1
        for disk in doc["disks"].values():
            refs.update(bytes.fromhex(h) for h in disk["blocks"] if h is not None)
    return refs, count


def _keep(refs: set[bytes], contents: dict[str, list[fmt.IndexEntry]]) -> set[bytes]:
    """refs and what keeping them implies. A pack with a live chunk is kept whole, so
    all its chunks stay in the index, where a later backup may dedup against any of
    them: the base of every chunk in a kept pack must stay too. Keeping a base keeps
    its pack, whose chunks may have bases in turn: repeated until nothing is added."""
    live = set(refs)
    while True:
        extra = {e[3] for entries in contents.values()
                 if any(e[0] in live for e in entries)
                 for e in entries if e[3] is not None and e[3] not in live}
        if not extra:
            return live
        live |= extra


def _pack_contents(vault: Repository, step: Callable[[], None] = lambda: None
                   ) -> tuple[set[str], dict[str, list[fmt.IndexEntry]]]:
    packs = {n.rsplit("/", 1)[1] for n in vault.backend.list(fmt.PACKS)}
    packs = {p for p in packs if fmt.is_pack_id(p)}
    contents: dict[str, list[fmt.IndexEntry]] = {}
    for name in vault.backend.list(fmt.INDEX):
        pack_id = name[len(fmt.INDEX):]
        if not fmt.is_pack_id(pack_id):
            continue
        step()
        try:
            contents[pack_id] = vault.read_index(pack_id)
        except FileNotFoundError:
            continue
    return packs, contents


def collect(vault: Repository, grace: float = DEFAULT_GRACE, now: float | None = None,
            progress: Progress | None = None,
            should_cancel: Callable[[], bool] | None = None) -> GcReport:
    """One mark (and sweep of what two marks found dead). progress(steps_done,
    steps_total): a step is a manifest or index read, or a pack deleted; the total
    grows once the packs to delete are known. A cancel before the sweep changes
    nothing; one during the sweep stops between two packs (each deleted index first,
    then pack) and still records the marks of the packs left, so the vault is
    consistent either way and a later run carries on."""
    t0 = time.monotonic()
    now = time.time() if now is None else now
    report = GcReport()
    check = cancel_check(should_cancel, _cancelled)
    progress = throttled(progress)
    names = vault.list_restore_points()
    index_names = vault.backend.list(fmt.INDEX)
    total = len(names) + len(index_names)
    done = 0

    def step() -> None:
        nonlocal done
        check()
        if progress is not None and done < total:
            progress(done, total)
        done += 1

    refs, report.restore_points = _referenced(vault, names, step)
    packs, contents = _pack_contents(vault, step)
    refs = _keep(refs, contents)
    report.packs_total = len(packs)
    dead: set[str] = set()
    for pack_id in packs:
        entries = contents.get(pack_id, [])  # no index: leftovers of a crashed backup
        live = [e for e in entries if e[0] in refs]
        if not live:
            dead.add(pack_id)
        elif len(live) < len(entries):
            report.packs_partly_dead += 1
            report.dead_bytes_kept += sum(e[2] for e in entries if e[0] not in refs)
    try:
        pending = fmt.decode_pending(vault.backend.get(PENDING), vault.keys,
                                     vault.vault_id, now)
    except FileNotFoundError:
        pending = {}
    except VaultCorrupt:
        # Changed or damaged on storage: start the marks afresh. That only delays
        # deletes by one grace period; trusting it could delete packs a backup in
        # another process is still writing.
        pending = {}
        report.pending_discarded = True
    due = {p for p in dead if p in pending and now - pending[p] >= grace}
    done, total = len(names) + len(index_names), len(names) + len(index_names) + len(due)
    if should_cancel is not None and should_cancel():
        raise _cancelled()
    deleted: set[str] = set()
    stopped = False
    with vault.backup_lock:  # short: only re-check and delete
        new = sorted(set(vault.list_restore_points()) - set(names))
        if new:
            more, _ = _referenced(vault, new)
            more = _keep(refs | more, contents)
            for p in sorted(due):
                if any(e[0] in more for e in contents.get(p, [])):
                    due.discard(p)
                    dead.discard(p)
                    report.kept_after_recheck.append(p)
        for pack_id in sorted(due):
            if should_cancel is not None and should_cancel():
                stopped = True
                break
            for cid, _off, length, _base in contents.get(pack_id, []):
                vault.index.drop(cid)
                report.bytes_deleted += length
            # Index first: a crash between the two leaves an unindexed pack, which the
            # next run collects; never an index pointing at a missing pack.
            vault.backend.delete(fmt.index_name(pack_id))
            vault.backend.delete(fmt.pack_name(pack_id))
            report.packs_deleted += 1
            deleted.add(pack_id)
            done += 1
            if progress is not None:
                progress(done, total)
    # Packs due but not deleted (a cancel) keep their first mark: the next run deletes them.
    still = {p: pending.get(p, now) for p in dead - deleted}
    vault.backend.put(PENDING, fmt.encode_pending(still, vault.keys, vault.vault_id))
    if stopped:
        raise _cancelled()
    if progress is not None:
        progress(total, total)
    report.packs_pending = len(still)
    report.duration_s = time.monotonic() - t0
    return report
