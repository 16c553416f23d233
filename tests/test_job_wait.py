"""`--wait` is a long poll on the job (GET /jobs/ID?wait=S): it is answered when the
job ends, not at the client's next poll, and never later than S seconds."""

from __future__ import annotations

import json
import time

from conftest import Service


def test_a_long_poll_is_held_while_the_job_runs_and_answered_at_its_end(
        service: Service) -> None:
    m = "waitvm"
    service.protected_machine(m, [{"name": "data", "size": "64M"}])
    cfg = service.hold_freeze(m, 3)  # the job runs a few seconds
    try:
        job = service.client.post("/backups", {"machine": m})
        t0 = time.monotonic()
        held = service.client.get(f"/jobs/{job['id']}", params={"wait": 0.5})
        assert held["status"] == "InProgress"
        assert time.monotonic() - t0 >= 0.45, "the poll was not held"
        done = service.client.get(f"/jobs/{job['id']}", params={"wait": 25})
        assert done["status"] == "Completed", done
        # A job that has ended is answered at once, however long the wait asked for.
        t1 = time.monotonic()
        again = service.client.get(f"/jobs/{job['id']}", params={"wait": 25})
        assert again["status"] == "Completed" and time.monotonic() - t1 < 5
    finally:
        cfg.unlink()


def test_backup_now_wait_returns_the_ended_job(service: Service) -> None:
    m = "waitvm"
    out = service.cli("backup", "now", m, "--wait", "--json")
    assert json.loads(out.stdout)["status"] == "Completed"


def test_a_wait_out_of_range_is_refused(service: Service) -> None:
    r = service.client.http.get("/jobs/nojob", params={"wait": "nan"})
    assert r.status_code == 422
    r = service.client.http.get("/jobs/nojob", params={"wait": 31})
    assert r.status_code == 422
