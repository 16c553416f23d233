"""The exported key file: only the passphrase opens it, and no field can be changed."""

from __future__ import annotations

import copy
import os
import time

import pytest

from frostpoint.service.vault_errors import catalog_error
from frostpoint.vault import keyfile
from frostpoint.vault.errors import VaultError

PASS = "correct horse battery staple"
IDS = {"vault": "main", "vault_id": "ab" * 16, "backend": "local", "location": "/v"}


@pytest.fixture(scope="module")
def exported() -> tuple[bytes, dict[str, object]]:
    key = os.urandom(32)
    return key, keyfile.export_key(key, PASS, IDS)


def test_round_trip_and_no_key_in_clear(exported: tuple[bytes, dict[str, object]]) -> None:
    key, doc = exported
    got, head = keyfile.import_key(copy.deepcopy(doc), PASS)
    assert got == key and head["vault_id"] == IDS["vault_id"]
    assert key.hex() not in str(doc) and key not in str(doc).encode()


def test_wrong_passphrase_and_changed_fields_are_refused(
        exported: tuple[bytes, dict[str, object]]) -> None:
    _key, doc = exported
    with pytest.raises(VaultError) as e:
        keyfile.import_key(copy.deepcopy(doc), PASS + "!")
    assert catalog_error(e.value).code == "VaultKeyInvalid"
    for field, value in (("location", "/elsewhere"), ("vault_id", "cd" * 16),
                         ("backend", "azure")):
        changed = {**copy.deepcopy(doc), field: value}
        with pytest.raises(VaultError) as e:
            keyfile.import_key(changed, PASS)
        assert catalog_error(e.value).code == "VaultKeyInvalid", field


def test_hostile_kdf_parameters_are_refused_without_running_them(
        exported: tuple[bytes, dict[str, object]]) -> None:
    _key, doc = exported
    for kdf in ({"n": 1 << 30}, {"r": 1 << 20}, {"p": 1000}, {"n": 3}, {"name": "none"}):
        hostile = copy.deepcopy(doc)
        hostile["kdf"].update(kdf)  # type: ignore[union-attr]
        t0 = time.monotonic()
        with pytest.raises(VaultError) as e:
            keyfile.import_key(hostile, PASS)
        assert catalog_error(e.value).code == "InvalidInput" and time.monotonic() - t0 < 0.5, kdf
    for bad in ([], "x", {"format": "other"}, {**doc, "version": 2}):
        with pytest.raises(VaultError) as e:
            keyfile.import_key(bad, PASS)
        assert catalog_error(e.value).code == "InvalidInput"


def test_a_short_passphrase_is_refused() -> None:
    with pytest.raises(VaultError) as e:
        keyfile.export_key(os.urandom(32), "short", IDS)
    assert catalog_error(e.value).code == "InvalidInput"
