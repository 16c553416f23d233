"""A machine backed up to an Azure Blob vault (Azurite) and restored from it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Service, needs_root, running_service
from test_vault_azure import azurite  # noqa: F401 - the Azurite fixture

pytestmark = needs_root


@pytest.fixture(scope="module")
def az_service(azurite: str) -> Iterator[Service]:  # noqa: F811
    # The service reads the connection string from its environment; no secret in a location.
    yield from running_service(FP_AZURE_CONN=azurite)


def test_backup_to_azure_and_restore_from_it(az_service: Service, tmp_path: Path) -> None:
    s = az_service
    loc = "azure://frostpoint/vault-a?connection_string_env=FP_AZURE_CONN"
    v = s.cli_json("vault", "create", "blob", "--backend", "azure", "--location", loc)
    assert v["backend"] == "azure"
    s.client.post("/policies", {"name": "p"})
    s.client.post("/machines", {"name": "az", "disks": [{"name": "data", "size": "64M"}]})
    s.client.post("/protection/enable", {"machine": "az", "vault": "blob", "policy": "p"})
    s.wait_agent_ready("az")
    s.exec("az", "head -c 5000000 /dev/urandom > /mnt/data/blob.bin")
    want = s.exec("az", "sha256sum /mnt/data/blob.bin").split()[0]
    for _ in range(2):
        job = s.backup("az")
        assert job["status"] == "Completed", job
    assert job["details"]["transfer"]["cbt"]["data"].startswith("incremental")
    rp = job["details"]["restore_point"]
    out = tmp_path / "files"
    j = s.cli_json("restore", "files", rp, "--path", "blob.bin", "--to", str(out),
                   "--source", "vault")
    assert j["status"] == "Completed", j
    assert hashlib.sha256((out / "blob.bin").read_bytes()).hexdigest() == want
    assert s.cli_json("vault", "verify", "blob")["details"]["report"]["ok"]
    bad = s.cli("vault", "create", "nope", "--backend", "azure", "--location",
                "azure://c?connection_string_env=UNSET_VAR", "--json", check=False)
    assert bad.returncode == 1 and "UNSET_VAR" in bad.stdout
