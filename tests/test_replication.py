"""vault replicate: a local vault copied to an Azure Blob vault (Azurite). The service is
killed (-9) midway, the run resumes after the restart, the copy verifies clean, and a
restore from it is byte for byte the same once the source vault is deleted."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Service, needs_root, running_service, sha256_file
from frostpoint.vault.azure import AzureBlobBackend
from frostpoint.vault.store import Vault as VaultStore
from test_vault_azure import azurite  # noqa: F401 - the Azurite fixture

pytestmark = needs_root
M = "repl"
LOC = "azure://frostpoint/offsite?connection_string_env=FP_AZURE_CONN"


@pytest.fixture(scope="module")
def az_service(azurite: str) -> Iterator[Service]:  # noqa: F811
    # Cleanup every second: the second test lets a copied point's retention end.
    yield from running_service(FP_AZURE_CONN=azurite, FROSTPOINT_CLEANUP_S="1")


def jobs(s: Service, operation: str) -> list[dict[str, Any]]:
    return [j for j in s.client.get("/jobs") if j["operation"] == operation]


def dst_manifests(s: Service, vault_id: str) -> list[str]:
    """The restore points the Azure vault holds, read from the storage itself; each
    one's chunks must all be there (a manifest is never written before them)."""
    os.environ["FP_AZURE_CONN"] = s.env["FP_AZURE_CONN"]
    store = VaultStore.open(AzureBlobBackend.from_url(LOC),
                            (s.data_dir / "keys" / f"{vault_id}.key").read_bytes())
    for rp in store.list_restore_points():
        for disk in store.read_manifest(rp)["disks"].values():
            assert all(b is None or store.locate_chunk(b) for b in disk["blocks"]), rp
    return store.list_restore_points()


def test_replicate_to_azure_survives_kill_9_and_restores_without_the_source(
        az_service: Service, tmp_path: Path) -> None:
    s = az_service
    s.protected_machine(M, [{"name": "data", "size": "160M"}])
    rps = []
    for _ in range(2):  # two restore points of new data: enough to be killed midway
        s.exec(M, "head -c 60000000 /dev/urandom > /mnt/data/blob && sync")
        job = s.backup(M)
        assert job["status"] == "Completed", job
        rps.append(job["details"]["restore_point"])
    off = s.cli_json("vault", "create", "offsite", "--backend", "azure", "--location", LOC)

    first = s.cli_json("vault", "replicate", "v1", "--to", "offsite", "--every", "24h",
                       "--no-wait")
    assert first["operation"] == "VaultReplicate"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        t = s.client.get(f"/jobs/{first['id']}")["subtasks"][0]
        if t["progress"].get("bytes_done", 0) > 0:
            break
        time.sleep(0.02)
    s.stop(signal.SIGKILL)
    # Killed midway: what the copy holds is whole restore points only, not all of them.
    assert len(dst_manifests(s, off["id"])) < 2

    s.start()
    deadline = time.monotonic() + 90
    resumed = None
    while time.monotonic() < deadline and resumed is None:
        resumed = next((j for j in jobs(s, "VaultReplicate")
                        if j["id"] != first["id"]), None)
        time.sleep(0.5)
    assert resumed is not None, "the killed replication never resumed"
    assert s.client.get(f"/jobs/{first['id']}")["status"] == "Failed"
    resumed = s.wait_job(resumed["id"], 180)
    assert resumed["status"] == "Completed", resumed
    report = resumed["details"]["report"]
    assert sorted(report["copied"] + report["present"]) == sorted(rps)
    assert report["chunks_verified"] == report["chunks_copied"]
    assert sorted(dst_manifests(s, off["id"])) == sorted(rps)
    assert s.cli_json("vault", "verify", "offsite")["details"]["report"]["ok"]
    listed = {r["id"]: r for r in s.client.get("/restore-points", params={"machine": M})}
    assert all(listed[r]["copies"] == ["offsite"] for r in rps)
    sched = s.cli_json("vault", "replications")
    assert [(x["source"], x["target"], x["every_seconds"]) for x in sched] == [
        ("v1", "offsite", 86400)]

    # Nothing new to copy: a second run moves no chunk.
    again = s.cli_json("vault", "replicate", "v1", "--to", "offsite", "--every", "24h")
    assert again["details"]["report"]["copied"] == []
    assert again["details"]["report"]["chunks_copied"] == 0
    # The schedule: a day later the scheduler runs it by itself.
    before = {j["id"] for j in jobs(s, "VaultReplicate")}
    s.move_clock(25 * 3600)
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and not {j["id"] for j in jobs(s, "VaultReplicate")
                                               } - before:
        time.sleep(0.5)
    scheduled = [j for j in jobs(s, "VaultReplicate") if j["id"] not in before]
    assert scheduled, "the 24h schedule did not run after a day"
    assert s.wait_job(scheduled[0]["id"])["status"] == "Completed"

    want = tmp_path / "want"
    j = s.cli_json("restore", "disks", rps[1], "--to", str(want), "--source", "instant")
    assert j["status"] == "Completed", j
    # The source goes: stop and unprotect the machine, delete the local vault.
    s.cli_json("protect", "stop", M)
    s.cli_json("protect", "disable", M)
    s.cli_json("vault", "delete", "v1", "--yes")
    assert s.cli_json("vault", "replications") == []
    got = tmp_path / "got"
    j = s.cli_json("restore", "disks", rps[1], "--to", str(got), "--source", "vault")
    assert j["status"] == "Completed", j
    assert sha256_file(got / "data.img") == sha256_file(want / "data.img")


def test_a_restore_point_past_its_retention_leaves_its_copies_too(
        az_service: Service) -> None:
    s = az_service
    c = s.client
    c.post("/vaults", {"name": "short"})
    c.post("/vaults", {"name": "short-copy"})
    c.post("/policies", {"name": "day", "instant_rp_days": 1, "vault_retention_days": 1})
    c.post("/machines", {"name": "brief", "disks": [{"name": "data", "size": "64M"}]})
    c.post("/protection/enable", {"machine": "brief", "vault": "short", "policy": "day"})
    s.wait_agent_ready("brief")
    job = s.backup("brief")
    assert job["status"] == "Completed", job
    rp = job["details"]["restore_point"]
    j = s.cli_json("vault", "replicate", "short", "--to", "short-copy")
    assert j["details"]["report"]["copied"] == [rp]
    copy = next(v for v in c.get("/vaults") if v["name"] == "short-copy")
    manifests = Path(copy["location"]) / "manifests"
    assert [p.name for p in manifests.iterdir()] == [rp]
    s.let_days_pass(3)  # past both the instant and the vault retention
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(
            r["id"] == rp for r in c.get("/restore-points")):
        time.sleep(0.5)
    assert all(r["id"] != rp for r in c.get("/restore-points"))
    assert list(manifests.iterdir()) == []  # the copy went with it
