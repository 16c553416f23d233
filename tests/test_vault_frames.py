"""Chunks of frames, and frames kept in a base chunk (format version 3): a partly
changed block stores only the frames its change touches, and gets the id and content
of the same block read whole; restore, verify and GC follow the base."""

from __future__ import annotations

import json
import os
from pathlib import Path

import blake3
import pytest

from frostpoint.service.vault_errors import catalog_error
from frostpoint.vault import LocalBackend, Vault, VaultKeys
from frostpoint.vault import format as fmt
from frostpoint.vault.archiver import Archiver
from frostpoint.vault.crypto import FRAME, frames_of
from frostpoint.vault.errors import VaultError
from frostpoint.vault.packer import PackWriter
from frostpoint.vault.reports import BackupStats
from frostpoint.vault.restorer import check_chunk
from test_vault import rand_block, sha256, text_block

MiB = 1 << 20
BS = 4 * MiB


def test_chunk_id_is_keyed_hash_of_frame_digests() -> None:
    keys = VaultKeys(os.urandom(32))
    data = text_block(1, BS + 12345)  # the last frame is short
    digests = keys.frame_digests(data)
    assert len(digests) == frames_of(len(data)) == BS // FRAME + 1
    assert digests[0] == blake3.blake3(data[:FRAME], key=keys.frame_key).digest()
    assert digests[-1] == blake3.blake3(data[BS:], key=keys.frame_key).digest()
    cid = keys.chunk_id(data)
    assert cid == blake3.blake3(b"".join(digests), key=keys.id_key).digest()
    # distinct keys: a frame digest and a chunk id never coincide by construction
    assert keys.frame_key != keys.id_key
    assert keys.chunk_id(data[:FRAME]) != digests[0]
    assert keys.chunk_id(data[:-1]) != cid


def test_older_format_vault_is_refused_clearly(tmp_path: Path) -> None:
    d = tmp_path / "v2"
    Vault.create(LocalBackend(d), os.urandom(32))
    doc = json.loads((d / "config").read_text())
    doc["version"] = 2
    (d / "config").write_text(json.dumps(doc))
    with pytest.raises(VaultError) as e:
        Vault.open(LocalBackend(d), os.urandom(32))
    assert catalog_error(e.value).code == "InvalidInput"
    assert "version 2" in str(e.value) and f"version {fmt.FORMAT_VERSION}" in str(e.value)


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def vault(tmp_path: Path, key: bytes) -> Vault:
    return Vault.create(LocalBackend(tmp_path / "vault"), key, block_size=BS)


def _stored(vault: Vault, disk: Path) -> bytes:
    """Back up a one-block disk in full and return the chunk id of its block."""
    rp = f"rp{len(vault.list_restore_points())}"
    vault.backup(rp, {"d": disk})
    h = vault.read_manifest(rp)["disks"]["d"]["blocks"][0]
    return bytes.fromhex(h) if h else b""


def _patch(vault: Vault, disk: Path, prev: bytes | None, ranges: list[tuple[int, int, bool]],
           keep: bool = False) -> tuple[bytes, bytes | None, bytes | None]:
    """The patched block 0 of disk; keep=True also stores it (pack and index)."""
    writer = PackWriter(vault, BackupStats())
    fd = os.open(disk, os.O_RDONLY)
    try:
        cid, sealed, base = Archiver(vault, writer).prepare_patch(fd, 0, BS, prev, ranges, "d")
        if keep and cid:
            writer.add(cid, sealed, base)
            writer.finish()
        return cid, sealed, base
    finally:
        os.close(fd)
        writer.abort()


def _stored_frames(vault: Vault, cid: bytes, sealed: bytes) -> list[int]:
    return [k for k, f in enumerate(vault._keys.open_chunk(sealed, cid).frames)
            if f.stored is not None]


