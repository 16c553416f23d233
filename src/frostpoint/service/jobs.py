"""Job bookkeeping shared by backups and restores: states, sub-tasks, heartbeats, reaping.

A job row has an owner and a heartbeat; a job whose owner stopped heartbeating is
failed by any service that notices, so no job stays InProgress after a crash.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from frostpoint.enums import JobStatus, SubTaskStatus
from frostpoint.errors.catalog import FrostpointError, JobCancelled, error_dict
from frostpoint.service.models import Job, SubTask, utcnow
from frostpoint.service.runtime import Runtime, job_key
from frostpoint.service.vault_errors import as_catalog
from frostpoint.vault.errors import VaultError

ACTIVE = (JobStatus.IN_PROGRESS, JobStatus.CANCELLING)
log = logging.getLogger("frostpoint.service")

# Jobs whose body runs in this process (all runners: backups and restores). The reaper
# fails a job of this process that is active but in no thread: its finish was lost.
_RUNNING: set[str] = set()
_RUNNING_LOCK = threading.Lock()
# Writing a job's end state is retried this often, while the database is busy or
# failing, before a minimal end state is written instead.
FINISH_ATTEMPTS = 5


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
        it does not stop within a grace period (a body blocked in I/O), finish it.

        The heartbeat goes on after a forced finish, until the body really returns: the
        job keeps the machine's backup slot till then, and the beat tells another
        service that this process is alive and still holds it."""
        deadline = self.rt.timeouts.job_deadline
        grace = min(60.0, max(5.0, deadline / 10))
        started = time.monotonic()
        forced = False
        while not stop.wait(min(3.0, deadline / 4)):
            elapsed = time.monotonic() - started
            try:
                with self.rt.sessions.begin() as s:
                    job = s.get(Job, job_id)
                    if job is None:
                        return
                    job.heartbeat_at = utcnow()
                    if (job.status in ACTIVE and elapsed > deadline
                            and not expired.is_set()):
                        expired.set()
                        job.cancel_requested = True
            except Exception:  # noqa: BLE001 - a locked database: beat again next round
                log.warning("job %s: heartbeat not written", job_id, exc_info=True)
                continue
            if elapsed > deadline + grace and not forced:
                forced = True
                try:
                    force_finish()
                except Exception:  # noqa: BLE001 - the body's end, or the reaper, ends it
                    log.exception("job %s: forced finish failed", job_id)

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
            done = bool(job and any(t.status == SubTaskStatus.COMPLETED for t in job.subtasks))
        if done:
            return JobStatus.COMPLETED_WITH_WARNINGS, None, [err]
        return JobStatus.FAILED, err, []

    def subtask(self, job_id: str, name: str, status: str, **progress: Any) -> None:
        with self.rt.sessions.begin() as s:
            t = s.scalar(select(SubTask).where(SubTask.job_id == job_id, SubTask.name == name))
            if t is None:
                return
            if status == SubTaskStatus.IN_PROGRESS and t.started_at is None:
                t.started_at = utcnow()
            if status in (SubTaskStatus.COMPLETED, SubTaskStatus.FAILED, SubTaskStatus.CANCELLED,
                          SubTaskStatus.SKIPPED):
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

        def end(status: str, error: dict[str, Any] | None, warnings: list[Any],
                body_returned: bool) -> None:
            if not once.acquire(blocking=False):
                if body_returned:  # finished by the watchdog: the slot is free only now
                    self.release_slot(job_id)
                return
            try:
                self.finish(job_id, status, error, warnings, release_slot=body_returned)
            except BaseException:
                once.release()  # not written: the body's own end (or the reaper) ends it
                raise
            finally:
                if on_end:
                    on_end(job_id, status)
                self.announce_end(job_id)

        def target() -> None:
            stop, expired = threading.Event(), threading.Event()
            threading.Thread(target=self.watch, daemon=True, args=(
                job_id, stop, expired,
                lambda: end(*self.deadline_outcome(job_id, machine), False))).start()
            error = None
            warnings: list[Any] = []
            try:
                status, warnings = body(job_id)
            except (FrostpointError, VaultError) as e:  # a vault error: mapped here
                err = as_catalog(e)
                status = JobStatus.CANCELLED if isinstance(err, JobCancelled) else JobStatus.FAILED
                error = err.to_dict(machine)
            except Exception as e:  # noqa: BLE001 - a user sees a code, never a traceback
                status = JobStatus.FAILED
                error = error_dict("BackUpOperationFailed", f"internal error: {e}",
                                   {"traceback": traceback.format_exc()[-4000:]}, machine)
            finally:
                stop.set()
            try:
                if status == JobStatus.CANCELLED and expired.is_set():
                    status, error, deadline_warnings = self.deadline_outcome(job_id, machine)
                    warnings = list(warnings) + deadline_warnings
                end(status, error, warnings, True)
            finally:
                with _RUNNING_LOCK:
                    _RUNNING.discard(job_id)

        with _RUNNING_LOCK:
            _RUNNING.add(job_id)
        t = threading.Thread(target=target, name=f"job-{job_id}", daemon=True)
        t.start()
        return t

    def announce_end(self, job_id: str) -> None:
        """Tell the job listeners (metrics, notifications) that a job has ended."""
        for listener in self.rt.job_listeners:
            try:
                listener(job_id)
            except Exception:  # noqa: BLE001 - a listener never fails the job
                log.exception("job %s: end listener %s", job_id, listener)

    def finish(self, job_id: str, status: str, error: dict[str, Any] | None,
               warnings: list[Any], release_slot: bool = True) -> None:
        """Write the job's end state. Retried, since a job left InProgress blocks its
        machine's backups; if the full state cannot be written (a value that cannot be
        stored), a plain Failed is, naming why. If even that fails the reaper ends it."""
        delay, last = 0.5, None
        for _ in range(FINISH_ATTEMPTS):
            try:
                self._write_end(job_id, status, error, warnings, release_slot)
                self.rt.notifier.bump(job_key(job_id))  # wakes `--wait` long polls
                return
            except Exception as e:  # noqa: BLE001 - retried, then reported below
                last = e
                log.warning("job %s: its end state %s was not written (%s: %s)",
                            job_id, status, type(e).__name__, e)
                if not isinstance(e, OperationalError):
                    break  # not the database being busy: the same values fail again
                time.sleep(delay)
                delay = min(delay * 2, 8.0)
        self._write_end(job_id, JobStatus.FAILED, error_dict(
            "BackUpOperationFailed", "the job ended but its result could not be saved",
            {"ended_as": status, "cause": f"{type(last).__name__}: {last}"[:500]}), [],
            release_slot)
        self.rt.notifier.bump(job_key(job_id))

    def _write_end(self, job_id: str, status: str, error: dict[str, Any] | None,
                   warnings: list[Any], release_slot: bool) -> None:
        with self.rt.sessions.begin() as s:
            job = s.get(Job, job_id)
            assert job is not None
            job.status = status
            job.error = error
            job.warnings = list(job.warnings) + list(warnings)
            job.ended_at = utcnow()
            if release_slot:
                job.active_slot = None
            for t in job.subtasks:
                if t.status in (SubTaskStatus.NOT_STARTED, SubTaskStatus.IN_PROGRESS):
                    t.status = SubTaskStatus.CANCELLED if status == JobStatus.CANCELLED else (
                        SubTaskStatus.FAILED if t.status == SubTaskStatus.IN_PROGRESS
                        else SubTaskStatus.SKIPPED)
                    t.ended_at = utcnow()

    def release_slot(self, job_id: str) -> None:
        """Free the machine for the next backup (the job's body has returned)."""
        for attempt in range(FINISH_ATTEMPTS):
            try:
                with self.rt.sessions.begin() as s:
                    s.execute(update(Job).where(Job.id == job_id).values(active_slot=None))
                return
            except Exception:  # noqa: BLE001 - the reaper frees it at worst
                log.warning("job %s: backup slot not released", job_id, exc_info=True)
                time.sleep(0.5 * 2 ** attempt)

    def reap_orphans(self) -> list[str]:
        """Fail jobs whose service stopped heartbeating them (crash, restart), and jobs
        of this process whose end state was lost (no thread runs them any more); free
        the backup slot a forcibly finished job of a stopped service still holds."""
        limit = utcnow() - timedelta(seconds=self.rt.timeouts.job_heartbeat_stale)
        reaped = []
        with _RUNNING_LOCK:
            running = set(_RUNNING)
        with self.rt.sessions.begin() as s:
            for job in s.scalars(select(Job).where(Job.status.in_(ACTIVE)
                                                   | Job.active_slot.is_not(None))):
                beat = job.heartbeat_at or job.started_at
                mine = job.owner == self.rt.owner
                if (job.id in running if mine else beat >= limit):
                    continue
                if mine and beat >= limit:
                    continue  # the body has only just returned; its finish may follow
                job.active_slot = None
                if job.status not in ACTIVE:
                    continue  # finished already (by its deadline); only the slot was held
                job.status = JobStatus.FAILED
                why = ("its result was not saved when it ended" if mine else
                       "the service running this job stopped before it finished")
                job.error = error_dict(
                    "BackUpOperationFailed", why,
                    {"owner": job.owner, "last_heartbeat": beat.isoformat() + "Z"},
                    job.machine_name)
                job.ended_at = utcnow()
                for t in job.subtasks:
                    if t.status == SubTaskStatus.IN_PROGRESS:
                        t.status, t.ended_at = SubTaskStatus.FAILED, utcnow()
                reaped.append(job.id)
        return reaped
