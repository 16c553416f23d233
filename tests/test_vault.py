"""Vault behaviour a user notices: round trips, dedup, sparseness, damage, crashes."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from frostpoint.service.vault_errors import catalog_error
from frostpoint.vault import ChunkRef, LocalBackend, Vault, VaultKeys, pacing
from frostpoint.vault.errors import VaultError
from frostpoint.vault.format import BLOCK_SIZE

BS = BLOCK_SIZE  # the block size of new vaults
SRC = Path(__file__).resolve().parents[1] / "src"
WORDS = ["vault", "chunk", "pack", "index", "manifest", "restore", "point", "disk", "block",
         "zero", "sparse", "frostpoint", "backup", "the", "a", "of", "and", "to", "in", "is"]


# --- helpers -------------------------------------------------------------------------

def text_block(seed: int, n: int = BS) -> bytes:
    rnd = random.Random(seed)
    out = bytearray()
    while len(out) < n:
        out += (" ".join(rnd.choice(WORDS) for _ in range(12)) + ".\n").encode()
    return bytes(out[:n])


def rand_block(seed: int, n: int = BS) -> bytes:
    return random.Random(seed).randbytes(n)


def make_image(path: Path, size: int, blocks: dict[int, bytes]) -> Path:
    """A sparse image: only the given blocks are written, the rest are holes."""
    with open(path, "wb") as f:
        f.truncate(size)
        for i, data in blocks.items():
            f.seek(i * BS)
            f.write(data)
    assert path.stat().st_size == size
    return path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def is_hole(path: Path, off: int, length: int) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        nxt = os.lseek(fd, off, os.SEEK_DATA)
    except OSError as e:
        if e.errno == errno.ENXIO:  # no data at or after off
            return True
        raise
    finally:
        os.close(fd)
    return nxt >= off + length


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def vault_dir(tmp_path: Path) -> Path:
    return tmp_path / "vault"


@pytest.fixture
def vault(vault_dir: Path, key: bytes) -> Vault:
    return Vault.create(LocalBackend(vault_dir), key)


# Layout used by several tests: 5 full blocks and a short 6th block.
SHORT = BS * 5 // 7 + 1
SIZE = 5 * BS + SHORT


def standard_image(path: Path) -> Path:
    img = make_image(path, SIZE, {
        0: rand_block(1),
        1: text_block(2),
        # 2: hole
        3: bytes(BS),                  # zeros actually written: still a zero block
        4: rand_block(1),              # same content as block 0: dedup within a backup
        5: text_block(5, SHORT),   # short last block
    })
    assert is_hole(img, 2 * BS, BS) and not is_hole(img, 3 * BS, BS)
    return img


# --- round trip ----------------------------------------------------------------------

def test_round_trip_is_identical_and_sparse(tmp_path: Path, vault: Vault, vault_dir: Path,
                                            key: bytes) -> None:
    img = standard_image(tmp_path / "disk0.img")
    seen: list[tuple[int, int]] = []
    stats = vault.backup("rp1", {"disk0": img}, labels={"vm": "web01"},
                         progress=lambda d, t: seen.append((d, t)))

    assert stats.bytes_total == stats.bytes_scanned == SIZE
    assert stats.bytes_read == SIZE - BS   # the hole is never read
    assert stats.blocks_hole == 1
    assert stats.blocks_total == 6
    assert stats.zero_blocks == 2
    assert stats.chunks_new == 3          # rand, text, short text
    assert stats.chunks_reused == 1       # block 4 == block 0
    # one incompressible block plus two well-compressed text blocks
    assert BS < stats.bytes_stored < BS + BS // 2
    assert seen and seen[-1] == (SIZE, SIZE)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)

    # A fresh process-like open: index and manifests come from storage.
    v2 = Vault.open(LocalBackend(vault_dir), key)
    assert v2.list_restore_points() == ["rp1"]
    m = v2.read_manifest("rp1")
    assert m["labels"] == {"vm": "web01"}
    disk = m["disks"]["disk0"]
    assert disk["size"] == SIZE and disk["block_size"] == BS
    assert disk["blocks"][2] is None and disk["blocks"][3] is None
    assert disk["blocks"][0] == disk["blocks"][4]

    out = tmp_path / "restored.img"
    v2.restore_disk("rp1", "disk0", out)
    assert out.stat().st_size == SIZE
    assert sha256(out) == sha256(img)
    assert not (tmp_path / "restored.img.partial").exists()
    # zero blocks are holes in the restored file, including the written-zeros one
    assert is_hole(out, 2 * BS, BS)
    assert is_hole(out, 3 * BS, BS)
    assert allocated(out) <= SIZE - 2 * BS + 64 * 1024  # fs block rounding
    assert v2.verify().ok


def test_multiple_disks_in_one_restore_point(tmp_path: Path, vault: Vault) -> None:
    a = make_image(tmp_path / "a.img", 2 * BS, {0: rand_block(10), 1: text_block(11)})
    b = make_image(tmp_path / "b.img", BS + 17, {1: b"x" * 17})
    vault.backup("rp", {"os": a, "data": b})
    for name, img in (("os", a), ("data", b)):
        out = tmp_path / f"out-{name}.img"
        vault.restore_disk("rp", name, out)
        assert sha256(out) == sha256(img)
    with pytest.raises(VaultError) as e:
        vault.restore_disk("rp", "nope", tmp_path / "x.img")
    assert catalog_error(e.value).code == "NotFound"


# --- dedup ---------------------------------------------------------------------------

def test_second_backup_stores_only_changed_block(tmp_path: Path, vault: Vault,
                                                 vault_dir: Path, key: bytes) -> None:
    img = standard_image(tmp_path / "disk0.img")
    vault.backup("rp1", {"disk0": img})
    old_sum = sha256(img)

    with open(img, "r+b") as f:
        f.seek(1 * BS)
        f.write(text_block(99))
    new_sum = sha256(img)
    assert new_sum != old_sum

    v2 = Vault.open(LocalBackend(vault_dir), key)
    stats = v2.backup("rp2", {"disk0": img})
    assert stats.chunks_new == 1
    assert stats.chunks_reused == 3
    assert stats.bytes_stored < BS // 2   # one compressed text block

    for rp, want in (("rp1", old_sum), ("rp2", new_sum)):
        out = tmp_path / f"{rp}.img"
        v2.restore_disk(rp, "disk0", out)
        assert sha256(out) == want
    assert v2.list_restore_points() == ["rp1", "rp2"]


def test_zero_blocks_are_never_stored(tmp_path: Path, vault: Vault, vault_dir: Path) -> None:
    img = make_image(tmp_path / "zero.img", 3 * BS + 100, {1: bytes(BS)})
    stats = vault.backup("z", {"disk0": img})
    assert stats.zero_blocks == 4
    assert stats.chunks_new == 0 and stats.bytes_stored == 0
    assert LocalBackend(vault_dir).list("packs/") == []
    out = tmp_path / "out.img"
    vault.restore_disk("z", "disk0", out)
    assert out.stat().st_size == 3 * BS + 100
    assert allocated(out) == 0
    assert sha256(out) == sha256(img)


# --- keys and damage -----------------------------------------------------------------

def test_wrong_key_fails_clearly(vault_dir: Path, vault: Vault) -> None:
    with pytest.raises(VaultError) as e:
        Vault.open(LocalBackend(vault_dir), os.urandom(32))
    assert catalog_error(e.value).code == "InvalidInput"
    assert "wrong vault key" in str(e.value)
    with pytest.raises(VaultError) as e:
        Vault.open(LocalBackend(vault_dir), b"short")
    assert catalog_error(e.value).code == "InvalidInput"


def test_open_missing_and_create_twice(tmp_path: Path, key: bytes, vault_dir: Path,
                                       vault: Vault) -> None:
    with pytest.raises(VaultError) as e:
        Vault.open(LocalBackend(tmp_path / "empty"), key)
    assert catalog_error(e.value).code == "NotFound"
    with pytest.raises(VaultError) as e:
        Vault.create(LocalBackend(vault_dir), key)
    assert catalog_error(e.value).code == "Conflict"


def test_sealed_object_is_bound_to_its_aad() -> None:
    keys = VaultKeys(os.urandom(32))
    data = text_block(3, 100_000)
    a, b = keys.chunk_id(data), keys.chunk_id(b"other")
    sealed = keys.seal(data, a)
    assert keys.open_sealed(sealed, a) == data
    assert len(sealed) < len(data)  # compressed
    with pytest.raises(VaultError) as e:
        keys.open_sealed(sealed, b)      # a chunk swapped in for another
    assert catalog_error(e.value).code == "VaultDataCorrupt"
    raw = os.urandom(1000)
    assert keys.open_sealed(keys.seal(raw, b"x"), b"x") == raw
    # ids are keyed: another vault key gives other ids for the same data
    assert VaultKeys(os.urandom(32)).chunk_id(data) != a


def test_flipped_byte_is_found_and_restore_refuses(tmp_path: Path, vault: Vault,
                                                   vault_dir: Path, key: bytes) -> None:
    img1 = make_image(tmp_path / "d1.img", 3 * BS, {0: rand_block(20), 2: text_block(21)})
    img2 = make_image(tmp_path / "d2.img", 2 * BS, {0: rand_block(22)})
    vault.backup("rp1", {"disk0": img1})
    vault.backup("rp2", {"disk0": img2})

    cid = vault.read_manifest("rp1")["disks"]["disk0"]["blocks"][0]
    loc = vault.locate_chunk(cid)
    assert loc is not None
    pack_id, off, length = loc
    pack_path = vault_dir / "packs" / pack_id[:2] / pack_id
    with open(pack_path, "r+b") as f:
        f.seek(off + length // 2)
        b = f.read(1)
        f.seek(off + length // 2)
        f.write(bytes([b[0] ^ 0x01]))

    v2 = Vault.open(LocalBackend(vault_dir), key)
    report = v2.verify()
    assert not report.ok
    assert report.missing == []
    assert [p.chunk_id for p in report.damaged] == [cid]
    problem = report.damaged[0]
    assert problem.pack == pack_id
    assert problem.refs == [ChunkRef("rp1", "disk0", 0)]

    out = tmp_path / "out.img"
    with pytest.raises(VaultError) as e:
        v2.restore_disk("rp1", "disk0", out)
    assert catalog_error(e.value).code == "VaultDataCorrupt"
    assert cid in str(e.value) and pack_id in str(e.value)
    assert e.value.details["chunk"] == cid and e.value.details["pack"] == pack_id
    assert not out.exists()
    assert not (tmp_path / "out.img.partial").exists()

    # the undamaged restore point still restores
    v2.restore_disk("rp2", "disk0", out)
    assert sha256(out) == sha256(img2)


def test_missing_pack_is_reported(tmp_path: Path, vault: Vault, vault_dir: Path,
                                  key: bytes) -> None:
    img = make_image(tmp_path / "d.img", BS, {0: rand_block(30)})
    vault.backup("rp1", {"disk0": img})
    cid = vault.read_manifest("rp1")["disks"]["disk0"]["blocks"][0]
    pack_id = vault.locate_chunk(cid)[0]
    (vault_dir / "packs" / pack_id[:2] / pack_id).unlink()

    v2 = Vault.open(LocalBackend(vault_dir), key)
    report = v2.verify()
    assert [p.chunk_id for p in report.missing] == [cid]
    assert report.missing[0].refs == [ChunkRef("rp1", "disk0", 0)]
    with pytest.raises(VaultError) as e:
        v2.restore_disk("rp1", "disk0", tmp_path / "out.img")
    assert catalog_error(e.value).code == "VaultDataCorrupt"
    assert not (tmp_path / "out.img").exists()


# --- restore points ------------------------------------------------------------------

def test_restore_point_lifecycle(tmp_path: Path, vault: Vault) -> None:
    img = make_image(tmp_path / "d.img", BS, {0: text_block(40)})
    vault.backup("rp1", {"disk0": img})
    with pytest.raises(VaultError) as e:
        vault.backup("rp1", {"disk0": img})
    assert catalog_error(e.value).code == "Conflict"
    with pytest.raises(VaultError) as e:
        vault.read_manifest("nope")
    assert catalog_error(e.value).code == "NotFound"
    with pytest.raises(VaultError) as e:
        vault.backup("../evil", {"disk0": img})
    assert catalog_error(e.value).code == "InvalidInput"

    vault.delete_restore_point("rp1")
    assert vault.list_restore_points() == []
    with pytest.raises(VaultError) as e:
        vault.restore_disk("rp1", "disk0", tmp_path / "out.img")
    assert catalog_error(e.value).code == "NotFound"
    with pytest.raises(VaultError) as e:
        vault.delete_restore_point("rp1")
    assert catalog_error(e.value).code == "NotFound"
    # chunks stay (GC is later), so backing up again reuses them
    assert vault.backup("rp1", {"disk0": img}).chunks_new == 0


def test_cancel_lists_nothing_and_keeps_flushed_packs(tmp_path: Path, vault_dir: Path,
                                                      key: bytes,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # pack target 1 byte: every chunk is its own pack, so some are flushed before
    # the cancel and must be reusable afterwards.
    monkeypatch.setattr(pacing, "CANCEL_CHECK_S", 0.0)  # ask before every block
    vault = Vault.create(LocalBackend(vault_dir), key, pack_target_size=1)
    vault.threads = 1
    img = make_image(tmp_path / "d.img", 8 * BS, {i: rand_block(50 + i) for i in range(8)})
    calls = 0

    def should_cancel() -> bool:
        nonlocal calls
        calls += 1
        return calls > 6

    with pytest.raises(VaultError) as e:
        vault.backup("rp1", {"disk0": img}, should_cancel=should_cancel)
    assert catalog_error(e.value).code == "JobCancelled"
    assert vault.list_restore_points() == []

    v2 = Vault.open(LocalBackend(vault_dir), key)
    assert v2.list_restore_points() == []
    assert v2.verify().ok
    stats = v2.backup("rp1", {"disk0": img})
    assert stats.chunks_reused >= 1
    assert stats.chunks_new + stats.chunks_reused == 8
    out = tmp_path / "out.img"
    v2.restore_disk("rp1", "disk0", out)
    assert sha256(out) == sha256(img)


# --- crash safety --------------------------------------------------------------------

CRASH_SCRIPT = """
import sys
from pathlib import Path
from frostpoint.vault import LocalBackend, Vault, pacing
vault_dir, key, rp, img = sys.argv[1:5]
v = Vault.open(LocalBackend(vault_dir), bytes.fromhex(key))
pacing.PROGRESS_EVERY_S = 0.0  # every block: the test kills at exact points
print("ready", flush=True)
v.backup(rp, {"disk0": Path(img)}, progress=lambda d, t: print(d, flush=True))
print("done", flush=True)
"""


def _assert_consistent(vault_dir: Path, key: bytes, img: Path, tmp_path: Path) -> list[str]:
    backend = LocalBackend(vault_dir)
    # an index never exists without its pack
    for name in backend.list("index/"):
        p = name.split("/")[1]
        assert backend.exists(f"packs/{p[:2]}/{p}"), f"index {p} without its pack"
    v = Vault.open(backend, key)
    assert v.damaged_indexes == []
    rps = v.list_restore_points()
    report = v.verify()
    assert report.ok, report
    # every listed restore point is complete
    for rp in rps:
        out = tmp_path / f"check-{rp}.img"
        v.restore_disk(rp, "disk0", out)
        assert sha256(out) == sha256(img)
        out.unlink()
    return rps


BIG = 64 * 1024 * 1024  # the image the crash tests back up


@pytest.fixture(scope="module")
def big_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    img = tmp_path_factory.mktemp("crash") / "big.img"
    img.write_bytes(os.urandom(BIG))
    return img


# (kind, when): seconds after the backup started, or bytes of progress seen. Progress
# kills land mid-backup for sure; late ones may also see a finished restore point.
@pytest.mark.parametrize("kind,when,surely_unfinished", [
    ("time", 0.05, False), ("time", 0.2, False), ("time", 0.5, False),
    ("progress", 3 * BIG // 16, True), ("progress", 9 * BIG // 16, True),
    ("progress", BIG, False),  # all blocks read: last pack, index or manifest
])
def test_kill_9_during_backup_leaves_a_usable_vault(
        tmp_path: Path, vault_dir: Path, key: bytes, big_image: Path,
        kind: str, when: float, surely_unfinished: bool) -> None:
    # Small packs so that kills land between packs, between a pack and its index, ...
    Vault.create(LocalBackend(vault_dir), key, pack_target_size=8 * 1024 * 1024)
    img = big_image
    returncode = kill_backup(
        [sys.executable, "-c", CRASH_SCRIPT, str(vault_dir), key.hex(), "rp1", str(img)],
        **({"after_s": when} if kind == "time" else {"at_progress": int(when)}))

    rps = _assert_consistent(vault_dir, key, img, tmp_path)
    assert rps in ([], ["rp1"])
    if surely_unfinished:
        assert returncode == -signal.SIGKILL and rps == []

    # A later backup works, re-storing whatever the crash left unindexed.
    v = Vault.open(LocalBackend(vault_dir), key)
    stats = v.backup("after-crash", {"disk0": img})
    assert stats.chunks_new + stats.chunks_reused == BIG // BS
    out = tmp_path / "final.img"
    v.restore_disk("after-crash", "disk0", out)
    assert sha256(out) == sha256(img)
    assert "after-crash" in _assert_consistent(vault_dir, key, img, tmp_path)


# --- backend -------------------------------------------------------------------------

def test_local_backend_basics(tmp_path: Path) -> None:
    b = LocalBackend(tmp_path / "b")
    b.put("packs/ab/abcd", b"1")
    b.put("packs/cd/cdef", b"22")
    b.put("index/abcd", b"333")
    b.put("packs/ab/abcd", b"4444")  # atomic replace
    assert b.get("packs/ab/abcd") == b"4444"
    assert b.get_range("packs/ab/abcd", 1, 2) == b"44"
    assert b.list("packs/") == ["packs/ab/abcd", "packs/cd/cdef"]
    assert b.list("packs/c") == ["packs/cd/cdef"]
    assert b.list("") == ["index/abcd", "packs/ab/abcd", "packs/cd/cdef"]
    assert b.list("manifests/") == []
    # a crashed put's temp file is invisible
    (tmp_path / "b" / "index" / ".abcd.xyz.tmp").write_bytes(b"half")
    assert b.list("index/") == ["index/abcd"]
    assert b.exists("index/abcd") and not b.exists("index/nope")
    with pytest.raises(FileNotFoundError):
        b.get("index/nope")
    b.delete("index/abcd")
    b.delete("index/abcd")  # idempotent
    assert not b.exists("index/abcd")
    for bad in ("", "/abs", "a/../b", "a//b", ".hidden", "a/./b"):
        with pytest.raises(ValueError):
            b.put(bad, b"x")
    shutil.rmtree(tmp_path / "b")


def test_damaged_index_is_reported_and_healed_by_next_backup(
        tmp_path: Path, vault: Vault, vault_dir: Path, key: bytes) -> None:
    img = make_image(tmp_path / "d.img", 2 * BS, {0: rand_block(60), 1: text_block(61)})
    vault.backup("rp1", {"disk0": img})
    (index_file,) = (vault_dir / "index").iterdir()
    data = bytearray(index_file.read_bytes())
    data[-1] ^= 0xFF
    index_file.write_bytes(bytes(data))

    v2 = Vault.open(LocalBackend(vault_dir), key)   # still opens
    assert v2.damaged_indexes == [index_file.name]
    report = v2.verify()
    assert not report.ok
    assert report.damaged_indexes == [index_file.name]
    assert len(report.missing) == 2
    # the next backup stores the chunks again, and that restore point is whole
    assert v2.backup("rp2", {"disk0": img}).chunks_new == 2
    out = tmp_path / "out.img"
    v2.restore_disk("rp2", "disk0", out)
    assert sha256(out) == sha256(img)


def kill_backup(argv: list[str], *, at_progress: int | None = None,
                after_s: float | None = None, env: dict[str, str] | None = None) -> int:
    """Run a backup script that prints "ready", then its progress in bytes, then
    "done"; kill -9 it after_s seconds after "ready", or once its progress reaches
    at_progress (or when it is done). Returns its exit status."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(SRC), **(env or {})})
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "ready"
        if after_s is not None:
            time.sleep(after_s)
        else:
            for line in proc.stdout:
                if line.strip() == "done" or int(line) >= (at_progress or 0):
                    break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stdout.close()
    return proc.returncode


