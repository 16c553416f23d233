"""Changed-block tracking on a real reflink filesystem (XFS on a loop device)."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import needs_root
from frostpoint.fabric.pool import reflink
from frostpoint.vault.backend import LocalBackend
from frostpoint.vault.crypto import FRAME
from frostpoint.vault.format import BLOCK_SIZE
from frostpoint.vault.store import Vault
from test_vault import kill_backup, open_checked

pytestmark = needs_root
MiB = 1 << 20
# The default, and the 4 MiB of older vaults (chunks of several zstd frames, of which a
# patched block recompresses only the changed ones).
BLOCK_SIZES = pytest.mark.parametrize("bs", sorted({BLOCK_SIZE, 4 * MiB}))


@pytest.fixture
def xfs(tmp_path: Path) -> Iterator[Path]:
    image, mnt = tmp_path / "pool.img", tmp_path / "pool"
    with open(image, "wb") as f:
        f.truncate(1 << 30)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@BLOCK_SIZES
def test_incremental_reads_only_changed_blocks(xfs: Path, tmp_path: Path, bs: int) -> None:
    BS = bs  # noqa: N806
    disk = xfs / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(16 * BS)
        for b in range(0, 12):  # 12 data blocks, the rest holes
            f.seek(b * BS)
            f.write(os.urandom(BS))
        os.fsync(f.fileno())
    snap1 = xfs / "snap1.img"
    reflink(disk, snap1)
    vault = Vault.create(LocalBackend(tmp_path / "vault"), os.urandom(32), block_size=BS)
    full = vault.backup("rp1", {"d": snap1})
    assert full.bytes_read == 12 * BS and full.blocks_hole == 4
    # Change two blocks (one partly) and write into a hole.
    with open(disk, "r+b") as f:
        f.seek(3 * BS + 100)
        f.write(b"changed" * 1000)
        f.seek(7 * BS)
        f.write(os.urandom(BS))
        f.seek(14 * BS)
        f.write(b"new data in a hole")
        os.fsync(f.fileno())
    snap2 = xfs / "snap2.img"
    reflink(disk, snap2)
    incr = vault.backup("rp2", {"d": snap2}, previous={"d": (snap1, "rp1")})
    assert incr.cbt["d"].startswith("incremental")
    # Block 7 was rewritten whole: read. Blocks 3 and 14 changed a few KiB: only the
    # frame holding each change is read; block 3's new chunk stores that frame and
    # names the others in the previous chunk, which is not read (or zeros, block 14).
    assert incr.blocks_patched == 2
    assert incr.bytes_read == BS + 2 * FRAME, incr.bytes_read
    assert incr.bytes_stored < BS + 3 * FRAME, incr.bytes_stored
    assert incr.blocks_unchanged == 10 and incr.blocks_hole == 3
    for rp, snap in (("rp1", snap1), ("rp2", snap2)):
        out = tmp_path / f"{rp}.img"
        vault.restore_disk(rp, "d", out)
        assert sha(out) == sha(snap)
    assert vault.verify().ok


def test_falls_back_to_a_full_read_when_the_previous_snapshot_is_gone(
        xfs: Path, tmp_path: Path) -> None:
    BS = BLOCK_SIZE  # noqa: N806
    disk = xfs / "disk.img"
    with open(disk, "wb") as f:
        f.write(os.urandom(8 * BS))
    snap1, snap2 = xfs / "s1.img", xfs / "s2.img"
    reflink(disk, snap1)
    vault = Vault.create(LocalBackend(tmp_path / "vault"), os.urandom(32))
    vault.backup("rp1", {"d": snap1})
    reflink(disk, snap2)
    snap1.unlink()
    stats = vault.backup("rp2", {"d": snap2}, previous={"d": (snap1, "rp1")})
    assert stats.cbt["d"].startswith("full read (previous snapshot gone")
    assert stats.bytes_read == 8 * BS and stats.chunks_new == 0, "read all, stored nothing"
    out = tmp_path / "r.img"
    vault.restore_disk("rp2", "d", out)
    assert sha(out) == sha(snap2)


@BLOCK_SIZES
def test_random_small_writes_over_generations_restore_exactly(xfs: Path, tmp_path: Path,
                                                              bs: int) -> None:
    """Many small writes between snapshots: patched blocks must restore bit for bit."""
    import random
    rng = random.Random(7)
    disk = xfs / "gen.img"
    with open(disk, "wb") as f:
        f.truncate(48 * MiB)
        f.seek(0)
        f.write(rng.randbytes(20 * MiB))
    vault = Vault.create(LocalBackend(tmp_path / "vault"), os.urandom(32), block_size=bs)
    prev: dict[str, tuple[Path, str]] | None = None
    snaps = []
    for gen in range(5):
        if gen:
            with open(disk, "r+b") as f:
                for _ in range(25):
                    f.seek(rng.randrange(0, 48 * MiB - 300_000))
                    f.write(rng.randbytes(rng.randrange(1, 300_000)))
                os.fsync(f.fileno())
        snap = xfs / f"gen{gen}.img"
        reflink(disk, snap)
        stats = vault.backup(f"g{gen}", {"d": snap}, previous=prev)
        if gen:
            assert stats.blocks_patched > 0 and stats.bytes_read < 20 * MiB
        prev = {"d": (snap, f"g{gen}")}
        snaps.append(snap)
    for gen, snap in enumerate(snaps):
        out = tmp_path / f"g{gen}.img"
        vault.restore_disk(f"g{gen}", "d", out)
        assert sha(out) == sha(snap), f"generation {gen} differs"
    assert vault.verify().ok


CRASH_INCREMENTAL = """
import sys
from pathlib import Path
from frostpoint.vault import LocalBackend, Vault, pacing
vault_dir, key, rp, snap, prev_snap, prev_rp = sys.argv[1:7]
v = Vault.open(LocalBackend(vault_dir), bytes.fromhex(key))
pacing.PROGRESS_EVERY_S = 0.0  # every block: the test kills at exact points
print("ready", flush=True)
v.backup(rp, {"d": Path(snap)}, previous={"d": (Path(prev_snap), prev_rp)},
         progress=lambda d, t: print(d, flush=True))
