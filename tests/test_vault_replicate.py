"""vault/replicator.py on its own: two vaults with keys of their own. Only the chunks
the target lacks move, the copy restores byte for byte, and a run cut off midway (the
target's storage failing) leaves no manifest, then completes without writing again
what was already written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from frostpoint.vault import format as fmt
from frostpoint.vault.memory import MemoryBackend
from frostpoint.vault.replicator import replicate
from frostpoint.vault.store import Vault

BLOCK = 64 * 1024


class FailingAfter(MemoryBackend):
    """Storage that fails every put after the first `n` packs (a target going away)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.packs_left = n

    def put(self, name: str, data: bytes) -> None:
        if name.startswith(fmt.PACKS):
            if self.packs_left <= 0:
                raise OSError("the target's storage went away")
            self.packs_left -= 1
        super().put(name, data)


def image(path: Path, blocks: list[bytes]) -> Path:
    path.write_bytes(b"".join(blocks))
    return path


def vault(backend: MemoryBackend | None = None) -> Vault:
    return Vault.create(backend or MemoryBackend(), os.urandom(32), block_size=BLOCK,
                        pack_target_size=4 * BLOCK)


def test_only_missing_chunks_move_and_the_copy_restores_identically(tmp_path: Path) -> None:
    src, dst = vault(), vault()
    a = [os.urandom(BLOCK) for _ in range(12)]
    src.backup("rp1", {"d": image(tmp_path / "1.img", [*a, bytes(BLOCK)])})
    b = list(a)
    b[3] = os.urandom(BLOCK)  # one block changed
    src.backup("rp2", {"d": image(tmp_path / "2.img", [*b, bytes(BLOCK)])})

    r1 = replicate(src, dst, ["rp1"])
    assert (r1.copied, r1.chunks_copied, r1.chunks_verified) == (["rp1"], 12, 12)
    r2 = replicate(src, dst, ["rp1", "rp2"])
    assert r2.copied == ["rp2"] and r2.present == ["rp1"]
    # rp2's eleven unchanged blocks are known from rp1 in both vaults: not read again.
    assert (r2.chunks_copied, r2.chunks_reused, r2.bytes_read) == (1, 11, BLOCK)
    assert replicate(src, dst, ["rp1", "rp2"]).chunks_copied == 0

    for rp, blocks in (("rp1", a), ("rp2", b)):
        out = tmp_path / f"{rp}.out"
        dst.restore_disk(rp, "d", out)
        assert out.read_bytes() == b"".join([*blocks, bytes(BLOCK)])
    assert dst.read_manifest("rp2")["vault_id"] == dst.vault_id
    assert dst.verify().ok


def test_a_run_cut_off_midway_leaves_no_manifest_and_the_next_completes(
        tmp_path: Path) -> None:
    src = vault()
    blocks = [os.urandom(BLOCK) for _ in range(16)]
    src.backup("rp1", {"d": image(tmp_path / "1.img", blocks)})
    target, key = FailingAfter(2), os.urandom(32)
    dst = Vault.create(target, key, block_size=BLOCK, pack_target_size=4 * BLOCK)
    with pytest.raises(OSError):
        replicate(src, dst, ["rp1"])
    assert dst.list_restore_points() == []  # no half restore point
    packs = [n.rsplit("/", 1)[-1] for n in target.list(fmt.PACKS)]
    assert len(packs) == 2
    landed = sum(len(dst.read_index(p)) for p in packs)
    target.packs_left = 100
    again = Vault.open(target, key)  # as a service started after the crash opens it
    r = replicate(src, again, ["rp1"])
    assert r.copied == ["rp1"]
    # The chunks of the two packs that made it are found, not written again.
    assert (r.chunks_reused, r.chunks_copied) == (landed, 16 - landed)
    assert 0 < landed < 16
    out = tmp_path / "out"
    again.restore_disk("rp1", "d", out)
    assert out.read_bytes() == b"".join(blocks)
    assert again.verify().ok
