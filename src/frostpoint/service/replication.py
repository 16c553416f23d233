"""A second copy: `vault replicate SRC --to DST [--every 24h]`.

A replication is a schedule (a row per source and target) and each run is a job
(VaultReplicate, one sub-task with progress), like verify and GC. A run copies the
restore points of SRC that DST lacks (vault/replicator.py: only the chunks DST lacks
move, each restore point's manifest is written last) and records each copy as it is
made. A run that a crash or kill ended is run again by the scheduler once the job was
reaped, and finds what it had written still there. Restores read a copy when the
restore point's own vault is gone (service/restore.py, Restores.stores)."""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from frostpoint.enums import JobOperation, JobStatus, RestorePointTier, SubTaskName, SubTaskStatus
from frostpoint.errors.catalog import FrostpointError
from frostpoint.service.copies import copy_vaults
from frostpoint.service.jobs import ACTIVE, JobRunner, describe_job
from frostpoint.service.models import (
    Job,
    Replication,
    RestorePoint,
    RestorePointCopy,
    SubTask,
    Vault,
    utcnow,
)
from frostpoint.service.protection import Protection
from frostpoint.service.runtime import Runtime
from frostpoint.vault.replicator import replicate

log = logging.getLogger("frostpoint.service")
STEP = SubTaskName.REPLICATE
EVERY_RE = re.compile(r"^(\d{1,5})([mhd])$")
UNIT_S = {"m": 60, "h": 3600, "d": 86400}
MIN_EVERY_S = 15 * 60


def parse_every(every: str | None) -> int | None:
    """Seconds of '--every 24h' (m, h or d); None: run by hand only."""
    if not every:
        return None
    m = EVERY_RE.match(every.strip())
    if not m or int(m.group(1)) * UNIT_S[m.group(2)] < MIN_EVERY_S:
        raise FrostpointError("InvalidInput", f"--every {every!r}: a count and m, h or d, "
                              "at least 15m (e.g. 24h)")
    return int(m.group(1)) * UNIT_S[m.group(2)]


def _vault(s: Session, name: str) -> Vault:
    v = s.scalar(select(Vault).where(Vault.name == name))
    if v is None:
        raise FrostpointError("NotFound", f"no vault named {name!r}")
    return v


