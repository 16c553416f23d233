"""Chunk ids from frame digests (format version 2): a patched block decompresses and
hashes only the frames it changes, and gets the id and content of the same block read
whole."""

from __future__ import annotations

import json
import os
from pathlib import Path

import blake3
import pytest

from frostpoint.errors.catalog import FrostpointError
from frostpoint.vault import LocalBackend, Vault, VaultKeys
from frostpoint.vault import format as fmt
from frostpoint.vault.crypto import FRAME
from frostpoint.vault.store import BackupStats, _PackWriter
from test_vault import rand_block, sha256, text_block

MiB = 1 << 20
BS = 4 * MiB


def test_chunk_id_is_keyed_hash_of_frame_digests() -> None:
    keys = VaultKeys(os.urandom(32))
    data = text_block(1, BS + 12345)  # five frames, the last one short
    digests = keys.frame_digests(data)
    assert len(digests) == 5
    assert digests[0] == blake3.blake3(data[:FRAME], key=keys.frame_key).digest()
    assert digests[4] == blake3.blake3(data[4 * FRAME:], key=keys.frame_key).digest()
    cid = keys.chunk_id(data)
    assert cid == blake3.blake3(b"".join(digests), key=keys.id_key).digest()
    # distinct keys: a frame digest and a chunk id never coincide by construction
    assert keys.frame_key != keys.id_key
    assert keys.chunk_id(data[:FRAME]) != digests[0]
    assert keys.chunk_id(data[:-1]) != cid


def test_version_1_vault_is_refused_clearly(vault_dir_v1: Path) -> None:
    with pytest.raises(FrostpointError) as e:
        Vault.open(LocalBackend(vault_dir_v1), os.urandom(32))
    assert e.value.code == "InvalidInput"
    assert "version 1" in str(e.value) and f"version {fmt.FORMAT_VERSION}" in str(e.value)


@pytest.fixture
def vault_dir_v1(tmp_path: Path) -> Path:
    d = tmp_path / "v1"
    Vault.create(LocalBackend(d), os.urandom(32))
    doc = json.loads((d / "config").read_text())
    doc["version"] = 1
    (d / "config").write_text(json.dumps(doc))
    return d


@pytest.fixture
def vault(tmp_path: Path) -> Vault:
    return Vault.create(LocalBackend(tmp_path / "vault"), os.urandom(32), block_size=BS)


def _stored(vault: Vault, disk: Path) -> bytes:
    """Back up a one-block disk in full and return the chunk id of its block."""
    rp = f"rp{len(vault.list_restore_points())}"
    vault.backup(rp, {"d": disk})
    h = vault.read_manifest(rp)["disks"]["d"]["blocks"][0]
    return bytes.fromhex(h) if h else b""


def _patch(vault: Vault, disk: Path, prev: bytes | None, ranges: list[tuple[int, int, bool]]
           ) -> tuple[bytes, bytes | None]:
    writer = _PackWriter(vault, BackupStats())
    try:
        fd = os.open(disk, os.O_RDONLY)
        try:
            return vault._prepare_patch(writer, fd, 0, BS, prev, ranges, "d")
        finally:
            os.close(fd)
    finally:
        writer.abort()


