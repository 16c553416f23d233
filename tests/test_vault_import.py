"""Disaster recovery: a vault's key exported under a passphrase; the host's data
directory lost; a fresh service imports the vault and restores from it byte for byte."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Service, needs_root, running_service, sha256_file
from test_vault_azure import azurite  # noqa: F401 - the Azurite fixture

pytestmark = needs_root
PASS = "correct horse battery staple"


@pytest.fixture(params=["azure", "local"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    if request.param == "azure":
        request.getfixturevalue("azurite")
        yield "azure", (f"azure://frostpoint/dr-{uuid.uuid4().hex[:8]}"
                        "?connection_string_env=FP_AZURE_CONN")
    else:
        # Off the host's data directory, as an off-site mount would be.
        yield "local", str(tmp_path / "offsite")
        shutil.rmtree(tmp_path / "offsite", ignore_errors=True)


def _service(conn: str) -> contextlib.AbstractContextManager[Service]:
    return contextlib.contextmanager(running_service)(FP_AZURE_CONN=conn, FP_PASS=PASS,
                                                     FP_WRONG="not the passphrase")


def test_restore_after_the_data_directory_is_lost(place: tuple[str, str], tmp_path: Path,
                                                  request: pytest.FixtureRequest) -> None:
    backend, location = place
    conn = request.getfixturevalue("azurite") if backend == "azure" else "unused"
    keyfile = tmp_path / "vault.key"
    ref = tmp_path / "ref"
    with _service(conn) as old:
        old.cli_json("vault", "create", "offsite", "--backend", backend,
                     "--location", location, "--block-size", "1M")
        old.client.post("/policies", {"name": "p"})
        old.client.post("/machines", {"name": "dr", "disks": [{"name": "data",
                                                               "size": "64M"}]})
        old.client.post("/protection/enable", {"machine": "dr", "vault": "offsite",
                                               "policy": "p"})
        old.wait_agent_ready("dr")
        old.exec("dr", "head -c 3000000 /dev/urandom > /mnt/data/precious.bin; sync")
        want = old.exec("dr", "sha256sum /mnt/data/precious.bin").split()[0]
        job = old.backup("dr")
        assert job["status"] == "Completed", job
        rp = job["details"]["restore_point"]
        assert old.cli_json("restore", "disks", rp, "--to", str(ref),
                            "--source", "instant")["status"] == "Completed"
        out = old.cli_json("vault", "key", "export", "offsite", "--to", str(keyfile),
                           "--passphrase-env", "FP_PASS")
        assert out["key_file"] == str(keyfile)
        assert keyfile.stat().st_mode & 0o077 == 0
        # The file holds no key in clear.
        key = (old.data_dir / "keys" / f"{old.client.get('/vaults')[0]['id']}.key")
        assert key.read_bytes().hex() not in keyfile.read_text()
        old_dir = old.data_dir
    assert not old_dir.exists()  # the host and its DATA/keys are gone

    with _service(conn) as new:
        assert not new.client.get("/restore-points")
        bad = new.cli("vault", "import", "back", "--backend", backend, "--location", location,
                      "--key", str(keyfile), "--passphrase-env", "FP_WRONG", "--json",
                      check=False)
        assert bad.returncode == 1
        assert json.loads(bad.stdout)["error"]["code"] == "VaultKeyInvalid"
        assert not new.client.get("/vaults")

        # Local: where the vault is comes from the key file.
        where = ["--backend", backend, "--location", location] if backend == "azure" else []
        v = new.cli_json("vault", "import", "back", *where, "--key", str(keyfile),
                         "--passphrase-env", "FP_PASS")
        assert v["restore_points_imported"] == 1 and v["block_size"] == 1 << 20
        [r] = new.client.get("/restore-points")
        assert r["id"] == rp and r["tier"] == "Vault" and r["machine"] == "dr"
        # Imported twice: refused, nothing doubled.
        again = new.cli("vault", "import", "again", "--backend", backend,
                        "--location", location, "--key", str(keyfile),
                        "--passphrase-env", "FP_PASS", "--json", check=False)
        assert json.loads(again.stdout)["error"]["code"] == "Conflict"

        disks = tmp_path / "disks"
        j = new.cli_json("restore", "disks", rp, "--to", str(disks), "--source", "vault")
        assert j["status"] == "Completed", j
        assert sha256_file(disks / "data.img") == sha256_file(ref / "data.img")
        files = tmp_path / "files"
        j = new.cli_json("restore", "files", rp, "--path", "precious.bin",
                         "--to", str(files), "--source", "vault")
        assert j["status"] == "Completed", j
        assert hashlib.sha256((files / "precious.bin").read_bytes()).hexdigest() == want
        assert new.cli_json("vault", "verify", "back")["details"]["report"]["ok"]
