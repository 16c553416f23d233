"""Replace a machine's disks with a restore point's (`restore disks RP --replace`).

The machine must be stopped (or is stopped, with --stop). A safety restore point of
its current disks is taken first (an instant snapshot, listed like any other), then
each disk is restored beside the disks and swapped in (MachinePlatform.replace_disk),
and the machine is started. A failure midway puts every disk back from the safety
restore point and starts the machine: the job fails with RestoreReplaceRolledBack,
naming the cause. The job holds the machine's backup slot, so no backup runs while
its disks are swapped."""

from __future__ import annotations

import shutil
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from frostpoint.enums import (
    Consistency,
    JobOperation,
    JobStatus,
    PowerState,
    RestorePointTier,
    SubTaskName,
    SubTaskStatus,
)
from frostpoint.errors.catalog import FrostpointError, error_dict
from frostpoint.fabric.platform import DiskSpec
from frostpoint.service.jobs import describe_job
from frostpoint.service.machines import Machines
from frostpoint.service.models import (
    Job,
    Machine,
    Policy,
    ProtectedItem,
    RestorePoint,
    SubTask,
    utcnow,
)
from frostpoint.service.protection import Protection
from frostpoint.service.restore import Restores
from frostpoint.service.specs import machine_spec
from frostpoint.service.vault_errors import as_catalog
from frostpoint.vault.errors import VaultError

SAFETY, SWAP = SubTaskName.SAFETY_SNAPSHOT, SubTaskName.REPLACE_DISKS
SAFETY_DAYS = 2  # kept as instant restore points of an unprotected machine are


