"""The backup flow: checks, Take Snapshot, instant restore point, Transfer data to vault."""

from __future__ import annotations

import json
import logging
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from frostpoint.enums import (
    Consistency,
    JobOperation,
    JobStatus,
    JobTrigger,
    PowerState,
    ProtectionState,
    ProvisioningState,
    RestorePointTier,
    SubTaskName,
    SubTaskStatus,
)
from frostpoint.errors.catalog import CATALOG, FrostpointError, GuestAgentUnavailable, JobCancelled
from frostpoint.protocol import MIN_AGENT_VERSION, SNAPSHOT_EXTENSION, version_tuple
from frostpoint.service.freeze_guard import FreezeGuard
from frostpoint.service.jobs import JobRunner, describe_job
from frostpoint.service.keyvault import BACKUP_PRINCIPAL
from frostpoint.service.machines import BUSY, Machines
from frostpoint.service.models import (
    Job,
    Lock,
    Machine,
    Policy,
    ProtectedItem,
    RestorePoint,
    RestorePointCollection,
    SubTask,
    utcnow,
)
from frostpoint.service.protection import Protection
from frostpoint.service.runtime import Runtime, status_key
from frostpoint.service.specs import machine_spec, taken_disks
from frostpoint.service.vault_errors import as_catalog
from frostpoint.vault.errors import VaultError

MAX_INSTANT_RPS = 18
MAX_DISK = 32 << 40
MAX_ENCRYPTED_DISK = 4 << 40
SNAPSHOT, TRANSFER = SubTaskName.TAKE_SNAPSHOT, SubTaskName.TRANSFER
log = logging.getLogger("frostpoint.service")