def open_checked(vault_dir: Path, key: bytes, what: str) -> Vault:
    """Open a vault after a crash, checking first that no index lacks its pack."""
    backend = LocalBackend(vault_dir)
    for name in backend.list("index/"):
        p = name.split("/")[1]
        assert backend.exists(f"packs/{p[:2]}/{p}"), f"{what}: index without pack"
    return Vault.open(backend, key)


def test_twenty_random_kills_never_leave_a_half_restore_point(
        tmp_path: Path, vault_dir: Path, key: bytes, big_image: Path) -> None:
    """kill -9 a backup at 20 random moments in a row, on one vault: after each, verify
    is clean and only finished restore points are listed; then a backup reuses what
    the killed ones uploaded."""
    rng = random.Random(20)
    Vault.create(LocalBackend(vault_dir), key, pack_target_size=4 * 1024 * 1024)
    finished: set[str] = set()
    for trial in range(20):
        rp = f"trial{trial}"
        stop_at = rng.randrange(0, BIG + BIG // 16)  # past the end: may finish
        kill_backup([sys.executable, "-c", CRASH_SCRIPT, str(vault_dir), key.hex(), rp,
                     str(big_image)], at_progress=stop_at)
        v = open_checked(vault_dir, key, f"trial {trial}")
        listed = set(v.list_restore_points())
        assert listed - finished <= {rp}, f"trial {trial}: unexpected {listed - finished}"
        if rp in listed:
            finished.add(rp)
        report = v.verify()
        assert report.ok, f"trial {trial}: {report}"
    v = Vault.open(LocalBackend(vault_dir), key)
    indexed = len(v._index)
    stats = v.backup("after", {"disk0": big_image})
    assert stats.chunks_reused == min(indexed, BIG // BS), "what the killed ones uploaded"
    out = tmp_path / "after.img"
    v.restore_disk("after", "disk0", out)
    assert sha256(out) == sha256(big_image)
    for rp in finished:
        v.restore_disk(rp, "disk0", out)
        assert sha256(out) == sha256(big_image)


# --- block size ------------------------------------------------------------------------

def test_block_size_is_per_vault_and_read_from_storage(tmp_path: Path, vault_dir: Path,
                                                       key: bytes) -> None:
    # A vault made with 4 MiB blocks (as before 1 MiB became the default) keeps them:
    # backups after a reopen use the config's size, manifests record it, restore follows.
    big = 4 * 1024 * 1024
    Vault.create(LocalBackend(vault_dir), key, block_size=big)
    img = make_image(tmp_path / "d.img", 3 * big + 5, {0: text_block(1, 2 * big)})
    v = Vault.open(LocalBackend(vault_dir), key)
    assert v.config.block_size == big
    stats = v.backup("rp1", {"disk0": img})
    assert stats.blocks_total == 4 and stats.chunks_new == 2
    assert v.read_manifest("rp1")["disks"]["disk0"]["block_size"] == big
    out = tmp_path / "out.img"
    v.restore_disk("rp1", "disk0", out)
    assert sha256(out) == sha256(img)
    assert v.verify().ok


@pytest.mark.parametrize("bad", [0, 4096, 64 * 1024 + 1, 32 * 1024 * 1024])
def test_block_size_out_of_range_is_refused(vault_dir: Path, key: bytes, bad: int) -> None:
    with pytest.raises(VaultError) as e:
        Vault.create(LocalBackend(vault_dir), key, block_size=bad)
    assert catalog_error(e.value).code == "InvalidInput"
    assert not LocalBackend(vault_dir).exists("config")


def test_cancel_is_asked_sparingly(tmp_path: Path, vault: Vault,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # The service's should_cancel is a database query: the block loop asks at most
    # every CANCEL_CHECK_S, plus once before the manifest.
    monkeypatch.setattr(pacing, "CANCEL_CHECK_S", 3600.0)
    img = make_image(tmp_path / "d.img", 12 * BS, {i: text_block(i) for i in range(12)})
    calls = 0

    def should_cancel() -> bool:
        nonlocal calls
        calls += 1
        return False

    vault.backup("rp1", {"disk0": img}, should_cancel=should_cancel)
    assert calls == 2


def test_progress_is_reported_sparingly_and_always_at_the_end(
        tmp_path: Path, vault: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    # The service writes each progress report to its database: not once per block.
    monkeypatch.setattr(pacing, "PROGRESS_EVERY_S", 3600.0)
    img = standard_image(tmp_path / "d.img")
    seen: list[tuple[int, int]] = []
    vault.backup("rp1", {"disk0": img}, progress=lambda d, t: seen.append((d, t)))
    assert len(seen) == 2 and seen[-1] == (SIZE, SIZE)
    seen.clear()
    vault.restore_disk("rp1", "disk0", tmp_path / "out.img",
                       progress=lambda d, t: seen.append((d, t)))
    assert len(seen) == 2 and seen[-1] == (SIZE, SIZE)
    assert sha256(tmp_path / "out.img") == sha256(img)
