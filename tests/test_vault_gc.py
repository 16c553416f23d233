"""Vault GC: mark and sweep with a safety margin, while backups go on."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from frostpoint.vault.backend import LocalBackend
from frostpoint.vault.format import BLOCK_SIZE as BS
from frostpoint.vault.store import Vault


def image(path: Path, seed: int, blocks: int = 4) -> Path:
    rnd = __import__("random").Random(seed)
    path.write_bytes(rnd.randbytes(blocks * BS))
    return path


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_deleted_restore_points_are_reclaimed_after_the_grace(tmp_path: Path) -> None:
    vault_dir = tmp_path / "vault"
    v = Vault.create(LocalBackend(vault_dir), os.urandom(32), pack_target_size=BS)
    a, b = image(tmp_path / "a.img", 1), image(tmp_path / "b.img", 2)
    v.backup("rp-a", {"d": a})
    v.backup("rp-b", {"d": b})
    packs_before = len(LocalBackend(vault_dir).list("packs/"))
    v.delete_restore_point("rp-a")

    first = v.gc(grace_seconds=3600)
    assert first.packs_pending == 4 and first.packs_deleted == 0, "first mark only"
    second = v.gc(grace_seconds=3600)
    assert second.packs_deleted == 0, "still inside the safety margin"
    third = v.gc(grace_seconds=0)
    assert third.packs_deleted == 4 and third.bytes_deleted > 4 * BS
    assert len(LocalBackend(vault_dir).list("packs/")) == packs_before - 4
    # What is left is whole: verify is clean and rp-b restores.
    assert v.verify().ok
    out = tmp_path / "out.img"
    v.restore_disk("rp-b", "d", out)
    assert sha(out) == sha(b)
    # A later backup of the deleted data stores it again (nothing dangles).
    stats = v.backup("rp-a2", {"d": a})
    assert stats.chunks_new == 4
    v.restore_disk("rp-a2", "d", out)
    assert sha(out) == sha(a)


def test_a_pack_referenced_again_is_not_deleted(tmp_path: Path) -> None:
    v = Vault.create(LocalBackend(tmp_path / "vault"), os.urandom(32),
                     pack_target_size=BS)
    a = image(tmp_path / "a.img", 3)
    v.backup("rp1", {"d": a})
    v.delete_restore_point("rp1")
    assert v.gc(grace_seconds=0).packs_pending == 4
    # Before the sweep, a new backup deduplicates against the pending packs.
    stats = v.backup("rp2", {"d": a})
    assert stats.chunks_reused == 4
    report = v.gc(grace_seconds=0)
    assert report.packs_deleted == 0 and report.packs_pending == 0
    out = tmp_path / "out.img"
    v.restore_disk("rp2", "d", out)
    assert sha(out) == sha(a)


def test_backups_run_while_gc_runs(tmp_path: Path) -> None:
    v = Vault.create(LocalBackend(tmp_path / "vault"), os.urandom(32),
                     pack_target_size=BS)
    imgs = [image(tmp_path / f"i{n}.img", 10 + n, blocks=3) for n in range(6)]
    for n in range(3):
        v.backup(f"old{n}", {"d": imgs[n]})
        v.delete_restore_point(f"old{n}")
    v.gc(grace_seconds=0)  # everything of old* is pending now
    errors: list[BaseException] = []

    def backups() -> None:
        try:
            for n in range(6):  # re-uses old chunks and adds new ones
                v.backup(f"new{n}", {"d": imgs[n]})
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=backups)
    t.start()
    while t.is_alive():
        v.gc(grace_seconds=0)
    t.join()
    assert not errors
    v.gc(grace_seconds=0)
    assert v.verify().ok
    out = tmp_path / "out.img"
    for n in range(6):
        v.restore_disk(f"new{n}", "d", out)
        assert sha(out) == sha(imgs[n])
