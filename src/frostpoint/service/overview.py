"""The one-screen overview (GET /status, `frostpoint status`, the web UI's overview):
each machine's protection and RPO, the jobs running now, the last day's failures and
vault usage. Also the RPO rule itself (within_rpo), which service/notify.py raises
rpo-missed from, and vault usage, which /metrics reports (service/metrics.py)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from frostpoint.enums import ProtectionState
from frostpoint.errors.catalog import error_dict
from frostpoint.service.jobs import ACTIVE, describe_job
from frostpoint.service.models import (
    Job,
    Machine,
    Policy,
    ProtectedItem,
    RestorePoint,
    Vault,
    utcnow,
)
from frostpoint.service.protection import Protection

log = logging.getLogger("frostpoint.service")
FAILURE_WINDOW = timedelta(hours=24)
# Protection states whose machine is expected to get backups (and so to meet its RPO).
EXPECTING = (ProtectionState.IR_PENDING, ProtectionState.PROTECTED,
             ProtectionState.PROTECTION_ERROR)


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() + "Z" if t else None


def last_good(s: Session, machine_id: str) -> RestorePoint | None:
    """The machine's newest restore point: one exists only once a backup's snapshot
    was taken, so it is one a restore can use."""
    rp: RestorePoint | None = s.scalars(select(RestorePoint).where(
        RestorePoint.machine_id == machine_id)
        .order_by(RestorePoint.created_at.desc())).first()
    return rp


@dataclass(frozen=True)
class Rpo:
    hours: int | None
    within: bool | None  # None: the policy sets no RPO, or the machine expects no backups
    since: datetime  # what the RPO is counted from: the last good point, or protection's start


def within_rpo(item: ProtectedItem, policy: Policy, good: RestorePoint | None,
               now: datetime) -> Rpo:
    since = good.created_at if good else item.created_at
    if policy.rpo_hours is None or item.protection_state not in EXPECTING:
        return Rpo(policy.rpo_hours, None, since)
    return Rpo(policy.rpo_hours, now - since <= timedelta(hours=policy.rpo_hours), since)


class VaultUsage:
    """A vault's stored bytes and chunks, from its chunk index (opened once; the sum is
    kept while the chunk count stays the same, so a scrape does not walk it again)."""

    def __init__(self, protection: Protection) -> None:
        self.protection = protection
        self._seen: dict[str, tuple[int, int]] = {}  # vault id -> (chunks, bytes)
        self._lock = threading.Lock()

    def of(self, vault_id: str) -> tuple[int, int] | None:
        try:
            index = self.protection.store(vault_id).index
        except Exception:  # noqa: BLE001 - a vault that does not open has no usage to show
            log.warning("vault %s: usage not read", vault_id, exc_info=True)
            return None
        chunks = len(index)
        with self._lock:
            seen = self._seen.get(vault_id)
            if seen is None or seen[0] != chunks:
                seen = (chunks, sum(loc[2] for _cid, loc in index.items()))
                self._seen[vault_id] = seen
            return seen


class Overview:
    def __init__(self, sessions: Any, usage: VaultUsage) -> None:
        self.sessions = sessions
        self.usage = usage

    def status(self) -> dict[str, Any]:
        now = utcnow()
        with self.sessions() as s:
            machines = [self._machine(s, m, now)
                        for m in s.scalars(select(Machine).order_by(Machine.name))]
            running = [self._running(j) for j in s.scalars(
                select(Job).where(Job.status.in_(ACTIVE)).order_by(Job.started_at))]
            failures = [self._failure(j) for j in s.scalars(
                select(Job).where(Job.status == "Failed",
                                  Job.ended_at >= now - FAILURE_WINDOW)
                .order_by(Job.ended_at.desc()).limit(100))]
            vaults = [(v.id, v.name, v.backend, s.scalar(
                select(func.count()).select_from(RestorePoint)
                .where(RestorePoint.vault_id == v.id)))
                for v in s.scalars(select(Vault).order_by(Vault.name))]
        return {"time": _iso(now), "machines": machines, "running": running,
                "failures": failures, "vaults": [self._vault(*v) for v in vaults]}

    def _machine(self, s: Session, m: Machine, now: datetime) -> dict[str, Any]:
        row = s.execute(select(ProtectedItem, Policy, Vault)
                        .join(Policy, Policy.id == ProtectedItem.policy_id)
                        .join(Vault, Vault.id == ProtectedItem.vault_id)
                        .where(ProtectedItem.machine_id == m.id)).first()
        beat = (now - m.last_heartbeat).total_seconds() if m.last_heartbeat else None
        out: dict[str, Any] = {
            "name": m.name, "power_state": m.power_state, "agent_status": m.agent_status,
            "heartbeat_age_s": beat, "protection_state": ProtectionState.NOT_PROTECTED,
            "vault": None, "policy": None, "last_backup_at": None,
            "last_backup_status": None, "last_backup_age_s": None, "consistency": None,
            "last_restore_point_at": None, "rpo_hours": None, "within_rpo": None}
        if row is None:
            return out
        item, policy, vault = row
        good = last_good(s, m.id)
        rpo = within_rpo(item, policy, good, now)
        age = (now - item.last_backup_at).total_seconds() if item.last_backup_at else None
        return {**out, "protection_state": item.protection_state, "vault": vault.name,
                "policy": policy.name, "last_backup_at": _iso(item.last_backup_at),
                "last_backup_status": item.last_backup_status, "last_backup_age_s": age,
                "consistency": good.consistency if good else None,
                "last_restore_point_at": _iso(good.created_at if good else None),
                "rpo_hours": rpo.hours, "within_rpo": rpo.within}

    @staticmethod
    def _running(j: Job) -> dict[str, Any]:
        d = describe_job(j)
        step = next((t for t in d["subtasks"] if t["status"] == "InProgress"), None)
        p = step["progress"] if step else {}
        done, total = p.get("bytes_done", p.get("done")), p.get("bytes_total", p.get("total"))
        percent = round(100.0 * done / total, 1) if done is not None and total else None
        return {"id": j.id, "operation": j.operation, "machine": j.machine_name,
                "status": j.status, "started_at": d["started_at"],
                "duration_s": d["duration_s"], "step": step["name"] if step else None,
                "percent": percent}

    @staticmethod
    def _failure(j: Job) -> dict[str, Any]:
        error = j.error or error_dict("BackUpOperationFailed", "failed without an error")
        return {"job": j.id, "operation": j.operation, "machine": j.machine_name,
                "ended_at": _iso(j.ended_at), "error": error}

    def _vault(self, vid: str, name: str, backend: str, rps: int) -> dict[str, Any]:
        usage = self.usage.of(vid)
        return {"name": name, "backend": backend, "restore_points": rps,
                "chunks": usage[0] if usage else None,
                "bytes_stored": usage[1] if usage else None}