@pytest.mark.parametrize("kind", ["text", "random"])
def test_patched_block_stores_only_touched_frames_and_has_the_id_of_the_whole_block(
        tmp_path: Path, vault: Vault, kind: str) -> None:
    block = text_block if kind == "text" else rand_block
    old = block(5)
    disk = tmp_path / "d.img"
    disk.write_bytes(old)
    prev = _stored(vault, disk)
    new = bytearray(old)
    new[FRAME - 100:FRAME + 100] = block(6, 200)      # across frames 0 and 1
    new[3 * FRAME + 10:3 * FRAME + 4096] = bytes(4086)  # a hole in frame 3
    disk.write_bytes(new)
    cid, sealed, base = _patch(vault, disk, prev, [(FRAME - 100, FRAME + 100, True),
                                                   (3 * FRAME + 10, 3 * FRAME + 4096, False)])
    assert cid == vault._keys.chunk_id(bytes(new))
    assert sealed is not None and base == prev
    assert _stored_frames(vault, cid, sealed) == [0, 1, 3]  # the rest: in the base
    assert len(sealed) < 3 * FRAME + 4096 < len(old)
    plains = check_chunk(vault, cid, "test", sealed, {})  # frames taken from the base
    assert b"".join(plains) == new
    assert _stored(vault, disk) == cid  # the same block read whole: same id (dedup)


def test_a_patch_of_a_patch_names_the_first_base(tmp_path: Path, vault: Vault) -> None:
    """One hop at most: the second change copies the frames the first one stored and
    names the rest in the full chunk."""
    old = text_block(20)
    disk = tmp_path / "d.img"
    disk.write_bytes(old)
    full = _stored(vault, disk)
    one = bytearray(old)
    one[100:200] = b"x" * 100                          # frame 0
    disk.write_bytes(one)
    first, _, base1 = _patch(vault, disk, full, [(100, 200, True)], keep=True)
    assert base1 == full
    two = bytearray(one)
    two[5 * FRAME + 7:5 * FRAME + 9] = b"yy"           # frame 5
    disk.write_bytes(two)
    second, sealed, base2 = _patch(vault, disk, first, [(5 * FRAME + 7, 5 * FRAME + 9, True)])
    assert sealed is not None and base2 == full
    assert _stored_frames(vault, second, sealed) == [0, 5]
    assert b"".join(check_chunk(vault, second, "test", sealed, {})) == two
    assert second == vault._keys.chunk_id(bytes(two))


def test_patch_over_a_zero_block_and_back_to_zeros(tmp_path: Path, vault: Vault) -> None:
    disk = tmp_path / "d.img"
    data = bytearray(BS)
    data[2 * FRAME:2 * FRAME + 4096] = text_block(7, 4096)
    disk.write_bytes(data)
    cid, sealed, base = _patch(vault, disk, None, [(2 * FRAME, 2 * FRAME + 4096, True)])
    assert cid == vault._keys.chunk_id(bytes(data)) and sealed is not None
    assert base is None  # zero frames are stored (a few bytes each), no base
    assert b"".join(check_chunk(vault, cid, "test", sealed, {})) == data
    prev = _stored(vault, disk)
    assert prev == cid
    # the only data becomes a hole again: the block is all zeros, recorded as such
    data[2 * FRAME:2 * FRAME + 4096] = bytes(4096)
    disk.write_bytes(data)
    assert _patch(vault, disk, prev, [(2 * FRAME, 2 * FRAME + 4096, False)]) == (
        b"", None, None)


