"""Vault verify and GC run as jobs on a real service: the request returns the job, the
CLI waits for it (or not), progress is reported, and `job cancel` stops it; a
cancelled GC leaves the vault consistent.

To cancel at a known moment the test makes one vault object a FIFO: the job blocks
reading it until the test writes the object's bytes into it, after the cancel."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Service, needs_root, running_service
from frostpoint.cli.client import FINAL
from frostpoint.vault.backend import LocalBackend
from frostpoint.vault.format import BLOCK_SIZE
from frostpoint.vault.store import Vault
from test_vault import make_image, rand_block

pytestmark = needs_root
BS = BLOCK_SIZE


@pytest.fixture(scope="module")
def svc() -> Iterator[Service]:
    yield from running_service()


def wait(svc: Service, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (j := svc.client.get(f"/jobs/{job_id}"))["status"] not in FINAL:
        assert time.monotonic() < deadline, j
        time.sleep(0.1)
    return j


def until_in_progress(svc: Service, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while (j := svc.client.get(f"/jobs/{job_id}"))["subtasks"][0]["status"] != "InProgress":
        assert time.monotonic() < deadline, j
        time.sleep(0.05)
    return j


class Fifo:
    """Replace a vault object by a FIFO holding its bytes: a reader blocks until
    release() writes them; restore() puts the plain file back."""

    def __init__(self, path: Path) -> None:
        self.path, self.data = path, path.read_bytes()
        path.unlink()
        os.mkfifo(path)

    def release(self) -> threading.Thread:
        def feed() -> None:
            fd = os.open(self.path, os.O_WRONLY)  # meets the blocked reader
            try:
                os.write(fd, self.data)
            finally:
                os.close(fd)
        t = threading.Thread(target=feed, daemon=True)
        t.start()
        return t

    def restore(self) -> None:
        self.path.unlink()
        self.path.write_bytes(self.data)


def test_verify_and_gc_are_jobs_that_cancel_cleanly(svc: Service, tmp_path: Path) -> None:
    c = svc.client
    v = c.post("/vaults", {"name": "jobs"})
    location = Path(v["location"])
    key = (svc.data_dir / "keys" / f"{v['id']}.key").read_bytes()
    try:
        # Two restore points written straight to the vault, one pack each.
        store = Vault.open(LocalBackend(location), key)
        store.backup("rp-a", {"d": make_image(tmp_path / "a.img", 3 * BS,
                                              {i: rand_block(i) for i in range(3)})})
        store.backup("rp-b", {"d": make_image(tmp_path / "b.img", 2 * BS,
                                              {i: rand_block(10 + i) for i in range(2)})})
        svc.stop()  # the service loads the new packs' indexes when it opens the vault
        svc.start()

        # verify waits by default; --json prints the final job with the report
        j = svc.cli_json("vault", "verify", "jobs")
        assert j["operation"] == "VaultVerify" and j["status"] == "Completed"
        report = j["details"]["report"]
        assert report["ok"] and report["restore_points"] == 2 and report["chunks_checked"] == 5
        [step] = j["subtasks"]
        assert step["name"] == "Verify" and step["status"] == "Completed"
        assert step["progress"]["done"] == step["progress"]["total"] == 5
        # --no-wait returns the job at once
        started = svc.cli_json("vault", "gc", "jobs", "--no-wait")
        assert started["operation"] == "VaultGc"
        done = wait(svc, started["id"])
        assert done["status"] == "Completed"
        assert done["details"]["report"]["packs_total"] == 2
        assert done["details"]["report"]["packs_pending"] == 0
        # the human output of a waited job is the report
        p = svc.cli("vault", "verify", "jobs")
        assert "vault jobs: OK, 5 chunks checked" in p.stdout

        # Cancel a verify: it blocks reading rp-a's pack.
        pack_id = store.locate_chunk(store.read_manifest("rp-a")["disks"]["d"]["blocks"][0])[0]
        fifo = Fifo(location / "packs" / pack_id[:2] / pack_id)
        try:
            j = c.post("/vaults/jobs/verify")
            assert j["status"] == "InProgress"
            until_in_progress(svc, j["id"])
            assert svc.cli_json("job", "cancel", j["id"])["status"] == "Cancelling"
            fifo.release().join(30)
            j = wait(svc, j["id"])
            assert j["status"] == "Cancelled" and j["error"]["code"] == "JobCancelled"
            assert j["subtasks"][0]["status"] == "Cancelled"
            assert "report" not in j["details"]
        finally:
            fifo.restore()

        # Cancel a GC that would delete rp-a's pack: first mark it (grace 0) ...
        store.delete_restore_point("rp-a")
        marked = svc.cli_json("vault", "gc", "jobs", "--grace-hours", "0")["details"]["report"]
        assert marked["packs_pending"] == 1 and marked["packs_deleted"] == 0
        # ... then the run that would delete it blocks reading rp-b's index.
        fifo = Fifo(location / "index" / store.locate_chunk(
            store.read_manifest("rp-b")["disks"]["d"]["blocks"][0])[0])
        try:
            j = c.post("/vaults/jobs/gc", params={"grace_hours": 0})
            until_in_progress(svc, j["id"])
            c.post(f"/jobs/{j['id']}/cancel")
            fifo.release().join(30)
            j = wait(svc, j["id"])
            assert j["status"] == "Cancelled" and j["error"]["code"] == "JobCancelled"
        finally:
            fifo.restore()
        # Consistent: nothing was deleted, rp-b verifies, and the next GC deletes the
        # pack at once (the mark survived the cancel).
        assert len(LocalBackend(location).list("packs/")) == 2
        after = svc.cli_json("vault", "verify", "jobs")["details"]["report"]
        assert after["ok"] and after["restore_points"] == 1
        swept = svc.cli_json("vault", "gc", "jobs", "--grace-hours", "0")["details"]["report"]
        assert swept["packs_deleted"] == 1 and swept["packs_pending"] == 0
        assert svc.cli_json("vault", "verify", "jobs")["details"]["report"]["ok"]

        # Input errors are still the request's own, before any job.
        p = svc.cli("vault", "gc", "jobs", "--grace-hours", "-1", "--json", check=False)
        assert p.returncode == 1 and '"InvalidInput"' in p.stdout
        p = svc.cli("vault", "verify", "nope", "--json", check=False)
        assert p.returncode == 1 and '"NotFound"' in p.stdout
    finally:
        c.delete("/vaults/jobs")