class Backups:
    def __init__(self, rt: Runtime, machines: Machines, protection: Protection) -> None:
        self.rt = rt
        self.machines = machines
        self.protection = protection
        self.runner = JobRunner(rt)

    # -- starting ------------------------------------------------------------------
    def start(self, machine: str, trigger: str = JobTrigger.ON_DEMAND,
              retain_days: int | None = None) -> dict[str, Any]:
        if retain_days is not None and not 1 <= retain_days <= 36500:
            raise FrostpointError("InvalidInput", "--retain-days must be 1-36500")
        with self.rt.sessions() as s:
            m = Machines.get(s, machine)
            item = s.scalar(select(ProtectedItem).where(ProtectedItem.machine_id == m.id))
            if item is None or item.protection_state in (ProtectionState.PROTECTION_STOPPED,
                                                         ProtectionState.PROTECTION_PAUSED,
                                                         ProtectionState.SOFT_DELETED):
                state = item.protection_state if item else ProtectionState.NOT_PROTECTED
                raise FrostpointError("UserErrorBcmDatasourceNotPresent",
                                      f"machine {machine} is {state}",
                                      {"protection_state": state})
            mid = m.id
            # The disks it takes, fixed at its start (the snapshot and the vault read these).
            taken = [d.name for d in m.disks if d.name not in item.excluded_disks]
        job = Job(operation=JobOperation.BACKUP, machine_id=mid, machine_name=machine,
                  trigger=trigger,
                  active_slot=mid, owner=self.rt.owner, heartbeat_at=utcnow(),
                  params={"retain_days": retain_days, "disks": taken})
        job.subtasks = [SubTask(seq=0, name=SNAPSHOT), SubTask(seq=1, name=TRANSFER)]
        try:
            with self.rt.sessions.begin() as s:
                s.add(job)
        except IntegrityError:
            with self.rt.sessions() as s:
                running = s.scalar(select(Job.id).where(Job.active_slot == mid))
            raise FrostpointError("UserErrorBackupOperationInProgress",
                                  f"a backup of {machine} is already running",
                                  {"running_job": running}) from None
        self.runner.run(job.id, self._run, machine, self._on_end)
        with self.rt.sessions() as s:
            return describe_job(s.get(Job, job.id))  # type: ignore[arg-type]  # just added

    def _on_end(self, job_id: str, status: str) -> None:
        try:
            self._record_end(job_id, status)
        finally:
            with self.rt.sessions() as s:
                job = s.get(Job, job_id)
                if job is not None and job.machine_id:
                    self.rt.notifier.bump(job.machine_id)

    def _record_end(self, job_id: str, status: str) -> None:
        with self.rt.sessions.begin() as s:
            job = s.get(Job, job_id)
            if job is None or job.machine_id is None:
                return
            snap_dir = (job.details.get("snapshot") or {}).get("dir")
            if snap_dir and not s.scalar(select(RestorePoint.id).where(
                    RestorePoint.job_id == job_id)):
                self.rt.platform.delete_snapshot(snap_dir)  # no restore point uses it
            m = s.get(Machine, job.machine_id)
            if m is not None and any(e.name == SNAPSHOT_EXTENSION for e in m.extensions):
                # The goal state changes (the task is withdrawn): wake the agent's poll.
                m.goal_state_incarnation += 1
            item = s.scalar(select(ProtectedItem)
                            .where(ProtectedItem.machine_id == job.machine_id))
            if item is None:
                return
            item.last_backup_at = utcnow()
            item.last_backup_status = status
            if status in (JobStatus.COMPLETED, JobStatus.COMPLETED_WITH_WARNINGS):
                item.protection_state = ProtectionState.PROTECTED

    # -- the job body --------------------------------------------------------------
    def _run(self, job_id: str) -> tuple[str, list[Any]]:
        warnings: list[Any] = []
        with self.rt.sessions() as s:
            job = s.get(Job, job_id)
            assert job is not None and job.machine_id is not None
            m = s.get(Machine, job.machine_id)
            assert m is not None
            item = s.scalar(select(ProtectedItem).where(ProtectedItem.machine_id == m.id))
            assert item is not None
            policy = s.get(Policy, item.policy_id)
            assert policy is not None
            rpc = s.scalar(select(RestorePointCollection)
                           .where(RestorePointCollection.machine_id == m.id))
            machine = m.name
            vault_id, instant_days = item.vault_id, policy.instant_rp_days
            vault_days = job.params.get("retain_days") or policy.vault_retention_days
            self._precheck(m)
            online = m.power_state == PowerState.RUNNING
            if online and not m.agent_installed:
                raise FrostpointError(
                    "UserErrorGuestAgentStatusUnavailable",
                    f"machine {m.name} runs without a guest agent (made from an image "
                    f"without it): frostpoint vm agent install {m.name}",
                    {"agent_installed": False})
            images = taken_disks(machine_spec(m).disks, job.params)
            kept = [d for d in m.disks if d.name in {i.name for i in images}]
            left_out = [{"name": d.name, "size_bytes": d.size_bytes, "filesystem": d.filesystem,
                         "mountpoint": d.mountpoint} for d in m.disks if d not in kept]
            disks = [{"name": d.name, "mountpoint": d.mountpoint} for d in kept]
            for d in kept:
                if d.key_ref and d.wrapped_key:  # the service itself must be let in
                    self.machines.keyvaults.unwrap(d.key_ref, d.wrapped_key,
                                                   BACKUP_PRINCIPAL)
            # An encrypted disk's wrapped data key goes into the restore point with it.
            disk_info = [{"name": d.name, "size_bytes": d.size_bytes,
                          "filesystem": d.filesystem, "mountpoint": d.mountpoint,
                          **({"encryption_key": d.key_ref, "wrapped_key": d.wrapped_key}
                             if d.key_ref else {})}
                         for d in kept]
            machine_id = m.id
        assert rpc is not None
        self.cleanup_machine(machine_id, before_backup=True)

        # Take Snapshot
        self.runner.subtask(job_id, SNAPSHOT, SubTaskStatus.IN_PROGRESS)
        if online:
            status = self._snapshot_by_extension(job_id, machine_id, machine, disks)
            consistency = status.get("consistency", Consistency.CRASH)
            freeze_ms = status.get("freezeMs")
            # A guest's warnings get the catalog's shape (causes, actions), as errors do.
            warnings += [FrostpointError(
                str(w["code"]) if w.get("code") in CATALOG
                else "ExtensionOperationFailedForManagedDisks",
                str(w.get("message", ""))).to_dict(machine)
                for w in status.get("warnings", []) if isinstance(w, dict)]
            # The host recorded where it put the snapshot; never trust a guest's path.
            with self.rt.sessions() as s:
                j = s.get(Job, job_id)
                snap = dict((j.details if j else {}).get("snapshot") or {})
            if not snap.get("dir"):
                raise FrostpointError("ExtensionOperationFailedForManagedDisks",
                                      "the extension reported success but the host took "
                                      "no snapshot", {"extension_status": status})
        else:
            snap = self.machines.snapshot_disks(machine, job_id, images)
            consistency, freeze_ms = Consistency.CRASH, None
        if self.runner.cancelled(job_id):
            if snap.get("dir"):
                self.rt.platform.delete_snapshot(snap["dir"])
            raise FrostpointError("JobCancelled")
        now = utcnow()
        rp = RestorePoint(machine_id=machine_id, machine_name=machine,
                          collection_id=rpc.id, job_id=job_id, consistency=consistency,
                          tier=RestorePointTier.SNAPSHOT, snapshot_dir=snap.get("dir"),
                          instant_expires_at=now + timedelta(days=instant_days),
                          disks=disk_info, freeze_ms=freeze_ms, excluded_disks=left_out)
        with self.rt.sessions.begin() as s:
            s.add(rp)
            job = s.get(Job, job_id)
            assert job is not None
            job.details = {**job.details, "restore_point": rp.id, "consistency": consistency,
                           "freeze_ms": freeze_ms}
        self.runner.subtask(job_id, SNAPSHOT, SubTaskStatus.COMPLETED, restore_point=rp.id)

        # Transfer data to vault
        self.runner.subtask(job_id, TRANSFER, SubTaskStatus.IN_PROGRESS)
        last = [0.0]

        def progress(done: int, total: int) -> None:
            if time.monotonic() - last[0] > 0.5 or done == total:
                last[0] = time.monotonic()
                self.runner.subtask(job_id, TRANSFER, SubTaskStatus.IN_PROGRESS, bytes_done=done,
                                    bytes_total=total)

        try:
            store = self.protection.store(vault_id)
            files = {d.name: self.rt.platform.snapshot_image(snap["dir"], d.name)
                     for d in images}
            stats = store.backup(rp.id, files,
                                 labels={"machine": machine, "job": job_id,
                                         # what `vault import` needs to list it again
                                         "consistency": str(consistency),
                                         "disks": json.dumps(disk_info)},
                                 progress=progress,
                                 should_cancel=lambda: self.runner.cancelled(job_id),
                                 previous=self._previous_snapshot(machine_id, vault_id, rp.id))
        except (FrostpointError, VaultError) as e:
            err = as_catalog(e)  # the vault's own exceptions get their catalog code here
            if isinstance(err, JobCancelled):
                self.runner.subtask(job_id, TRANSFER, SubTaskStatus.CANCELLED)
                return JobStatus.CANCELLED, warnings
            self.runner.subtask(job_id, TRANSFER, SubTaskStatus.FAILED)
            warnings.append(err.to_dict(machine))
            return JobStatus.COMPLETED_WITH_WARNINGS, warnings
        except Exception as e:  # noqa: BLE001 - the snapshot stands; the transfer failed
            self.runner.subtask(job_id, TRANSFER, SubTaskStatus.FAILED)
            warnings.append(FrostpointError("BackUpOperationFailed",
                                            f"transfer to vault failed: {e}").to_dict(machine))
            return JobStatus.COMPLETED_WITH_WARNINGS, warnings
        with self.rt.sessions.begin() as s:
            r = s.get(RestorePoint, rp.id)
            assert r is not None
            r.tier, r.vault_id = RestorePointTier.SNAPSHOT_AND_VAULT, vault_id
            r.vault_expires_at = utcnow() + timedelta(days=int(vault_days))
            job = s.get(Job, job_id)
            assert job is not None
            job.details = {**job.details, "transfer": {
                k: getattr(stats, k) for k in (
                    "bytes_read", "bytes_total", "chunks_new", "chunks_reused", "bytes_stored",
                    "blocks_unchanged", "blocks_hole", "duration_s", "cbt",
                    "plain_bytes_new", "sealed_bytes_new")}}
        self.runner.subtask(job_id, TRANSFER, SubTaskStatus.COMPLETED)
        return (JobStatus.COMPLETED_WITH_WARNINGS if warnings else JobStatus.COMPLETED), warnings

    def _previous_snapshot(self, machine_id: str, vault_id: str,
                           exclude: str) -> dict[str, tuple[Path, str]] | None:
        """The newest restore point in this vault whose snapshot is still in the pool:
        changed-block tracking compares against it."""
        with self.rt.sessions() as s:
            prev = s.scalars(select(RestorePoint).where(
                RestorePoint.machine_id == machine_id, RestorePoint.vault_id == vault_id,
                RestorePoint.tier == RestorePointTier.SNAPSHOT_AND_VAULT,
                RestorePoint.id != exclude)
                .order_by(RestorePoint.created_at.desc())).first()
            if prev is None or not prev.snapshot_dir:
                return None
            return {d["name"]: (self.rt.platform.snapshot_image(prev.snapshot_dir, d["name"]),
                                prev.id) for d in prev.disks}

    def _precheck(self, m: Machine) -> None:
        if m.provisioning_state in BUSY:
            raise FrostpointError("UserErrorVmNotInDesirableState",
                                  f"machine {m.name} is {m.provisioning_state}: a platform "
                                  "operation runs on it; wait for it to finish and retry",
                                  {"provisioning_state": m.provisioning_state})
        failed = [e.name for e in m.extensions if e.provisioning_state == ProvisioningState.FAILED
                  and e.name != SNAPSHOT_EXTENSION]
        if m.provisioning_state == ProvisioningState.FAILED and failed:
            raise FrostpointError("UserErrorVmProvisioningStateFailed",
                                  f"extensions in failed state: {', '.join(failed)}",
                                  {"failed_extensions": failed})
        for d in m.disks:
            limit = MAX_ENCRYPTED_DISK if d.encrypted else MAX_DISK
            if d.size_bytes > limit:
                raise FrostpointError("UserErrorUnsupportedDiskSize",
                                      f"disk {d.name} is {d.size_bytes} bytes (limit {limit})")

    def _snapshot_by_extension(self, job_id: str, machine_id: str, machine: str,
                               disks: list[dict[str, str]]) -> dict[str, Any]:
        t = self.rt.timeouts
        with self.rt.sessions() as s:
            m = s.get(Machine, machine_id)
            assert m is not None
            beat, version = m.last_heartbeat, m.agent_version
            extensions_enabled = (m.agent_info or {}).get("extensions_enabled")
        if beat is None or (utcnow() - beat).total_seconds() > t.heartbeat_stale:
            raise FrostpointError(
                "UserErrorGuestAgentStatusUnavailable",
                f"no heartbeat from the agent of {machine} "
                + (f"for {(utcnow() - beat).total_seconds():.0f} s" if beat else "ever"),
                {"last_heartbeat": beat.isoformat() + "Z" if beat else None})
        if version_tuple(version) < version_tuple(MIN_AGENT_VERSION):
            # Such an agent never runs the snapshot extension; say so now, not after
            # the extension wait.
            raise FrostpointError(
                "GuestAgentSnapshotTaskStatusError",
                f"the agent of {machine} is {version}, older than the minimum "
                f"{MIN_AGENT_VERSION}: frostpoint vm agent install {machine}",
                {"agent_version": version, "min_agent_version": MIN_AGENT_VERSION})
        if extensions_enabled is False:
            # Such an agent never runs the task: say so now, not after the extension
            # wait, and put no task in its goal state to run once extensions come back.
            raise FrostpointError(
                "GuestAgentSnapshotTaskStatusError",
                f"extensions are disabled in the agent of {machine} (Extensions.Enabled=n "
                "in /etc/frostpoint/agent.conf): the snapshot task cannot run",
                {"cause": "extensions disabled", "extensions_enabled": False})
        seq = self.machines.set_extension(machine_id, {
            "taskId": job_id, "disks": disks, "freezeLimitSeconds": t.freeze_limit,
            "hostCallTimeoutSeconds": t.host_call, "deadlineSeconds": t.extension_wait})
        deadline = time.monotonic() + t.extension_wait
        guard = FreezeGuard(self.rt, machine_id, t.freeze_limit, seq)
        try:
            return self._wait_extension(job_id, machine_id, machine, seq, deadline, guard)
        except FrostpointError as e:
            # No final status came: if a freeze began (or may have, the machine having
            # gone silent), nobody in the machine may be left to end it.
            thawed = guard.after_abnormal_end(isinstance(e, GuestAgentUnavailable))
            if thawed:
                raise FrostpointError(e.code, f"{e.detail or e.spec.message}; the fabric "
                                      f"thawed disk(s) {', '.join(thawed)} from the host, "
                                      "left frozen past the freeze limit",
                                      {**e.details, "host_thawed": thawed}) from None
            raise

    def _wait_extension(self, job_id: str, machine_id: str, machine: str, seq: int,
                        deadline: float, guard: FreezeGuard) -> dict[str, Any]:
        t = self.rt.timeouts
        seen_transitioning = False
        while time.monotonic() < deadline:
            if self.runner.cancelled(job_id):
                raise FrostpointError("JobCancelled")
            version = self.rt.notifier.version(status_key(machine_id))
            with self.rt.sessions() as s:
                m = s.get(Machine, machine_id)
                assert m is not None
                ext = next((e for e in m.extensions if e.name == SNAPSHOT_EXTENSION), None)
                st = dict(ext.status) if ext and ext.sequence == seq else {}
                beat = m.last_heartbeat
            guard.observe(st, beat)
            if st.get("status") == "success":
                return st
            if st.get("status") == "error":
                code = st.get("code")
                if code not in CATALOG:  # a guest may say anything; keep our catalog
                    code = "ExtensionOperationFailedForManagedDisks"
                raise FrostpointError(code, st.get("message") or "extension failed",
                                      {**(st.get("details") or {}), "extension_status": st})
            if st.get("status") == "transitioning" and not seen_transitioning:
                seen_transitioning = True
                self.runner.subtask(job_id, SNAPSHOT, SubTaskStatus.IN_PROGRESS,
                                    extension="transitioning")
            if beat and (utcnow() - beat).total_seconds() > t.heartbeat_stale:
                raise FrostpointError("UserErrorGuestAgentStatusUnavailable",
                                      f"the agent of {machine} stopped heartbeating")
            # Woken by the agent's next status report, else a look every 0.1 s.
            self.rt.notifier.wait(status_key(machine_id), version, 0.1)
        raise FrostpointError("GuestAgentSnapshotTaskStatusError",
                              f"no status for the snapshot task within "
                              f"{t.extension_wait:.0f} s", {"sequence": seq})

    # -- restore point cleanup -------------------------------------------------------
    def delete_collection(self, machine: str, batch: int = 5) -> dict[str, Any]:
        """Delete every instant restore point of a machine (vault copies stay).

        Batched and idempotent: each batch commits on its own, so a crash or a second
        call just carries on where the first stopped.
        """
        with self.rt.sessions() as s:
            m = Machines.get(s, machine)
            rpc = s.scalar(select(RestorePointCollection)
                           .where(RestorePointCollection.machine_id == m.id))
            if rpc is None:
                return {"machine": machine, "deleted": 0}
            locks = [lk.name for lk in s.scalars(
                select(Lock).where(Lock.resource_group_id == rpc.resource_group_id))]
            running = s.scalar(select(Job.id).where(Job.active_slot == m.id))
            if running:
                raise FrostpointError("UserErrorBackupOperationInProgress",
                                      f"backup {running} of {machine} is running; wait or "
                                      "cancel it first", {"running_job": running})
            if locks:
                raise FrostpointError("BackUpOperationFailedV2",
                                      f"lock(s) {', '.join(locks)} on the resource group "
                                      "stop the deletion", {"locks": locks})
            mid = m.id
        deleted = 0
        while True:
            with self.rt.sessions.begin() as s:
                rps = list(s.scalars(select(RestorePoint).where(
                    RestorePoint.machine_id == mid,
                    RestorePoint.tier.in_((RestorePointTier.SNAPSHOT,
                                           RestorePointTier.SNAPSHOT_AND_VAULT))).limit(batch)))
                if not rps:
                    break
                for rp in rps:
                    if rp.snapshot_dir:
                        self.rt.platform.delete_snapshot(rp.snapshot_dir)
                    if rp.tier == RestorePointTier.SNAPSHOT_AND_VAULT:
                        rp.tier, rp.snapshot_dir = RestorePointTier.VAULT, None
                    else:
                        s.delete(rp)
                    deleted += 1
        return {"machine": machine, "deleted": deleted}

    def cleanup_machine(self, machine_id: str, before_backup: bool = False) -> dict[str, Any]:
        """Drop expired instant restore points unless a lock stops it; enforce the 18."""
        now = utcnow()
        removed, blocked = [], []
        with self.rt.sessions.begin() as s:
            rpc = s.scalar(select(RestorePointCollection)
                           .where(RestorePointCollection.machine_id == machine_id))
            if rpc is None:
                return {"removed": [], "blocked": []}
            locks = list(s.scalars(select(Lock)
                                   .where(Lock.resource_group_id == rpc.resource_group_id)))
            instant = list(s.scalars(select(RestorePoint).where(
                RestorePoint.machine_id == machine_id,
                RestorePoint.tier.in_((RestorePointTier.SNAPSHOT,
                                       RestorePointTier.SNAPSHOT_AND_VAULT)))
                .order_by(RestorePoint.created_at)))
            for rp in instant:
                if rp.instant_expires_at > now:
                    continue
                if locks:
                    blocked.append(rp.id)
                    continue
                if rp.snapshot_dir:
                    self.rt.platform.delete_snapshot(rp.snapshot_dir)
                removed.append(rp.id)
                if rp.tier == RestorePointTier.SNAPSHOT_AND_VAULT:
                    rp.tier, rp.snapshot_dir = RestorePointTier.VAULT, None
                else:
                    s.delete(rp)
            live = len(instant) - len(removed)
            machine = s.get(Machine, machine_id)
            name = machine.name if machine else machine_id
        if before_backup and live >= MAX_INSTANT_RPS:
            raise FrostpointError(
                "UserErrorRpCollectionLimitReached",
                f"{name} has {live} instant restore points"
                + (f" and lock(s) {', '.join(lk.name for lk in locks)} stop the cleanup"
                   if locks else " and none has expired"),
                {"instant_restore_points": live, "locks": [lk.name for lk in locks]})
        return {"removed": removed, "blocked": blocked}