def test_wrong_frame_digest_is_found_by_verify_and_restore(tmp_path: Path,
                                                           vault: Vault) -> None:
    data = text_block(8)
    disk = tmp_path / "d.img"
    disk.write_bytes(data)
    cid = _stored(vault, disk)
    keys = vault._keys
    # A chunk whose frame table names the right id but one wrong frame digest: a
    # writer bug the AEAD cannot see. verify and restore re-hash the plaintext.
    digests = keys.frame_digests(data)
    forged_digests = [digests[0], keys.frame_digests(text_block(9))[1], *digests[2:]]
    forged = keys.seal_chunk(cid, keys.encode_block(data, forged_digests))
    _replace_chunk(tmp_path / "vault", vault, cid, forged)
    report = vault.verify()
    assert [p.chunk_id for p in report.damaged] == [cid.hex()]
    assert "digest" in report.damaged[0].reason
    with pytest.raises(VaultError) as e:
        vault.restore_disk("rp0", "d", tmp_path / "out.img")
    assert catalog_error(e.value).code == "VaultDataCorrupt"


def _replace_chunk(root: Path, vault: Vault, cid: bytes, sealed: bytes) -> None:
    pack, off, length = vault.locate_chunk(cid.hex())
    pack_path = root / "packs" / pack[:2] / pack
    blob = bytearray(pack_path.read_bytes())
    blob[off:off + length] = sealed
    pack_path.write_bytes(bytes(blob))
    vault._index.drop(cid)
    vault._index.add(cid, fmt.pack_name(pack), off, len(sealed), None)


def _two_restore_points(tmp_path: Path, vault: Vault) -> tuple[Path, bytes, bytes]:
    """rp0: two blocks in full; rp1: block 1 patched over rp0's chunk (its base)."""
    disk = tmp_path / "d.img"
    old = text_block(10) + rand_block(11)
    disk.write_bytes(old)
    vault.backup("rp0", {"d": disk})
    new = bytearray(old)
    new[BS + 5:BS + 9000] = text_block(12, 8995)
    disk.write_bytes(new)
    base = bytes.fromhex(vault.read_manifest("rp0")["disks"]["d"]["blocks"][1])
    fd = os.open(disk, os.O_RDONLY)
    writer = PackWriter(vault, BackupStats())
    try:
        cid, sealed, got = Archiver(vault, writer).prepare_patch(
            fd, BS, BS, base, [(5, 9000, True)], "d")
        writer.add(cid, sealed, got)
        writer.finish()
    finally:
        os.close(fd)
    assert got == base
    vault.backup("rp1", {"d": disk})  # block 1 dedups against the patched chunk
    assert vault.read_manifest("rp1")["disks"]["d"]["blocks"][1] == cid.hex()
    return disk, base, cid


def test_restore_is_identical_after_patched_incremental(tmp_path: Path, vault: Vault,
                                                        key: bytes) -> None:
    disk, base, cid = _two_restore_points(tmp_path, vault)
    out = tmp_path / "out.img"
    vault.restore_disk("rp1", "d", out)
    assert sha256(out) == sha256(disk)
    assert vault.verify().ok
    # the base is named in the pack's index: a vault opened afresh knows it
    again = Vault.open(LocalBackend(tmp_path / "vault"), key)
    assert again._index.bases() == {cid: base}
    again.restore_disk("rp1", "d", out)
    assert sha256(out) == sha256(disk)


def test_gc_keeps_a_base_that_only_a_patch_uses(tmp_path: Path, vault: Vault) -> None:
    disk, base, cid = _two_restore_points(tmp_path, vault)
    vault.delete_restore_point("rp0")
    for _ in range(2):  # the first mark records unreferenced packs, the second sweeps
        vault.gc(grace_seconds=0)
    assert vault.locate_chunk(base.hex()) is not None
    out = tmp_path / "out.img"
    vault.restore_disk("rp1", "d", out)
    assert sha256(out) == sha256(disk)
    assert vault.verify().ok
    vault.delete_restore_point("rp1")
    for _ in range(2):
        vault.gc(grace_seconds=0)
    assert vault.locate_chunk(base.hex()) is None and vault.locate_chunk(cid.hex()) is None
    assert vault._index.bases() == {}


