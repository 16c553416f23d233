"""`config` and `gc/pending` are authenticated with the vault key (format 4)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from frostpoint.service.vault_errors import catalog_error
from frostpoint.vault import LocalBackend, Vault
from frostpoint.vault import format as fmt
from frostpoint.vault.errors import VaultError
from test_vault import rand_block

BS = 64 * 1024


def _changed(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int | str):
        return value
    if isinstance(value, int):
        return value * 2
    try:  # a base64 field: flip one byte of what it holds
        raw = bytearray(base64.b64decode(value, validate=True))
        raw[len(raw) // 2] ^= 1
        return base64.b64encode(bytes(raw)).decode()
    except ValueError:
        return value[:-1] + ("0" if value[-1] != "0" else "1")


def test_every_change_to_the_config_is_refused(tmp_path: Path) -> None:
    key = os.urandom(32)
    d = tmp_path / "v"
    Vault.create(LocalBackend(d), key, block_size=BS)
    good = json.loads((d / "config").read_text())
    fields = [k for k in good if k != "format"]
    assert len(fields) >= 3
    for field in fields:
        doc = dict(good)
        doc[field] = _changed(doc[field])
        assert doc != good, field
        (d / "config").write_text(json.dumps(doc))
        with pytest.raises(VaultError) as e:
            Vault.open(LocalBackend(d), key)
        assert catalog_error(e.value).code in ("InvalidInput", "VaultDataCorrupt"), field
    (d / "config").write_text(json.dumps(good))
    assert Vault.open(LocalBackend(d), key).config.block_size == BS


def test_a_tampered_config_names_the_damage(tmp_path: Path) -> None:
    key = os.urandom(32)
    d = tmp_path / "v"
    Vault.create(LocalBackend(d), key, block_size=BS)
    doc = json.loads((d / "config").read_text())
    doc["settings"] = _changed(doc["settings"])
    (d / "config").write_text(json.dumps(doc))
    with pytest.raises(VaultError) as e:
        Vault.open(LocalBackend(d), key)
    assert catalog_error(e.value).code == "VaultDataCorrupt" and "config" in e.value.detail
    assert "authentication" in e.value.detail
    # A config sealed by another vault of the same key does not open here either.
    other = tmp_path / "w"
    Vault.create(LocalBackend(other), key, block_size=2 * BS)
    theirs = json.loads((other / "config").read_text())
    doc = json.loads((d / "config").read_text())
    doc["settings"] = theirs["settings"]
    (d / "config").write_text(json.dumps(doc))
    with pytest.raises(VaultError) as e:
        Vault.open(LocalBackend(d), key)
    assert catalog_error(e.value).code == "VaultDataCorrupt"


def test_a_forged_gc_pending_cannot_make_gc_delete_early(tmp_path: Path) -> None:
    key = os.urandom(32)
    d = tmp_path / "v"
    v = Vault.create(LocalBackend(d), key, block_size=BS, pack_target_size=BS)
    img = tmp_path / "disk.img"
    img.write_bytes(rand_block(1, BS) + rand_block(2, BS))
    v.backup("rp1", {"d": img})
    v.delete_restore_point("rp1")  # its packs are garbage, but only after the grace
    packs = v.backend.list(fmt.PACKS)
    assert packs
    # Someone with write access to the storage, not the key: "found a year ago".
    forged = {p.rsplit("/", 1)[1]: 1.6e9 for p in packs}
    (d / "gc").mkdir(exist_ok=True)
    (d / "gc" / "pending").write_text(json.dumps(forged))
    report = v.gc()  # default grace: 24 h
    assert report.packs_deleted == 0
    assert report.pending_discarded
    assert v.backend.list(fmt.PACKS) == packs
    # What GC writes is sealed, and read back by the next run.
    blob = (d / "gc" / "pending").read_bytes()
    with pytest.raises(ValueError):
        json.loads(blob)
    report = v.gc()
    assert not report.pending_discarded and report.packs_pending == len(packs)
    assert v.gc(grace_seconds=0).packs_deleted == len(packs)


def test_a_format_3_vault_is_refused_clearly(tmp_path: Path) -> None:
    """Format 3 kept its sizes in clear: its config cannot be told from a forged one."""
    key = os.urandom(32)
    d = tmp_path / "v3"
    Vault.create(LocalBackend(d), key)
    doc = json.loads((d / "config").read_text())
    v3 = {"format": "frostpoint-vault", "version": 3, "vault_id": doc["vault_id"],
          "block_size": 4 << 20, "pack_target_size": 16 << 20,
          "created": "2026-01-01T00:00:00Z", "keycheck": doc["keycheck"]}
    (d / "config").write_text(json.dumps(v3))
    with pytest.raises(VaultError) as e:
        Vault.open(LocalBackend(d), key)
    assert catalog_error(e.value).code == "InvalidInput"
    assert "version 3 is not supported" in e.value.detail
    assert f"version {fmt.FORMAT_VERSION}" in e.value.detail
