"""Vault verify and GC as the service offers them: damaged chunks are named with the
restore points, disks and files they affect.

Both run as jobs (operation VaultVerify / VaultGc, one sub-task each) like backups and
restores: the request returns the job at once, the sub-task reports progress, `job
cancel` stops it, and a failure is a catalog error on the job. Before the job starts
the request checks its input and opens the vault, so a wrong name, a bad value or a
vault that does not open is still the request's own error. The automatic GC loop
(services.py gc_all) calls gc() directly, without a job: it is the service's own
housekeeping, and a job row every interval would only crowd `job list`."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path
from typing import Any

from sqlalchemy import select

from frostpoint.enums import JobOperation, JobStatus, SubTaskName, SubTaskStatus
from frostpoint.errors.catalog import FrostpointError, error_dict
from frostpoint.service.jobs import JobRunner, describe_job
from frostpoint.service.models import Job, RestorePoint, SubTask, Vault, utcnow
from frostpoint.service.protection import Protection
from frostpoint.service.runtime import Runtime
from frostpoint.vault.pacing import Progress
from frostpoint.vault.store import Vault as VaultStore

VERIFY, GC = SubTaskName.VERIFY, SubTaskName.COLLECT_GARBAGE  # the sub-task of each job
E2FS_TOOL_S = 30  # the image is a guest's filesystem: a crafted one may never finish


def _e2fs(argv: list[str]) -> str:
    """Output of an e2fsprogs tool on a guest's image; empty if it ran too long."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False,
                              timeout=E2FS_TOOL_S).stdout
    except subprocess.TimeoutExpired:
        return ""


