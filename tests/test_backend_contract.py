"""One contract suite for every vault Backend: the local directory, Azure Blob Storage
(a real Azurite, see tests/test_vault_azure.py) and the in-memory backend.

Each test runs against all three. First the Backend contract itself (vault/backend.py),
then the vault over it: round trip, dedup, damage found, restore points, cancel. What
is really specific to one backend stays in its own file: the local backend's temp
files and kill -9 crash safety in tests/test_vault.py, Azure's prefixes, containers,
URLs and killed puts in tests/test_vault_azure.py.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from frostpoint.service.vault_errors import catalog_error
from frostpoint.vault import ChunkRef, LocalBackend, Vault, pacing
from frostpoint.vault.azure import AzureBlobBackend
from frostpoint.vault.backend import Backend
from frostpoint.vault.errors import VaultError
from frostpoint.vault.format import BLOCK_SIZE
from frostpoint.vault.memory import MemoryBackend
from test_vault import (
    SIZE,
    allocated,
    is_hole,
    make_image,
    rand_block,
    sha256,
    standard_image,
    text_block,
)
from test_vault_azure import CONTAINER, azurite  # noqa: F401 - the Azurite fixture

BS = BLOCK_SIZE  # the block size of new vaults
KINDS = ["local", "azure", "memory"]


@dataclass
class Store:
    """One place a vault lives, on one kind of backend."""

    kind: str
    fresh: Callable[[], Backend]        # a new Backend object on the same storage
    elsewhere: Callable[[], Backend]    # an empty location of the same kind
    put_hidden: Callable[[str, bytes], None]  # a hidden name, as another writer leaves


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    kind = request.param
    if kind == "local":
        root = tmp_path / "vault"

        def hidden_file(name: str, data: bytes) -> None:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        return Store(kind, lambda: LocalBackend(root),
                     lambda: LocalBackend(tmp_path / f"empty-{uuid.uuid4().hex[:6]}"),
                     hidden_file)
    if kind == "azure":
        conn = request.getfixturevalue("azurite")  # started only for the Azure runs
        prefix = f"t-{uuid.uuid4().hex[:12]}"

        def hidden_blob(name: str, data: bytes) -> None:
            AzureBlobBackend(conn, CONTAINER)._container.upload_blob(f"{prefix}/{name}", data)
        return Store(kind, lambda: AzureBlobBackend(conn, CONTAINER, prefix),
                     lambda: AzureBlobBackend(conn, CONTAINER, f"{prefix}-none"),
                     hidden_blob)
    mem = MemoryBackend()  # "the same storage" is the same object: it is the storage
    return Store(kind, lambda: mem, MemoryBackend, mem.put_hidden)


@pytest.fixture
def backend(store: Store) -> Backend:
    return store.fresh()


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def vault(store: Store, key: bytes) -> Vault:
    return Vault.create(store.fresh(), key)


# --- the Backend contract ------------------------------------------------------------

def test_backend_contract(backend: Backend, store: Store) -> None:
    b = backend
    b.put("packs/ab/abcd", b"1")
    b.put("packs/cd/cdef", b"22")
    b.put("index/abcd", b"333")
    b.put("packs/ab/abcd", b"4444")  # atomic replace
    b.put("empty", b"")
    assert b.get("packs/ab/abcd") == b"4444"
    assert b.get("empty") == b""
    assert b.get_range("packs/ab/abcd", 1, 2) == b"44"
    assert b.get_range("packs/ab/abcd", 2, 100) == b"44"   # short at the end
    assert b.get_range("packs/ab/abcd", 4, 10) == b""      # at the end
    assert b.get_range("packs/ab/abcd", 99, 10) == b""     # past the end
    assert b.get_range("packs/ab/abcd", 0, 0) == b""
    assert b.list("packs/") == ["packs/ab/abcd", "packs/cd/cdef"]
    assert b.list("packs/c") == ["packs/cd/cdef"]
    assert b.list("") == ["empty", "index/abcd", "packs/ab/abcd", "packs/cd/cdef"]
    assert b.list("manifests/") == []
    assert b.exists("index/abcd") and not b.exists("index/nope")
    assert not b.exists("packs/ab")  # a "directory" is not an object

    # hidden names written by someone else are not vault objects
    # (a crashed local put's temp file, say) ...
    store.put_hidden("index/.abcd.xyz.tmp", b"half")
    store.put_hidden(".trash/x", b"old")
    assert b.list("index/") == ["index/abcd"]
    assert ".trash/x" not in b.list("")

    for missing in ("index/nope", "nope/deeper/still"):
        with pytest.raises(FileNotFoundError):
            b.get(missing)
        with pytest.raises(FileNotFoundError):
            b.get_range(missing, 0, 10)
        with pytest.raises(FileNotFoundError):
            b.get_range(missing, 0, 0)
    with pytest.raises(ValueError):
        b.get_range("index/abcd", -1, 1)
    b.delete("index/abcd")
    b.delete("index/abcd")  # idempotent
    b.delete("never/was")
    assert not b.exists("index/abcd")
    assert b.list("index/") == []
    for bad in ("", "/abs", "a/../b", "a//b", ".hidden", "a/./b", "a\\b"):
        with pytest.raises(ValueError):
            b.put(bad, b"x")


def test_large_object_round_trips(backend: Backend) -> None:
    # Bigger than one Put Blob (staged blocks committed at once); crosses blocks.
    data = random.Random(7).randbytes(20 * 1024 * 1024 + 123)
    backend.put("packs/00/big", data)
    assert backend.get("packs/00/big") == data
    off = 8 * 1024 * 1024 - 10
    assert backend.get_range("packs/00/big", off, 5 * BS) == data[off:off + 5 * BS]
    assert backend.get_range("packs/00/big", len(data) - 3, 100) == data[-3:]
    # a smaller replacement is whole, with no leftover blocks of the old one
    backend.put("packs/00/big", b"small")
    assert backend.get("packs/00/big") == b"small"


# --- the vault over it: round trip and dedup -----------------------------------------


def test_round_trip_is_identical_and_sparse(tmp_path: Path, store: Store, vault: Vault,
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
    v2 = Vault.open(store.fresh(), key)
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


def test_second_backup_stores_only_changed_block(tmp_path: Path, store: Store, vault: Vault,
                                                 key: bytes) -> None:
    img = standard_image(tmp_path / "disk0.img")
    vault.backup("rp1", {"disk0": img})
    old_sum = sha256(img)

    with open(img, "r+b") as f:
        f.seek(1 * BS)
        f.write(text_block(99))
    new_sum = sha256(img)
    assert new_sum != old_sum

    v2 = Vault.open(store.fresh(), key)
    stats = v2.backup("rp2", {"disk0": img})
    assert stats.chunks_new == 1
    assert stats.chunks_reused == 3
    assert stats.bytes_stored < BS // 2   # one compressed text block

    for rp, want in (("rp1", old_sum), ("rp2", new_sum)):
        out = tmp_path / f"{rp}.img"
        v2.restore_disk(rp, "disk0", out)
        assert sha256(out) == want
    assert v2.list_restore_points() == ["rp1", "rp2"]


def test_zero_blocks_are_never_stored(tmp_path: Path, vault: Vault) -> None:
    img = make_image(tmp_path / "zero.img", 3 * BS + 100, {1: bytes(BS)})
    stats = vault.backup("z", {"disk0": img})
    assert stats.zero_blocks == 4
    assert stats.chunks_new == 0 and stats.bytes_stored == 0
    assert vault.backend.list("packs/") == []
    out = tmp_path / "out.img"
    vault.restore_disk("z", "disk0", out)
    assert out.stat().st_size == 3 * BS + 100
    assert allocated(out) == 0
    assert sha256(out) == sha256(img)


def test_vault_round_trip_dedup_and_verify(tmp_path: Path, store: Store, backend: Backend,
                                           key: bytes) -> None:
    Vault.create(backend, key)
    img = standard_image(tmp_path / "disk0.img")
    vault = Vault.open(store.fresh(), key)
    stats = vault.backup("rp1", {"disk0": img}, labels={"vm": "web01"})
    assert stats.bytes_total == stats.bytes_scanned == SIZE
    assert stats.bytes_read == SIZE - BS   # the hole is never read
    assert stats.zero_blocks == 2
    assert stats.chunks_new == 3 and stats.chunks_reused == 1
    assert BS < stats.bytes_stored < BS + BS // 2
    assert len(backend.list("packs/")) == 1 and len(backend.list("index/")) == 1
    assert backend.list("manifests/") == ["manifests/rp1"]

    v2 = Vault.open(store.fresh(), key)
    assert v2.list_restore_points() == ["rp1"]
    assert v2.read_manifest("rp1")["labels"] == {"vm": "web01"}
    out = tmp_path / "restored.img"
    v2.restore_disk("rp1", "disk0", out)
    assert out.stat().st_size == SIZE
    assert sha256(out) == sha256(img)

    # change one block: the next backup stores one new chunk
    old_sum = sha256(img)
    with open(img, "r+b") as f:
        f.seek(1 * BS)
        f.write(text_block(99))
    new_sum = sha256(img)
    stats = v2.backup("rp2", {"disk0": img})
    assert stats.chunks_new == 1 and stats.chunks_reused == 3
    assert stats.bytes_stored < BS // 2

    v3 = Vault.open(store.fresh(), key)
    assert v3.list_restore_points() == ["rp1", "rp2"]
    for rp, want in (("rp1", old_sum), ("rp2", new_sum)):
        o = tmp_path / f"{rp}.img"
        v3.restore_disk(rp, "disk0", o)
        assert sha256(o) == want
    report = v3.verify()
    assert report.ok, report
    assert report.restore_points == 2 and report.chunks_checked == 4

    v3.delete_restore_point("rp1")
    assert v3.list_restore_points() == ["rp2"]
    with pytest.raises(VaultError) as e:
        Vault.create(store.fresh(), key)
    assert catalog_error(e.value).code == "Conflict"
    with pytest.raises(VaultError) as e:
        Vault.open(store.fresh(), os.urandom(32))
    assert catalog_error(e.value).code == "InvalidInput"
    with pytest.raises(VaultError) as e:
        Vault.open(store.elsewhere(), key)
    assert catalog_error(e.value).code == "NotFound"


# --- keys and damage -----------------------------------------------------------------


def test_wrong_key_fails_clearly(store: Store, vault: Vault) -> None:
    with pytest.raises(VaultError) as e:
        Vault.open(store.fresh(), os.urandom(32))
    assert catalog_error(e.value).code == "InvalidInput"
    assert "wrong vault key" in str(e.value)
    with pytest.raises(VaultError) as e:
        Vault.open(store.fresh(), b"short")
    assert catalog_error(e.value).code == "InvalidInput"


def test_open_missing_and_create_twice(store: Store, key: bytes, vault: Vault) -> None:
    with pytest.raises(VaultError) as e:
        Vault.open(store.elsewhere(), key)
    assert catalog_error(e.value).code == "NotFound"
    with pytest.raises(VaultError) as e:
        Vault.create(store.fresh(), key)
    assert catalog_error(e.value).code == "Conflict"


def test_flipped_byte_is_found_and_restore_refuses(tmp_path: Path, store: Store, vault: Vault,
                                                   key: bytes) -> None:
    img1 = make_image(tmp_path / "d1.img", 3 * BS, {0: rand_block(20), 2: text_block(21)})
    img2 = make_image(tmp_path / "d2.img", 2 * BS, {0: rand_block(22)})
    vault.backup("rp1", {"disk0": img1})
    vault.backup("rp2", {"disk0": img2})

    cid = vault.read_manifest("rp1")["disks"]["disk0"]["blocks"][0]
    loc = vault.locate_chunk(cid)
    assert loc is not None
    pack_id, off, length = loc
    name = f"packs/{pack_id[:2]}/{pack_id}"
    data = bytearray(vault.backend.get(name))   # read, flip one bit, write back
    data[off + length // 2] ^= 0x01
    vault.backend.put(name, bytes(data))

    v2 = Vault.open(store.fresh(), key)
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

    vault.backend.delete(name)             # and a pack gone altogether
    report = Vault.open(store.fresh(), key).verify()
    assert cid in [p.chunk_id for p in report.missing]   # with the others in that pack
    assert {p.pack for p in report.missing} == {pack_id} and report.damaged == []


def test_missing_pack_is_reported(tmp_path: Path, store: Store, vault: Vault, key: bytes) -> None:
    img = make_image(tmp_path / "d.img", BS, {0: rand_block(30)})
    vault.backup("rp1", {"disk0": img})
    cid = vault.read_manifest("rp1")["disks"]["disk0"]["blocks"][0]
    pack_id = vault.locate_chunk(cid)[0]
    vault.backend.delete(f"packs/{pack_id[:2]}/{pack_id}")

    v2 = Vault.open(store.fresh(), key)
    report = v2.verify()
    assert [p.chunk_id for p in report.missing] == [cid]
    assert report.missing[0].refs == [ChunkRef("rp1", "disk0", 0)]
    with pytest.raises(VaultError) as e:
        v2.restore_disk("rp1", "disk0", tmp_path / "out.img")
    assert catalog_error(e.value).code == "VaultDataCorrupt"
    assert not (tmp_path / "out.img").exists()


def test_damaged_index_is_reported_and_healed_by_next_backup(
        tmp_path: Path, store: Store, vault: Vault, key: bytes) -> None:
    img = make_image(tmp_path / "d.img", 2 * BS, {0: rand_block(60), 1: text_block(61)})
    vault.backup("rp1", {"disk0": img})
    (index_name,) = vault.backend.list("index/")
    data = bytearray(vault.backend.get(index_name))
    data[-1] ^= 0xFF
    vault.backend.put(index_name, bytes(data))
    pack_id = index_name.split("/")[1]

    v2 = Vault.open(store.fresh(), key)   # still opens
    assert v2.damaged_indexes == [pack_id]
    report = v2.verify()
    assert not report.ok
    assert report.damaged_indexes == [pack_id]
    assert len(report.missing) == 2
    # the next backup stores the chunks again, and that restore point is whole
    assert v2.backup("rp2", {"disk0": img}).chunks_new == 2
    out = tmp_path / "out.img"
    v2.restore_disk("rp2", "disk0", out)
    assert sha256(out) == sha256(img)


# --- restore points, cancel, progress ------------------------------------------------


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


def test_cancel_lists_nothing_and_keeps_flushed_packs(tmp_path: Path, store: Store,
                                                      key: bytes,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # pack target 1 byte: every chunk is its own pack, so some are flushed before
    # the cancel and must be reusable afterwards.
    monkeypatch.setattr(pacing, "CANCEL_CHECK_S", 0.0)  # ask before every block
    vault = Vault.create(store.fresh(), key, pack_target_size=1)
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

    v2 = Vault.open(store.fresh(), key)
    assert v2.list_restore_points() == []
    assert v2.verify().ok
    stats = v2.backup("rp1", {"disk0": img})
    assert stats.chunks_reused >= 1
    assert stats.chunks_new + stats.chunks_reused == 8
    out = tmp_path / "out.img"
    v2.restore_disk("rp1", "disk0", out)
    assert sha256(out) == sha256(img)


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


# --- block size ------------------------------------------------------------------------


def test_block_size_is_per_vault_and_read_from_storage(tmp_path: Path, store: Store,
                                                       key: bytes) -> None:
    # A vault made with 4 MiB blocks (as before 1 MiB became the default) keeps them:
    # backups after a reopen use the config's size, manifests record it, restore follows.
    big = 4 * 1024 * 1024
    Vault.create(store.fresh(), key, block_size=big)
    img = make_image(tmp_path / "d.img", 3 * big + 5, {0: text_block(1, 2 * big)})
    v = Vault.open(store.fresh(), key)
    assert v.config.block_size == big
    stats = v.backup("rp1", {"disk0": img})
    assert stats.blocks_total == 4 and stats.chunks_new == 2
    assert v.read_manifest("rp1")["disks"]["disk0"]["block_size"] == big
    out = tmp_path / "out.img"
    v.restore_disk("rp1", "disk0", out)
    assert sha256(out) == sha256(img)
    assert v.verify().ok


@pytest.mark.parametrize("bad", [0, 4096, 64 * 1024 + 1, 32 * 1024 * 1024])
def test_block_size_out_of_range_is_refused(store: Store, key: bytes, bad: int) -> None:
    with pytest.raises(VaultError) as e:
        Vault.create(store.fresh(), key, block_size=bad)
    assert catalog_error(e.value).code == "InvalidInput"
    assert not store.fresh().exists("config")


# --- GC and verify, cancelled -----------------------------------------------------------

def test_a_gc_cancelled_mid_sweep_leaves_the_vault_consistent(
        tmp_path: Path, store: Store, key: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pacing, "CANCEL_CHECK_S", 0.0)  # ask at every step
    vault = Vault.create(store.fresh(), key, pack_target_size=1)  # a pack per chunk
    a = make_image(tmp_path / "a.img", 4 * BS, {i: rand_block(70 + i) for i in range(4)})
    b = make_image(tmp_path / "b.img", 2 * BS, {i: rand_block(80 + i) for i in range(2)})
    vault.backup("rp-a", {"d": a})
    vault.backup("rp-b", {"d": b})
    vault.delete_restore_point("rp-a")
    assert vault.gc(grace_seconds=0).packs_pending == 4  # the first mark
    # The second run would delete the 4 packs; it is cancelled after deleting 2. It
    # asks at the one manifest left, at each of the 6 indexes, before the sweep, and
    # before each pack it deletes.
    asked = 0

    def should_cancel() -> bool:
        nonlocal asked
        asked += 1
        return asked > 1 + 6 + 1 + 2

    seen: list[tuple[int, int]] = []
    with pytest.raises(VaultError) as e:
        vault.gc(grace_seconds=0, progress=lambda d, t: seen.append((d, t)),
                 should_cancel=should_cancel)
    assert catalog_error(e.value).code == "JobCancelled"
    assert seen and [d for d, _ in seen] == sorted(d for d, _ in seen)
    backend = store.fresh()
    packs = backend.list("packs/")
    assert len(packs) == 4, "2 of rp-a's 4 packs deleted, then it stopped"
    for name in backend.list("index/"):  # an index never outlives its pack
        p = name.split("/")[1]
        assert backend.exists(f"packs/{p[:2]}/{p}"), f"index {p} without its pack"
    again = Vault.open(backend, key)
    assert again.damaged_indexes == [] and again.verify().ok
    out = tmp_path / "out.img"
    again.restore_disk("rp-b", "d", out)
    assert sha256(out) == sha256(b)
    # the packs left keep their first mark: the next run deletes them, no new grace
    rest = again.gc(grace_seconds=0)
    assert rest.packs_deleted == 2 and rest.packs_pending == 0
    assert len(backend.list("packs/")) == 2 and again.verify().ok


def test_a_gc_cancelled_before_its_sweep_changes_nothing(
        tmp_path: Path, store: Store, vault: Vault) -> None:
    a = make_image(tmp_path / "a.img", 2 * BS, {0: rand_block(90), 1: rand_block(91)})
    vault.backup("rp-a", {"d": a})
    vault.delete_restore_point("rp-a")
    backend = store.fresh()
    before = {n: backend.get(n) for n in backend.list("")}
    with pytest.raises(VaultError) as e:
        vault.gc(grace_seconds=0, should_cancel=lambda: True)
    assert catalog_error(e.value).code == "JobCancelled"
    assert {n: backend.get(n) for n in backend.list("")} == before  # not even a mark
    assert vault.gc(grace_seconds=0).packs_pending == 1


def test_verify_can_be_cancelled(tmp_path: Path, vault: Vault,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pacing, "CANCEL_CHECK_S", 0.0)
    img = make_image(tmp_path / "d.img", 3 * BS, {i: rand_block(95 + i) for i in range(3)})
    vault.backup("rp1", {"d": img})
    asked = 0

    def should_cancel() -> bool:
        nonlocal asked
        asked += 1
        return asked > 1  # after the manifests, at the first pack
    with pytest.raises(VaultError) as e:
        vault.verify(should_cancel=should_cancel)
    assert catalog_error(e.value).code == "JobCancelled"
    assert asked == 2
    seen: list[tuple[int, int]] = []
    report = vault.verify(progress=lambda d, t: seen.append((d, t)), should_cancel=lambda: False)
    assert report.ok and report.chunks_checked == 3 and seen[-1] == (3, 3)