def test_damaged_base_is_reported_for_the_restore_points_of_its_patches(
        tmp_path: Path, vault: Vault) -> None:
    _disk, base, cid = _two_restore_points(tmp_path, vault)
    pack, off, length = vault.locate_chunk(base.hex())
    pack_path = tmp_path / "vault" / "packs" / pack[:2] / pack
    blob = bytearray(pack_path.read_bytes())
    blob[off + length - 100] ^= 0xFF  # in the base's sealed frame data
    pack_path.write_bytes(bytes(blob))
    report = vault.verify()
    damaged = {p.chunk_id: p for p in report.damaged}
    assert set(damaged) == {base.hex(), cid.hex()}
    assert {r.restore_point for r in damaged[cid.hex()].refs} == {"rp1"}
    assert f"base chunk {base.hex()}" in damaged[cid.hex()].reason
    with pytest.raises(VaultError) as e:
        vault.restore_disk("rp1", "d", tmp_path / "out.img")
    assert catalog_error(e.value).code == "VaultDataCorrupt" and base.hex() in e.value.detail
    assert not (tmp_path / "out.img").exists()


def test_gc_keeps_the_base_of_an_unused_chunk_in_a_kept_pack(tmp_path: Path,
                                                             vault: Vault) -> None:
    """A chunk no restore point uses, in a pack that a live chunk keeps, stays in the
    index, and a later backup may dedup against it: GC must keep its base too."""
    disk = tmp_path / "d.img"
    old = text_block(30)
    disk.write_bytes(old)
    base = _stored(vault, disk)  # rp0: the full chunk, in a pack of its own
    new = bytearray(old)
    new[10:20] = b"0123456789"
    disk.write_bytes(new)
    other_data = rand_block(31)
    writer = PackWriter(vault, BackupStats())
    fd = os.open(disk, os.O_RDONLY)
    try:  # the patch and an unrelated chunk, in one pack
        patch, sealed, got = Archiver(vault, writer).prepare_patch(
            fd, 0, BS, base, [(10, 20, True)], "d")
        other, other_sealed, _ = Archiver(vault, writer).prepare(other_data)
        writer.add(patch, sealed, got)
        writer.add(other, other_sealed, None)
        writer.finish()
    finally:
        os.close(fd)
    assert got == base
    assert vault.locate_chunk(patch.hex())[0] == vault.locate_chunk(other.hex())[0]
    keeper = tmp_path / "k.img"
    keeper.write_bytes(other_data)
    vault.backup("keeper", {"d": keeper})  # uses the unrelated chunk only
    vault.delete_restore_point("rp0")      # nothing uses the base or the patch now
    for _ in range(2):
        vault.gc(grace_seconds=0)
    assert vault.locate_chunk(patch.hex()) is not None  # kept with its pack...
    assert vault.locate_chunk(base.hex()) is not None   # ...and so its base
    vault.backup("again", {"d": disk})  # the same block again: dedups to the patch
    assert vault.read_manifest("again")["disks"]["d"]["blocks"][0] == patch.hex()
    out = tmp_path / "out.img"
    vault.restore_disk("again", "d", out)
    assert out.read_bytes() == bytes(new)
    assert vault.verify().ok


def test_a_previous_chunk_whose_pack_is_gone_means_a_whole_read(tmp_path: Path,
                                                               vault: Vault) -> None:
    disk = tmp_path / "d.img"
    data = bytearray(text_block(40))
    disk.write_bytes(data)
    prev = _stored(vault, disk)
    pack, _off, _n = vault.locate_chunk(prev.hex())
    (tmp_path / "vault" / "packs" / pack[:2] / pack).unlink()
    data[100:200] = b"z" * 100
    disk.write_bytes(data)
    cid, sealed, base = _patch(vault, disk, prev, [(100, 200, True)])
    assert cid == vault._keys.chunk_id(bytes(data)) and base is None  # built from the disk
    assert sealed is not None and _stored_frames(vault, cid, sealed) == list(
        range(BS // FRAME))
