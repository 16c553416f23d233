"""Backup and GC of one vault exclude each other across Vault objects, and the service
keeps one store object per vault however many threads ask at once (issue 9, 2.8)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from frostpoint.service.protection import Protection
from frostpoint.service.runtime import Runtime
from frostpoint.vault import LocalBackend, Vault
from frostpoint.vault.format import INDEX
from test_vault import rand_block

BS = 64 * 1024


def test_gc_through_another_vault_object_waits_for_a_running_backup(tmp_path: Path) -> None:
    key = os.urandom(32)
    root = tmp_path / "vault"
    Vault.create(LocalBackend(root), key, block_size=BS, pack_target_size=BS)
    backing_up = Vault.open(LocalBackend(root), key)
    collecting = Vault.open(LocalBackend(root), key)  # e.g. the GC loop's own object
    img = tmp_path / "disk.img"
    img.write_bytes(b"".join(rand_block(i, BS) for i in range(8)))

    packs_written, go_on = threading.Event(), threading.Event()

    def should_cancel() -> bool:
        # Pause the backup once some of its packs are indexed, before its manifest.
        if backing_up.backend.list(INDEX) and not packs_written.is_set():
            packs_written.set()
            assert go_on.wait(30)
        return False

    backup = threading.Thread(target=backing_up.backup, args=("rp1", {"d": img}),
                              kwargs={"should_cancel": should_cancel})
    backup.start()
    assert packs_written.wait(30)
    reports: list[object] = []

    def gc_twice() -> None:  # grace 0: the second mark may delete what the first found
        reports.append(collecting.gc(grace_seconds=0))
        reports.append(collecting.gc(grace_seconds=0))

    gc = threading.Thread(target=gc_twice)
    gc.start()
    gc.join(1.0)
    go_on.set()
    backup.join(30)
    gc.join(30)
    assert not backup.is_alive() and not gc.is_alive()
    assert len(reports) == 2
    # Nothing the backup wrote was deleted: the restore point verifies and restores.
    fresh = Vault.open(LocalBackend(root), key)
    assert fresh.list_restore_points() == ["rp1"]
    report = fresh.verify()
    assert report.ok, (report.missing, report.damaged)
    out = tmp_path / "out.img"
    fresh.restore_disk("rp1", "d", out)
    assert out.read_bytes() == img.read_bytes()


def test_the_service_opens_one_store_per_vault_whatever_the_threads(tmp_path: Path) -> None:
    rt = Runtime(tmp_path / "data")
    try:
        vid = Protection(rt).create_vault("v1", block_size=BS)["id"]
        for _ in range(3):
            p = Protection(rt)  # a fresh service: nothing opened yet
            start = threading.Barrier(8)
            got: list[Vault] = []

            def ask(p: Protection = p, start: threading.Barrier = start,
                    got: list[Vault] = got) -> None:
                start.wait()
                got.append(p.store(vid))

            threads = [threading.Thread(target=ask) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert len(got) == 8 and len({id(v) for v in got}) == 1
    finally:
        rt.engine.dispose()