@pytest.mark.parametrize("kind", ["text", "random"])
def test_patched_block_has_the_id_and_content_of_the_block_read_whole(
        tmp_path: Path, vault: Vault, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    block = text_block if kind == "text" else rand_block
    old = block(5)
    disk = tmp_path / "d.img"
    disk.write_bytes(old)
    prev = _stored(vault, disk)
    new = bytearray(old)
    new[FRAME - 100:FRAME + 100] = block(6, 200)      # across frames 0 and 1
    new[3 * FRAME + 10:3 * FRAME + 4096] = bytes(4086)  # a hole in frame 3
    disk.write_bytes(new)
    opened = []
    real = vault._keys.frame_plaintext
    monkeypatch.setattr(vault._keys, "frame_plaintext",
                        lambda f: opened.append(f) or real(f))
    cid, sealed = _patch(vault, disk, prev, [(FRAME - 100, FRAME + 100, True),
                                             (3 * FRAME + 10, 3 * FRAME + 4096, False)])
    assert len(opened) == 3  # frames 0, 1 and 3; frame 2 is copied, not decompressed
    assert cid == vault._keys.chunk_id(bytes(new))
    assert sealed is not None
    plains, actual = vault._keys.open_chunk(sealed, fmt.chunk_aad(cid))
    assert actual == cid and b"".join(plains) == new
    monkeypatch.undo()
    assert _stored(vault, disk) == cid  # the same block read whole: same id (dedup)


def test_patch_over_a_zero_block_and_back_to_zeros(tmp_path: Path, vault: Vault) -> None:
    disk = tmp_path / "d.img"
    data = bytearray(BS)
    data[2 * FRAME:2 * FRAME + 4096] = text_block(7, 4096)
    disk.write_bytes(data)
    cid, sealed = _patch(vault, disk, None, [(2 * FRAME, 2 * FRAME + 4096, True)])
    assert cid == vault._keys.chunk_id(bytes(data)) and sealed is not None
    assert b"".join(vault._keys.open_chunk(sealed, fmt.chunk_aad(cid))[0]) == data
    prev = _stored(vault, disk)
    assert prev == cid
    # the only data becomes a hole again: the block is all zeros, recorded as such
    assert _patch(vault, disk, prev, [(2 * FRAME, 2 * FRAME + 4096, False)]) == (b"", None)


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
    bad = keys.frame_digests(text_block(9))[1]
    forged_digests = [digests[0], bad, *digests[2:]]
    forged = keys.seal_frames(
        [keys.encode_frame(memoryview(data)[s:s + FRAME], d)
         for s, d in zip(range(0, BS, FRAME), forged_digests, strict=True)],
        fmt.chunk_aad(cid))
    pack, off, length = vault.locate_chunk(cid.hex())
    pack_path = tmp_path / "vault" / "packs" / pack[:2] / pack
    blob = bytearray(pack_path.read_bytes())
    blob[off:off + length] = b""
    blob[off:off] = forged
    pack_path.write_bytes(bytes(blob))
    vault._index[cid] = (vault._index[cid][0], off, len(forged))
    report = vault.verify()
    assert [p.chunk_id for p in report.damaged] == [cid.hex()]
    assert "digest" in report.damaged[0].reason
    with pytest.raises(FrostpointError) as e:
        vault.restore_disk("rp0", "d", tmp_path / "out.img")
    assert e.value.code == "VaultDataCorrupt"


def test_restore_is_identical_after_patched_incremental(tmp_path: Path, vault: Vault
                                                        ) -> None:
    disk = tmp_path / "d.img"
    old = text_block(10) + rand_block(11)
    disk.write_bytes(old)
    vault.backup("rp0", {"d": disk})
    new = bytearray(old)
    new[BS + 5:BS + 9000] = text_block(12, 8995)
    disk.write_bytes(new)
    prev = bytes.fromhex(vault.read_manifest("rp0")["disks"]["d"]["blocks"][1])
    fd = os.open(disk, os.O_RDONLY)
    writer = _PackWriter(vault, BackupStats())
    try:
        cid, sealed = vault._prepare_patch(writer, fd, BS, BS, prev, [(5, 9000, True)], "d")
        writer.add(cid, sealed)
        writer.finish()
    finally:
        os.close(fd)
    vault.backup("rp1", {"d": disk})
    assert vault.read_manifest("rp1")["disks"]["d"]["blocks"][1] == cid.hex()
    out = tmp_path / "out.img"
    vault.restore_disk("rp1", "d", out)
    assert sha256(out) == sha256(disk)
    assert vault.verify().ok
