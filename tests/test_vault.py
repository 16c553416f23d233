"""The local vault: what is specific to it (kill -9 crash safety on a local
directory) and the helpers the vault tests share. Round trips, dedup, damage, restore
points and cancel run on every backend in tests/test_backend_contract.py."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from frostpoint.service.vault_errors import catalog_error
from frostpoint.vault import LocalBackend, Vault, VaultKeys
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


# --- keys ----------------------------------------------------------------------------


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


# --- kill helpers (also used by tests/test_vault_cbt.py) ----------------------------


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
