"""Job bookkeeping shared by backups and restores: states, sub-tasks, heartbeats, reaping.

A job row has an owner and a heartbeat; a job whose owner stopped heartbeating is
failed by any service that notices, so no job stays InProgress after a crash.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from frostpoint.errors.catalog import FrostpointError, error_dict
from frostpoint.service.models import Job, SubTask, utcnow
from frostpoint.service.runtime import Runtime

ACTIVE = ("InProgress", "Cancelling")


def describe_job(job: Job) -> dict[str, Any]:
    return {
        "id": job.id, "operation": job.operation, "machine": job.machine_name,
        "trigger": job.trigger, "status": job.status,
        "started_at": job.started_at.isoformat() + "Z",
        "ended_at": job.ended_at.isoformat() + "Z" if job.ended_at else None,
        "duration_s": ((job.ended_at or utcnow()) - job.started_at).total_seconds(),
        "error": job.error, "warnings": job.warnings, "details": job.details,
        "subtasks": [{"name": t.name, "status": t.status, "progress": t.progress,
                      "started_at": t.started_at.isoformat() + "Z" if t.started_at else None,
                      "ended_at": t.ended_at.isoformat() + "Z" if t.ended_at else None}
                     for t in job.subtasks],
    }


class JobRunner:
    """Runs one job's body in a thread, with heartbeat and a final state always set."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def watch(self, job_id: str, stop: threading.Event, expired: threading.Event,
              force_finish: Callable[[], None]) -> None:
        """Heartbeat the job; past its deadline ask it to stop (and set expired), and if
        it does not stop within a grace period (a body blocked in I/O), finish it."""
        deadline = self.rt.timeouts.job_deadline
        grace = min(60.0, max(5.0, deadline / 10))
        started = time.monotonic()
        while not stop.wait(min(3.0, deadline / 4)):
            elapsed = time.monotonic() - started
            with self.rt.sessions.begin() as s:
                job = s.get(Job, job_id)
                if job is None or job.status not in ACTIVE:
                    return
                job.heartbeat_at = utcnow()
                if elapsed > deadline and not expired.is_set():
                    expired.set()
                    job.cancel_requested = True
            if elapsed > deadline + grace:
                force_finish()
                return

    def deadline_outcome(self, job_id: str, machine: str | None
                         ) -> tuple[str, dict[str, Any] | None, list[Any]]:
        """A job stopped by its deadline fails; when its snapshot was already taken
        the restore point stands, so it completes with a warning instead."""
        d = self.rt.timeouts.job_deadline
        err = error_dict("BackUpOperationFailed",
                         f"the job did not finish within its deadline of {d:.0f} s",
                         {"deadline_s": d}, machine)
        with self.rt.sessions() as s:
            job = s.get(Job, job_id)
            done = bool(job and any(t.status == "Completed" for t in job.subtasks))
        return ("CompletedWithWarnings", None, [err]) if done else ("Failed", err, [])

    def subtask(self, job_id: str, name: str, status: str, **progress: Any) -> None:
        with self.rt.sessions.begin() as s:
            t = s.scalar(select(SubTask).where(SubTask.job_id == job_id, SubTask.name == name))
            if t is None:
                return
            if status == "InProgress" and t.started_at is None:
                t.started_at = utcnow()
            if status in ("Completed", "Failed", "Cancelled", "Skipped"):
                t.ended_at = utcnow()
            t.status = status
            if progress:
                t.progress = {**t.progress, **progress}

    def cancelled(self, job_id: str) -> bool:
        with self.rt.sessions() as s:
            return bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))

    def run(self, job_id: str, body: Callable[[str], tuple[str, list[Any]]],
            machine: str | None = None, on_end: Callable[[str, str], None] | None = None
            ) -> threading.Thread:
        once = threading.Lock()  # the body's thread and the watchdog may both finish

        def end(status: str, error: dict[str, Any] | None, warnings: list[Any]) -> None:
            if not once.acquire(blocking=False):
                return
            try:
                self.finish(job_id, status, error, warnings)
            finally:
                if on_end:
                    on_end(job_id, status)

        def target() -> None:
            stop, expired = threading.Event(), threading.Event()
            threading.Thread(target=self.watch, daemon=True, args=(
                job_id, stop, expired,
                lambda: end(*self.deadline_outcome(job_id, machine)))).start()
            error = None
            warnings: list[Any] = []
            try:
                status, warnings = body(job_id)
            except FrostpointError as e:
                status = "Cancelled" if e.code == "JobCancelled" else "Failed"
                error = e.to_dict(machine)
            except Exception as e:  # noqa: BLE001 - a user sees a code, never a traceback
                status = "Failed"
                error = error_dict("BackUpOperationFailed", f"internal error: {e}",
                                   {"traceback": traceback.format_exc()[-4000:]}, machine)
            finally:
                stop.set()
            if status == "Cancelled" and expired.is_set():
                status, error, deadline_warnings = self.deadline_outcome(job_id, machine)
                warnings = list(warnings) + deadline_warnings
            end(status, error, warnings)

        t = threading.Thread(target=target, name=f"job-{job_id}", daemon=True)
        t.start()
        return t

    def finish(self, job_id: str, status: str, error: dict[str, Any] | None,
               warnings: list[Any]) -> None:
        with self.rt.sessions.begin() as s:
            job = s.get(Job, job_id)
            assert job is not None
            job.status = status
            job.error = error
            job.warnings = list(job.warnings) + list(warnings)
            job.ended_at = utcnow()
            job.active_slot = None
            for t in job.subtasks:
                if t.status in ("NotStarted", "InProgress"):
                    t.status = "Cancelled" if status == "Cancelled" else (
                        "Failed" if t.status == "InProgress" else "Skipped")
                    t.ended_at = utcnow()

    def reap_orphans(self) -> list[str]:
        """Fail jobs whose service stopped heartbeating them (crash, restart)."""
        limit = utcnow() - timedelta(seconds=self.rt.timeouts.job_heartbeat_stale)
        reaped = []
        with self.rt.sessions.begin() as s:
            for job in s.scalars(select(Job).where(Job.status.in_(ACTIVE))):
                beat = job.heartbeat_at or job.started_at
                if job.owner != self.rt.owner and beat < limit:
                    job.status = "Failed"
                    job.error = error_dict(
                        "BackUpOperationFailed",
                        "the service running this job stopped before it finished",
                        {"owner": job.owner, "last_heartbeat": beat.isoformat() + "Z"},
                        job.machine_name)
                    job.ended_at = utcnow()
                    job.active_slot = None
                    for t in job.subtasks:
                        if t.status == "InProgress":
                            t.status, t.ended_at = "Failed", utcnow()
                    reaped.append(job.id)
        return reaped