class Replacer:
    def __init__(self, restores: Restores) -> None:
        self.restores = restores
        self.rt = restores.rt
        self.machines: Machines = restores.machines
        self.runner = restores.runner

    def replace(self, rp_id: str, stop: bool = False, source: str = "auto") -> dict[str, Any]:
        rp = self.restores.restore_point(rp_id)
        src = self.restores.pick_source(rp, source)
        with self.rt.sessions() as s:
            m = s.get(Machine, rp.machine_id) if rp.machine_id else None
            if m is None:
                raise FrostpointError("NotFound", f"the machine of restore point {rp_id} "
                                      f"({rp.machine_name}) no longer exists: restore it as "
                                      "a new machine with `frostpoint restore vm`")
            name, mid = m.name, m.id
            have = {d.name for d in m.disks}
            if m.power_state == PowerState.RUNNING and not stop:
                raise FrostpointError("UserErrorMachineRunning", f"machine {name} is "
                                      "running: stop it, or add --stop",
                                      {"machine": name, "power_state": m.power_state})
        missing = [d["name"] for d in rp.disks if d["name"] not in have]
        if missing:
            raise FrostpointError("InvalidInput", f"machine {name} has no disk "
                                  f"{', '.join(missing)} any more: restore the point as a "
                                  "new machine with `frostpoint restore vm`",
                                  {"disks": missing})
        job = Job(operation=JobOperation.RESTORE_REPLACE, machine_id=mid, machine_name=name,
                  active_slot=mid, owner=self.rt.owner, heartbeat_at=utcnow(),
                  params={"restore_point": rp_id, "stop": stop, "source": src,
                          "source_requested": source})
        job.subtasks = [SubTask(seq=0, name=SAFETY), SubTask(seq=1, name=SWAP)]
        try:
            with self.rt.sessions.begin() as s:
                s.add(job)
        except IntegrityError:
            raise FrostpointError("UserErrorBackupOperationInProgress",
                                  f"a backup or restore of {name} is running") from None
        self.runner.run(job.id, lambda job_id: self._run(job_id, rp_id, src), name)
        with self.rt.sessions() as s:
            return describe_job(s.get(Job, job.id))  # type: ignore[arg-type]  # just added

    def _details(self, job_id: str, **kv: Any) -> None:
        with self.rt.sessions.begin() as s:
            j = s.get(Job, job_id)
            assert j is not None
            j.details = {**j.details, **kv}

    def _run(self, job_id: str, rp_id: str, src: str) -> tuple[str, list[Any]]:
        rp = self.restores.restore_point(rp_id)
        self._details(job_id, source=src, restore_point=rp_id)
        with self.rt.sessions() as s:
            m = s.get(Machine, rp.machine_id)
            assert m is not None
            name = m.name
            held = {d["name"] for d in rp.disks}
            specs = [d for d in machine_spec(m).disks if d.name in held]
        self.runner.subtask(job_id, SAFETY, SubTaskStatus.IN_PROGRESS)
        self.machines.stop(name)
        safety = self._safety_point(job_id, name, specs)
        self._details(job_id, safety_restore_point=safety.id)
        self.runner.subtask(job_id, SAFETY, SubTaskStatus.COMPLETED, restore_point=safety.id)
        self.runner.subtask(job_id, SWAP, SubTaskStatus.IN_PROGRESS)
        swapped: list[str] = []
        try:
            for disk in specs:
                self.restores.put_disk(rp, disk, src, job_id)
                swapped.append(disk.name)
                self.runner.subtask(job_id, SWAP, SubTaskStatus.IN_PROGRESS, disks_done=swapped)
        except Exception as e:  # noqa: BLE001 - whatever failed, the old disks come back
            cause = as_catalog(e) if isinstance(e, (FrostpointError, VaultError)) else (
                FrostpointError("BackUpOperationFailed", f"{type(e).__name__}: {e}"))
            self._roll_back(job_id, name, safety, specs, cause)
            raise AssertionError("unreachable") from None  # _roll_back raises
        self.machines.start(name)
        self._details(job_id, replaced=swapped)
        self.runner.subtask(job_id, SWAP, SubTaskStatus.COMPLETED)
        return JobStatus.COMPLETED, []

    def _safety_point(self, job_id: str, name: str, specs: list[DiskSpec]) -> RestorePoint:
        """An instant restore point of the machine's disks as they are (it is stopped,
        so they are consistent)."""
        snap = self.machines.snapshot_disks(name, f"safety-{job_id}", specs)
        with self.rt.sessions.begin() as s:
            m = Machines.get(s, name)
            item = s.scalar(select(ProtectedItem).where(ProtectedItem.machine_id == m.id))
            policy = s.get(Policy, item.policy_id) if item else None
            days = policy.instant_rp_days if policy else SAFETY_DAYS
            rpc = Protection.collection_for(s, m)
            now = utcnow()
            rp = RestorePoint(
                machine_id=m.id, machine_name=name, collection_id=rpc.id, job_id=job_id,
                consistency=Consistency.FILE_SYSTEM, tier=RestorePointTier.SNAPSHOT,
                snapshot_dir=snap["dir"], instant_expires_at=now + timedelta(days=days),
                disks=[{"name": d.name, "size_bytes": d.size_bytes,
                        "filesystem": d.filesystem, "mountpoint": d.mountpoint,
                        **({"encryption_key": d.key_ref, "wrapped_key": d.wrapped_key}
                           if d.key_ref else {})}
                       for d in m.disks if d.name in {x.name for x in specs}])
            s.add(rp)
        return rp

    def _roll_back(self, job_id: str, name: str, safety: RestorePoint,
                   specs: list[DiskSpec], cause: FrostpointError) -> None:
        """Every disk back from the safety snapshot, then start; raises the outcome."""
        self.runner.subtask(job_id, SWAP, SubTaskStatus.FAILED)
        assert safety.snapshot_dir
        try:
            for disk in specs:
                work = Path(tempfile.mkdtemp(prefix="rollback-",
                                             dir=self.rt.platform.scratch_dir()))
                try:
                    tmp = work / f"{disk.name}.img"
                    self.rt.platform.copy_disk(
                        self.rt.platform.snapshot_image(safety.snapshot_dir, disk.name), tmp)
                    self.rt.platform.replace_disk(disk, tmp)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
            self.machines.start(name)
        except Exception as e:
            self._details(job_id, rolled_back=False)
            raise FrostpointError("RestoreReplaceRollbackFailed",
                                  f"replacing the disks of {name} failed ({cause.detail}), "
                                  f"and so did putting them back: {e}",
                                  {"machine": name, "safety_restore_point": safety.id,
                                   "cause": error_dict(cause.code, cause.detail)}) from e
        self._details(job_id, rolled_back=True)
        raise FrostpointError("RestoreReplaceRolledBack",
                              f"replacing the disks of {name} failed ({cause.detail}); its "
                              f"disks are back as they were (safety restore point "
                              f"{safety.id}) and it runs again",
                              {"machine": name, "safety_restore_point": safety.id,
                               "cause": error_dict(cause.code, cause.detail)})