class Replications:
    def __init__(self, rt: Runtime, protection: Protection) -> None:
        self.rt = rt
        self.protection = protection
        self.runner = JobRunner(rt)
        # The scheduler and the reaper both start runs: one check-and-start at a time,
        # so one schedule never has two runs (across replicas, the job's state guards).
        self._starting = threading.Lock()
        self._due = threading.Lock()

    def start(self, source: str, target: str, every: str | None = None) -> dict[str, Any]:
        """Make (or change) the schedule SRC -> DST and run it now; returns the job."""
        seconds = parse_every(every)
        with self.rt.sessions.begin() as s:
            src, dst = _vault(s, source), _vault(s, target)
            if src.id == dst.id:
                raise FrostpointError("InvalidInput", "a vault cannot be its own copy")
            rep = s.scalar(select(Replication).where(Replication.source_vault_id == src.id,
                                                     Replication.target_vault_id == dst.id))
            if rep is None:
                rep = Replication(source_vault_id=src.id, target_vault_id=dst.id)
                s.add(rep)
            rep.every_seconds = seconds
            s.flush()
            rep_id = rep.id
        return self.run(rep_id)

    def describe(self, rep: Replication, s: Session) -> dict[str, Any]:
        src, dst = s.get(Vault, rep.source_vault_id), s.get(Vault, rep.target_vault_id)
        job = s.get(Job, rep.last_job_id) if rep.last_job_id else None
        assert src is not None and dst is not None  # a vault's delete drops its schedules
        return {"id": rep.id, "source": src.name, "target": dst.name,
                "every_seconds": rep.every_seconds, "last_job": rep.last_job_id,
                "last_status": job.status if job else None,
                "last_run_at": rep.last_run_at.isoformat() + "Z" if rep.last_run_at else None}

    def list_all(self) -> list[dict[str, Any]]:
        with self.rt.sessions() as s:
            return [self.describe(r, s) for r in s.scalars(
                select(Replication).order_by(Replication.created_at))]

    def run(self, rep_id: str, resumes: str | None = None) -> dict[str, Any]:
        with self._starting:
            return self._run(rep_id, resumes)

    def _run(self, rep_id: str, resumes: str | None) -> dict[str, Any]:
        with self.rt.sessions.begin() as s:
            rep = s.get(Replication, rep_id)
            assert rep is not None
            if rep.last_job_id and s.scalar(select(Job.id).where(
                    Job.id == rep.last_job_id, Job.status.in_(ACTIVE))):
                raise FrostpointError("Conflict", "this replication is running: follow job "
                                      f"{rep.last_job_id}", {"job": rep.last_job_id})
            src, dst = s.get(Vault, rep.source_vault_id), s.get(Vault, rep.target_vault_id)
            assert src is not None and dst is not None
            src_id, dst_id, src_name, dst_name = src.id, dst.id, src.name, dst.name
        # Both open before the job: a vault that does not open is the request's error.
        src_store, dst_store = self.protection.store(src_id), self.protection.store(dst_id)
        job = Job(operation=JobOperation.VAULT_REPLICATE, machine_id=None,
                  machine_name=src_name, owner=self.rt.owner, heartbeat_at=utcnow(),
                  params={"vault": src_name, "to": dst_name, "replication": rep_id,
                          **({"resumes": resumes} if resumes else {})})
        job.subtasks = [SubTask(seq=0, name=STEP)]
        with self.rt.sessions.begin() as s:
            s.add(job)
            rep = s.get(Replication, rep_id)
            assert rep is not None
            rep.last_job_id, rep.last_run_at = job.id, utcnow()

        def body(job_id: str) -> tuple[str, list[Any]]:
            self.runner.subtask(job_id, STEP, SubTaskStatus.IN_PROGRESS)
            wanted = self._restore_points_in(src_id)
            in_dst = set(dst_store.list_restore_points())
            for rp_id in wanted:  # copied by a run that ended before recording it
                if rp_id in in_dst:
                    self._record_copy(rp_id, dst_id)

            def progress(done: int, total: int) -> None:
                self.runner.subtask(job_id, STEP, SubTaskStatus.IN_PROGRESS,
                                    bytes_done=done, bytes_total=total)
            report = replicate(src_store, dst_store, wanted, progress,
                               lambda: self.runner.cancelled(job_id),
                               lambda rp_id: self._record_copy(rp_id, dst_id))
            with self.rt.sessions.begin() as s:
                j = s.get(Job, job_id)
                assert j is not None
                j.details = {**j.details, "report": {"source": src_name, "target": dst_name,
                                                     **dataclasses.asdict(report)}}
            self.runner.subtask(job_id, STEP, SubTaskStatus.COMPLETED)
            return JobStatus.COMPLETED, []
        self.runner.run(job.id, body)
        with self.rt.sessions() as s:
            return describe_job(s.get(Job, job.id))  # type: ignore[arg-type]  # just added

    def _restore_points_in(self, vault_id: str) -> list[str]:
        """The restore points the service knows in a vault: its own, and copies."""
        with self.rt.sessions() as s:
            own = s.scalars(select(RestorePoint.id).where(
                RestorePoint.vault_id == vault_id,
                RestorePoint.tier.in_((RestorePointTier.SNAPSHOT_AND_VAULT,
                                       RestorePointTier.VAULT)))
                .order_by(RestorePoint.created_at))
            copies = s.scalars(select(RestorePointCopy.restore_point_id)
                               .where(RestorePointCopy.vault_id == vault_id))
            return list(dict.fromkeys([*own, *copies]))

    def _record_copy(self, rp_id: str, vault_id: str) -> None:
        with self.rt.sessions.begin() as s:
            if s.get(RestorePoint, rp_id) is None or s.scalar(select(RestorePointCopy).where(
                    RestorePointCopy.restore_point_id == rp_id,
                    RestorePointCopy.vault_id == vault_id)):
                return
            s.add(RestorePointCopy(restore_point_id=rp_id, vault_id=vault_id))

    def run_due(self) -> list[str]:
        """Start the runs that are due (the scheduler calls it): each schedule whose
        period has passed, and each run a dead service left (reaped), once."""
        if not self._due.acquire(blocking=False):
            return []  # the other loop is at it
        try:
            return self._run_due()
        finally:
            self._due.release()

    def _run_due(self) -> list[str]:
        now = utcnow()
        due: list[tuple[str, str | None]] = []
        with self.rt.sessions() as s:
            for rep in s.scalars(select(Replication)):
                job = s.get(Job, rep.last_job_id) if rep.last_job_id else None
                if job is not None and job.status in ACTIVE:
                    continue
                if (job is not None and job.status == JobStatus.FAILED
                        and (job.error or {}).get("details", {}).get("owner")):
                    # Reaped: its service died under it. Once: the new run is the last.
                    due.append((rep.id, job.id))
                elif rep.every_seconds and (rep.last_run_at is None or now - rep.last_run_at
                                            >= timedelta(seconds=rep.every_seconds)):
                    due.append((rep.id, None))
        started = []
        for rep_id, resumes in due:
            try:
                started.append(self.run(rep_id, resumes)["id"])
            except Exception:  # one target down must not stop the others
                log.exception("replication %s not started", rep_id)
        return started

    # -- what the vault's other users need --------------------------------------------
    def drop_copies(self, rp_id: str) -> None:
        """Delete a restore point's copies (its retention ended): manifests, then rows."""
        with self.rt.sessions() as s:
            held = copy_vaults(s, rp_id)
        for vault_id in held:
            try:
                self.protection.store(vault_id).delete_restore_point(rp_id)
            except Exception:  # noqa: BLE001 - a copy's vault down: its manifest stays
                log.warning("copy of %s in vault %s: manifest not deleted", rp_id, vault_id,
                            exc_info=True)
        with self.rt.sessions.begin() as s:
            for c in s.scalars(select(RestorePointCopy).where(
                    RestorePointCopy.restore_point_id == rp_id)):
                s.delete(c)