def ext4_files_at(image: Path, offset: int, length: int) -> list[str]:
    """Paths of the files that own bytes [offset, offset+length) of an ext4 image."""
    head = _e2fs(["dumpe2fs", "-h", str(image)])
    m = re.search(r"^Block size:\s+(\d+)", head, re.M)
    if not m:
        return []
    bs = int(m.group(1))
    blocks = " ".join(str(b) for b in range(offset // bs, (offset + length) // bs))
    out = _e2fs(["debugfs", "-R", f"icheck {blocks}", str(image)])
    inodes = sorted({int(parts[1]) for line in out.splitlines()[1:]
                     if len(parts := line.split()) == 2 and parts[1].isdigit()})
    if not inodes:
        return []
    out = _e2fs(["debugfs", "-R", "ncheck " + " ".join(map(str, inodes)), str(image)])
    paths = {"/" + line.split(None, 1)[1].lstrip("/") for line in out.splitlines()[1:]
             if len(line.split(None, 1)) == 2}
    return sorted(paths) or [f"(filesystem metadata, inodes {inodes[:5]})"]


class VaultChecks:
    def __init__(self, rt: Runtime, protection: Protection) -> None:
        self.rt = rt
        self.protection = protection
        self.runner = JobRunner(rt)

    def _vault_id(self, name: str) -> str:
        with self.rt.sessions() as s:
            v = s.scalar(select(Vault).where(Vault.name == name))
            if v is None:
                raise FrostpointError("NotFound", f"no vault named {name!r}")
            return v.id

    # -- as jobs ----------------------------------------------------------------------
    def start_verify(self, name: str, sample: float = 100.0) -> dict[str, Any]:
        """Start a VaultVerify job; its details["report"] is what verify() returns. A
        damaged vault completes with a VaultDataCorrupt warning."""
        if not 0 < sample <= 100:
            raise FrostpointError("InvalidInput", "--sample is a percentage in (0, 100]")
        store = self.protection.store(self._vault_id(name))

        def body(job_id: str, progress: Progress, cancel: Any) -> tuple[dict[str, Any], list[Any]]:
            report = self._verify(store, name, sample, progress, cancel)
            if report["ok"]:
                return report, []
            n = len(report["problems"]) + len(report["damaged_manifests"]) + len(
                report["damaged_indexes"])
            return report, [error_dict("VaultDataCorrupt", f"vault {name}: {n} damaged or "
                                       "missing objects; see the job's report",
                                       {"vault": name})]
        return self._start(JobOperation.VAULT_VERIFY, VERIFY, name, {"sample": sample}, body)

    def start_gc(self, name: str, grace_hours: float = 24.0) -> dict[str, Any]:
        """Start a VaultGc job; its details["report"] is what gc() returns."""
        if grace_hours < 0:
            raise FrostpointError("InvalidInput", "--grace-hours must be >= 0")
        store = self.protection.store(self._vault_id(name))

        def body(job_id: str, progress: Progress, cancel: Any) -> tuple[dict[str, Any], list[Any]]:
            r = store.gc(grace_hours * 3600, progress=progress, should_cancel=cancel)
            return {"vault": name, **dataclasses.asdict(r)}, []
        return self._start(JobOperation.VAULT_GC, GC, name, {"grace_hours": grace_hours}, body)

    def _start(self, operation: str, step: str, name: str, params: dict[str, Any],
               body: Any) -> dict[str, Any]:
        # machine_name is the vault's: the job list names what the job works on.
        job = Job(operation=operation, machine_id=None, machine_name=name,
                  owner=self.rt.owner, heartbeat_at=utcnow(),
                  params={"vault": name, **params})
        job.subtasks = [SubTask(seq=0, name=step)]
        with self.rt.sessions.begin() as s:
            s.add(job)

        def run_body(job_id: str) -> tuple[str, list[Any]]:
            self.runner.subtask(job_id, step, SubTaskStatus.IN_PROGRESS)

            def progress(done: int, total: int) -> None:  # throttled by the vault
                self.runner.subtask(job_id, step, SubTaskStatus.IN_PROGRESS, done=done,
                                    total=total)

            report, warnings = body(job_id, progress, lambda: self.runner.cancelled(job_id))
            with self.rt.sessions.begin() as s:
                j = s.get(Job, job_id)
                assert j is not None
                j.details = {**j.details, "report": report}
            self.runner.subtask(job_id, step, SubTaskStatus.COMPLETED)
            return (JobStatus.COMPLETED_WITH_WARNINGS if warnings
                    else JobStatus.COMPLETED), warnings

        self.runner.run(job.id, run_body)
        with self.rt.sessions() as s:
            return describe_job(s.get(Job, job.id))  # type: ignore[arg-type]  # just added

    # -- the work -------------------------------------------------------------------
    def _verify(self, store: VaultStore, name: str, sample: float,
                progress: Progress | None = None, cancel: Any = None) -> dict[str, Any]:
        report = store.verify(progress=progress, sample=sample, should_cancel=cancel)
        # A chunk is one block: the vault's block size, not the default 4 MiB.
        block = store.config.block_size
        problems = []
        for kind, items in (("damaged", report.damaged), ("missing", report.missing)):
            for p in items:
                problems.append({"kind": kind, "chunk": p.chunk_id, "pack": p.pack,
                                 "reason": p.reason,
                                 "affects": [self._affected(r.restore_point, r.disk, r.offset,
                                                            block) for r in p.refs]})
        return {"vault": name, "ok": report.ok, "sample_percent": sample,
                "restore_points": report.restore_points,
                "chunks_checked": report.chunks_checked, "problems": problems,
                "damaged_manifests": report.damaged_manifests,
                "damaged_indexes": report.damaged_indexes}

    def _affected(self, rp_id: str, disk: str, offset: int,
                  block: int) -> dict[str, Any]:
        out: dict[str, Any] = {"restore_point": rp_id, "disk": disk, "offset": offset,
                               "length": block}
        with self.rt.sessions() as s:
            rp = s.get(RestorePoint, rp_id)
            if rp is None:
                return out
            out["machine"] = rp.machine_name
            fs = next((d["filesystem"] for d in rp.disks if d["name"] == disk), None)
            image = (self.rt.platform.snapshot_image(rp.snapshot_dir, disk)
                     if rp.snapshot_dir else None)
        if image is None or not image.exists():
            out["files"] = "unknown: the instant snapshot has expired"
        elif fs == "ext4":
            out["files"] = ext4_files_at(image, offset, block)
        else:
            out["files"] = f"unknown: file mapping on {fs} is not built yet"
        return out

    def gc(self, name: str, grace_hours: float = 24.0) -> dict[str, Any]:
        """gc, in the caller's thread (no job): the automatic GC loop uses it."""
        if grace_hours < 0:
            raise FrostpointError("InvalidInput", "--grace-hours must be >= 0")
        report = self.protection.store(self._vault_id(name)).gc(grace_hours * 3600)
        return {"vault": name, **dataclasses.asdict(report)}
