"""Vault retention: a restore point past its policy's retention leaves the vault on its
own (the cleanup loop), its data is marked by the automatic GC and reclaimed after
the grace, and what is still retained keeps restoring.

Days cannot pass in a test: the one thing the test does by hand is move the expiry
dates of one restore point into the past, in the service's database, as time would."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Service, needs_root, running_service

pytestmark = needs_root


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    yield from running_service(FROSTPOINT_CLEANUP_S="1", FROSTPOINT_GC_S="1")


def age(service: Service, rp_id: str) -> None:
    """What the passing of the retention period does to a restore point."""
    with sqlite3.connect(service.data_dir / "frostpoint.db", timeout=30) as db:
        db.execute("UPDATE restore_points SET instant_expires_at = '2000-01-01 00:00:00', "
                   "vault_expires_at = '2000-01-01 00:00:00' WHERE id = ?", (rp_id,))


def test_vault_restore_points_expire_by_policy_and_gc_reclaims_them(
        service: Service, tmp_path: Path) -> None:
    s, c = service, service.client
    c.post("/vaults", {"name": "v1"})
    c.post("/policies", {"name": "short", "instant_rp_days": 1, "vault_retention_days": 1})
    c.post("/machines", {"name": "ret", "disks": [{"name": "data", "size": "64M"}]})
    c.post("/protection/enable", {"machine": "ret", "vault": "v1", "policy": "short"})
    s.wait_agent_ready("ret")
    s.exec("ret", "head -c 6000000 /dev/urandom > /mnt/data/old.bin")
    old = s.backup("ret")
    assert old["status"] == "Completed", old
    # Overwritten in place: the old bytes are on no block of the disk any more (a
    # deleted file's blocks would still hold them, and the next backup with them).
    s.exec("ret", "dd if=/dev/urandom of=/mnt/data/old.bin bs=1M count=6 conv=notrunc "
                  "status=none; mv /mnt/data/old.bin /mnt/data/new.bin; sync")
    want = s.exec("ret", "sha256sum /mnt/data/new.bin").split()[0]
    new = s.cli_json("backup", "now", "ret", "--retain-days", "30", "--wait")
    assert new["status"] == "Completed", new
    old_rp, new_rp = old["details"]["restore_point"], new["details"]["restore_point"]

    age(s, old_rp)
    deadline = time.monotonic() + 30
    while any(r["id"] == old_rp for r in c.get("/restore-points", params={"machine": "ret"})):
        assert time.monotonic() < deadline, "the expired restore point is still listed"
        time.sleep(0.5)
    left = [r["id"] for r in c.get("/restore-points", params={"machine": "ret"})]
    assert left == [new_rp]
    report = s.cli_json("vault", "verify", "v1")["details"]["report"]
    assert report["restore_points"] == 1  # its manifest is gone

    # The automatic GC has marked what only the expired point used; after the grace
    # (0 here) a GC run deletes it.
    deadline = time.monotonic() + 30
    while "pending" not in (log := (s.data_dir / "server.log").read_text()) or \
            "vault v1 gc:" not in log:
        assert time.monotonic() < deadline, "no automatic GC ran"
        time.sleep(0.5)
    first = s.cli_json("vault", "gc", "v1", "--grace-hours", "0")["details"]["report"]
    second = s.cli_json("vault", "gc", "v1", "--grace-hours", "0")["details"]["report"]
    # old.bin's 6 MB were random (incompressible) and only the expired point used them:
    # deleted with their packs, or counted dead in packs that live chunks keep.
    gone = first["bytes_deleted"] + second["bytes_deleted"]
    assert gone + second["dead_bytes_kept"] >= 5_000_000, (first, second)
    assert second["packs_pending"] == 0
    assert s.cli_json("vault", "verify", "v1")["details"]["report"]["ok"]
    out = tmp_path / "out"
    j = s.cli_json("restore", "files", new_rp, "--path", "new.bin", "--to", str(out),
                   "--source", "vault")
    assert j["status"] == "Completed", j
    assert hashlib.sha256((out / "new.bin").read_bytes()).hexdigest() == want
    c.delete("/machines/ret")
