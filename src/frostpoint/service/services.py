"""The service's parts wired together, plus the background loops (scheduler, cleanup)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from sqlalchemy import or_, select

from frostpoint.enums import (
    JobTrigger,
    PowerState,
    ProtectionState,
    ProvisioningState,
    RestorePointTier,
)
from frostpoint.errors.catalog import FrostpointError
from frostpoint.service.backup import Backups
from frostpoint.service.browse import Browser
from frostpoint.service.jobs import ACTIVE
from frostpoint.service.machines import BUSY, Machines
from frostpoint.service.metrics import Metrics
from frostpoint.service.models import (
    Job,
    Machine,
    Policy,
    ProtectedItem,
    RestorePoint,
    RestorePointCollection,
    Vault,
    utcnow,
)
from frostpoint.service.notify import Notifications
from frostpoint.service.overview import Overview, VaultUsage
from frostpoint.service.policies import Policies, schedule_of
from frostpoint.service.protection import Protection, purge_at
from frostpoint.service.replace import Replacer
from frostpoint.service.replication import Replications
from frostpoint.service.restore import Restores
from frostpoint.service.runtime import Runtime
from frostpoint.service.softdelete import SoftDelete
from frostpoint.service.vault_checks import VaultChecks

log = logging.getLogger("frostpoint.service")


class Services:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.machines = Machines(rt)
        self.protection = Protection(rt)
        self.backups = Backups(rt, self.machines, self.protection)
        self.restores = Restores(rt, self.machines, self.protection)
        self.vault_checks = VaultChecks(rt, self.protection)
        self.policies = Policies(rt)
        self.replications = Replications(rt, self.protection)
        self.softdelete = SoftDelete(rt, self.protection, self.replications.drop_copies)
        self.replacer = Replacer(self.restores)
        self.browser = Browser(self.restores)
        usage = VaultUsage(self.protection)
        self.overview = Overview(rt.sessions, usage)
        self.metrics = Metrics(rt.sessions, usage)
        self.notifications = Notifications(rt)
        rt.job_listeners += [self.metrics.on_job_end, self.notifications.on_job_end]
        self.stopping = threading.Event()
        self._last_gc = time.monotonic()

    def list_machines(self) -> list[dict[str, Any]]:
        with self.rt.sessions() as s:
            return [self.machines.describe(m)
                    for m in s.scalars(select(Machine).order_by(Machine.name))]

    def console(self, name: str) -> str:
        """The end of the machine's console: a VM's serial log (the guest wrote it)."""
        with self.rt.sessions() as s:
            Machines.get(s, name)  # NotFound
        return self.rt.platform.console(name)

    def delete_machine(self, name: str) -> None:
        """Delete a machine; its restore points in a vault stay listed and restorable."""
        with self.rt.sessions.begin() as s:
            m = Machines.get(s, name)
            if s.scalar(select(Job.id).where(Job.active_slot == m.id)):
                raise FrostpointError("UserErrorBackupOperationInProgress",
                                      f"a backup of {name} is running; cancel it first")
            # A soft-deleted item's vault copies outlive the machine until its purge.
            item = s.scalar(select(ProtectedItem).where(ProtectedItem.machine_id == m.id))
            hold, hold_vault = None, None
            if item is not None and (v := s.get(Vault, item.vault_id)) is not None:
                hold, hold_vault = purge_at(item, v), v.id
            for rp in s.scalars(select(RestorePoint).where(RestorePoint.machine_id == m.id)):
                if hold and rp.vault_id == hold_vault and rp.vault_expires_at:
                    rp.vault_expires_at = max(rp.vault_expires_at, hold)
                if rp.snapshot_dir:
                    self.rt.platform.delete_snapshot(rp.snapshot_dir)
                if rp.vault_id:
                    rp.tier, rp.snapshot_dir = RestorePointTier.VAULT, None
                    rp.machine_id, rp.collection_id = None, None
                else:
                    s.delete(rp)
            for j in s.scalars(select(Job).where(Job.machine_id == m.id)):
                j.machine_id = None
            for obj in s.scalars(select(ProtectedItem).where(ProtectedItem.machine_id == m.id)):
                s.delete(obj)
            for rpc in s.scalars(select(RestorePointCollection)
                                 .where(RestorePointCollection.machine_id == m.id)):
                s.delete(rpc)
        self.machines.delete(name)

    def reconcile_machines(self) -> list[tuple[str, str, str]]:
        """At start, settle machines an earlier process left mid-operation (a crash, a
        kill -9): nothing else ever moves them out of Creating/Updating/Deleting, and
        those states refuse every backup and operation. Returns (name, from, to)."""
        done: list[tuple[str, str, str]] = []
        with self.rt.sessions() as s:
            stuck = [(m.name, m.provisioning_state) for m in s.scalars(
                select(Machine).where(Machine.provisioning_state.in_(BUSY)))]
        for name, state in stuck:
            try:
                done.append((name, state, self._reconcile(name, state)))
            except Exception:  # one machine must not stop the service from starting
                log.exception("machine %s left %s: not reconciled", name, state)
        for name, before, after in done:
            log.warning("machine %s was left %s by an earlier process: now %s",
                        name, before, after)
        return done

    def _reconcile(self, name: str, state: str) -> str:
        if state == ProvisioningState.DELETING:  # the user asked for the delete: finish it
            self.machines.delete(name)
            return "Deleted"
        running = self.rt.platform.is_running(name)
        with self.rt.sessions.begin() as s:
            m = Machines.get(s, name)
            if state == ProvisioningState.CREATING:
                # Its disks may be half made: Failed, so `vm delete` cleans it up.
                m.provisioning_state = ProvisioningState.FAILED
            else:  # Updating: what the platform shows now (start, stop, disk detach)
                failed = any(e.provisioning_state == ProvisioningState.FAILED for e in m.extensions)
                m.provisioning_state = (ProvisioningState.FAILED if failed
                                        else ProvisioningState.SUCCEEDED)
                if running:
                    m.power_state = PowerState.RUNNING
                elif m.power_state == PowerState.RUNNING:
                    m.power_state = PowerState.STOPPED
            return m.provisioning_state

    # -- background loops ------------------------------------------------------------
    def start_background(self) -> None:
        for target in (self._reaper_loop, self._scheduler_loop, self._cleanup_loop,
                       self._notify_loop):
            threading.Thread(target=target, daemon=True, name=target.__name__).start()

    def _notify_loop(self) -> None:
        self.notifications.run(self.stopping)  # deliveries and RPO checks

    def _reaper_loop(self) -> None:
        while not self.stopping.wait(2):
            try:
                reaped = self.backups.runner.reap_orphans()
                for job_id in reaped:
                    log.warning("job %s failed: its service stopped", job_id)
                    self.backups.runner.announce_end(job_id)
                if reaped:  # a replication a crash ended resumes now, not next pass
                    self.replications.run_due()
            except Exception:
                log.exception("reaper")

    def _scheduler_loop(self) -> None:
        while not self.stopping.wait(15):
            try:
                self.run_schedule()
                self.replications.run_due()  # and runs a crash ended (service/replication.py)
            except Exception:
                log.exception("scheduler")

    def run_schedule(self) -> list[str]:
        now = utcnow()
        due = []
        with self.rt.sessions.begin() as s:
            rows = s.execute(select(ProtectedItem, Policy, Machine)
                             .join(Policy, Policy.id == ProtectedItem.policy_id)
                             .join(Machine, Machine.id == ProtectedItem.machine_id))
            for item, policy, machine in rows:
                if item.protection_state not in (ProtectionState.IR_PENDING,
                                                 ProtectionState.PROTECTED,
                                                 ProtectionState.PROTECTION_ERROR):
                    continue
                slot = schedule_of(policy).due_slot(now)
                key = slot.isoformat(timespec="minutes") if slot else None
                # Later than the last slot run: a schedule moved to an earlier time
                # does not run the same day twice.
                if key and key > (item.last_scheduled_slot or ""):
                    item.last_scheduled_slot = key
                    due.append(machine.name)
        for name in due:
            try:
                self.backups.start(name, trigger=JobTrigger.SCHEDULED)
            except FrostpointError as e:
                log.warning("scheduled backup of %s not started: %s", name, e)
        return due

    def _cleanup_loop(self) -> None:
        while not self.stopping.wait(self.rt.timeouts.cleanup_interval):
            try:
                self.cleanup_all()
            except Exception:
                log.exception("cleanup")

    def cleanup_all(self) -> None:
        """One pass of retention and GC. Each machine, restore point and vault is done
        on its own, so one that fails (a vault gone, a manifest deleted by hand) is
        logged and tried again next pass while the others go on."""
        with self.rt.sessions() as s:
            ids = list(s.scalars(select(Machine.id)))
        for mid in ids:
            try:
                with self.rt.sessions() as s:
                    busy = s.scalar(select(Job.id).where(Job.machine_id == mid,
                                                         Job.status.in_(ACTIVE)))
                if not busy:
                    self.backups.cleanup_machine(mid)
            except Exception:
                log.exception("cleanup of machine %s", mid)
        for step in (self.policies.apply_retention, self.softdelete.purge_due,
                     self.expire_vault_restore_points):
            try:
                step()
            except Exception:
                log.exception("retention: %s", step.__name__)
        if time.monotonic() - self._last_gc >= self.rt.timeouts.gc_interval:
            self._last_gc = time.monotonic()
            self.gc_all()

    def gc_all(self) -> None:
        """Reclaim what expired restore points left; backups go on meanwhile."""
        with self.rt.sessions() as s:
            names = list(s.scalars(select(Vault.name)))
        for name in names:
            try:
                r = self.vault_checks.gc(name)
                log.info("vault %s gc: %d restore points, %d packs deleted (%d bytes), "
                         "%d pending", name, r["restore_points"], r["packs_deleted"],
                         r["bytes_deleted"], r["packs_pending"])
            except Exception:
                log.exception("gc of vault %s", name)

    def expire_vault_restore_points(self) -> list[str]:
        """Delete the vault copies past their retention, each in its own transaction;
        returns the ids deleted. A vault that cannot be reached keeps its restore points
        listed (tried again next pass) and costs the other vaults nothing."""
        now = utcnow()
        with self.rt.sessions() as s:
            # A soft-deleted item's retention stands still until its purge.
            held = select(ProtectedItem.machine_id).where(
                ProtectedItem.protection_state == ProtectionState.SOFT_DELETED)
            due = [(rp.id, rp.vault_id) for rp in s.scalars(
                select(RestorePoint).where(RestorePoint.tier == RestorePointTier.VAULT,
                                           RestorePoint.vault_expires_at < now,
                                           or_(RestorePoint.machine_id.is_(None),
                                               RestorePoint.machine_id.not_in(held))))]
        deleted, broken = [], set()
        for rp_id, vault_id in due:
            if vault_id in broken:
                continue
            try:
                if vault_id:
                    self.softdelete.delete_vault_copy(vault_id, rp_id)
                self.replications.drop_copies(rp_id)
                with self.rt.sessions.begin() as s:
                    rp = s.get(RestorePoint, rp_id)
                    if rp is not None:
                        s.delete(rp)
                deleted.append(rp_id)
            except Exception:
                broken.add(vault_id)
                log.exception("expiry of restore point %s in vault %s", rp_id, vault_id)
        return deleted