print("done", flush=True)
"""


def test_kill_9_during_incrementals_with_bases_leaves_a_usable_vault(
        xfs: Path, tmp_path: Path) -> None:
    """Incrementals whose chunks keep frames in base chunks, killed at 10 random
    moments: after each, verify is clean and only finished restore points are listed;
    every finished one restores exactly, and a last incremental succeeds."""
    rng = random.Random(9)
    BS = BLOCK_SIZE  # noqa: N806
    nblocks = 24
    disk = xfs / "disk.img"
    disk.write_bytes(rng.randbytes(nblocks * BS))
    key = os.urandom(32)
    vault_dir = tmp_path / "vault"
    # small packs: kills land between packs, between a pack and its index, ...
    vault = Vault.create(LocalBackend(vault_dir), key, pack_target_size=1 << 20)
    snap = xfs / "s0.img"
    reflink(disk, snap)
    vault.backup("s0", {"d": snap})
    finished = {"s0": sha(snap)}
    last = (snap, "s0")

    def change() -> Path:
        with open(disk, "r+b") as f:
            for i in range(nblocks):  # a few KiB in every block: every block patched
                f.seek(i * BS + rng.randrange(0, BS - 8192))
                f.write(rng.randbytes(rng.randrange(1, 8192)))
            os.fsync(f.fileno())
        s = xfs / f"s{len(list(xfs.glob('s*.img')))}.img"
        reflink(disk, s)
        return s

    for trial in range(1, 11):
        snap, rp = change(), f"t{trial}"
        stop_at = rng.randrange(0, nblocks * BS + BS)  # past the end: may finish
        kill_backup([sys.executable, "-c", CRASH_INCREMENTAL, str(vault_dir), key.hex(), rp,
                     str(snap), str(last[0]), last[1]], at_progress=stop_at)
        v = open_checked(vault_dir, key, f"trial {trial}")
        listed = set(v.list_restore_points())
        assert listed - set(finished) <= {rp}, f"trial {trial}: {listed - set(finished)}"
        if rp in listed:
            finished[rp] = sha(snap)
            last = (snap, rp)
        assert v.verify().ok, f"trial {trial}"
    v = Vault.open(LocalBackend(vault_dir), key)
    snap = change()
    stats = v.backup("after", {"d": snap}, previous={"d": last})
    # from the last finished one: the killed trials' changes are read too, not all
    assert stats.cbt["d"].startswith("incremental") and stats.blocks_patched == nblocks
    assert stats.bytes_read < nblocks * BS
    finished["after"] = sha(snap)
    assert len(v._index.bases()) > 0, "the incrementals stored chunks with bases"
    out = tmp_path / "out.img"
    for rp, digest in finished.items():
        v.restore_disk(rp, "d", out)
        assert sha(out) == digest, f"{rp} differs"
    assert v.verify().ok
