"""Backup policies: their rules, the preview, and retention applied to what exists.

The rules themselves (when backups run, how long each restore point is kept) are
service/gfs.py; this module stores them, checks them, and applies them in the
cleanup, so a policy change reaches existing restore points at the next cleanup.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from frostpoint.enums import ProtectionState
from frostpoint.errors.catalog import FrostpointError
from frostpoint.service import gfs
from frostpoint.service.immutability import immutable
from frostpoint.service.models import (
    Job,
    Machine,
    Policy,
    ProtectedItem,
    RestorePoint,
    Vault,
    utcnow,
)
from frostpoint.service.names import by_name
from frostpoint.service.runtime import Runtime

TIME_RE = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
# API field -> column; the API's names are the CLI's options.
FIELDS = {"schedule": "schedule_kind", "schedule_time": "schedule_time",
          "every_hours": "every_hours", "window_hours": "window_hours",
          "instant_rp_days": "instant_rp_days", "vault_retention_days": "vault_retention_days",
          "weekly": "weekly_keep", "weekly_on": "weekly_on", "monthly": "monthly_keep",
          "monthly_on": "monthly_on", "yearly": "yearly_keep", "yearly_in": "yearly_in",
          "rpo_hours": "rpo_hours"}
DEFAULTS: dict[str, Any] = {"schedule": "daily", "schedule_time": "22:00", "every_hours": None,
                            "window_hours": None, "instant_rp_days": 2,
                            "vault_retention_days": 30, "weekly": 0, "weekly_on": "sun",
                            "monthly": 0, "monthly_on": "1", "yearly": 0, "yearly_in": "jan",
                            "rpo_hours": None}
CHANGE_NOTE = ("applies to existing restore points at the next cleanup: a longer rule keeps "
               "them longer, a shorter one prunes those it no longer keeps")


def schedule_of(p: Policy) -> gfs.Schedule:
    return gfs.Schedule(p.schedule_kind, p.schedule_time, p.every_hours, p.window_hours)


def retention_of(p: Policy) -> gfs.Retention:
    return gfs.Retention(p.vault_retention_days, p.weekly_keep, p.weekly_on, p.monthly_keep,
                         p.monthly_on, p.yearly_keep, p.yearly_in)


def _bad(text: str) -> FrostpointError:
    return FrostpointError("InvalidInput", text)


def _checked(f: dict[str, Any]) -> dict[str, Any]:
    """The fields, checked and completed (the hourly defaults), or InvalidInput."""
    f = dict(f)
    if not TIME_RE.match(str(f["schedule_time"])):
        raise _bad("schedule time must be HH:MM (UTC)")
    if f["schedule"] == "daily":
        if f["every_hours"] not in (None, 24) or f["window_hours"] not in (None, 24):
            raise _bad("--every and --window-hours are for --schedule hourly")
        f["every_hours"] = f["window_hours"] = 24
        if not 1 <= f["instant_rp_days"] <= 5:
            raise _bad("a daily (standard) policy keeps instant restore points 1-5 days")
    elif f["schedule"] == "hourly":
        f["every_hours"] = f["every_hours"] or 4
        f["window_hours"] = f["window_hours"] or 24
        if f["every_hours"] not in gfs.EVERY_HOURS:
            raise _bad(f"--every is one of {', '.join(f'{h}h' for h in gfs.EVERY_HOURS)}")
        if not f["every_hours"] <= f["window_hours"] <= 24:
            raise _bad("--window-hours is from --every's hours to 24")
        if not 1 <= f["instant_rp_days"] <= 30:
            raise _bad("an hourly (enhanced) policy keeps instant restore points 1-30 days")
    else:
        raise _bad("--schedule is daily or hourly")
    for key, top in (("vault_retention_days", 36500), ("weekly", 5200), ("monthly", 1200),
                     ("yearly", 99)):
        low = 1 if key == "vault_retention_days" else 0
        if not low <= f[key] <= top:
            raise _bad(f"{key} must be {low}-{top}")
    if f["rpo_hours"] is not None and not 0 <= f["rpo_hours"] <= 8760:
        raise _bad("--rpo-hours must be 1-8760 (0: no RPO)")
    f["rpo_hours"] = f["rpo_hours"] or None  # 0 clears it
    if f["weekly_on"] not in gfs.WEEKDAYS:
        raise _bad(f"--weekly-on is one of {', '.join(gfs.WEEKDAYS)}")
    if not gfs.valid_monthly_on(str(f["monthly_on"])):
        raise _bad("--monthly-on is a day 1-28, last, first-WD or last-WD (WD: mon..sun)")
    if f["yearly_in"] not in gfs.MONTHS:
        raise _bad(f"--yearly-in is one of {', '.join(gfs.MONTHS)}")
    sched = gfs.Schedule(f["schedule"], f["schedule_time"], f["every_hours"],
                         f["window_hours"])
    peak = sched.peak_instant(f["instant_rp_days"])
    if peak > gfs.MAX_INSTANT_RPS:
        raise FrostpointError(
            "InvalidInput", f"{sched.per_day()} backups a day kept {f['instant_rp_days']} "
            f"days as instant restore points would make {peak}: the limit is "
            f"{gfs.MAX_INSTANT_RPS} instant restore points of one machine; keep them fewer "
            "days or back up less often", {"instant_restore_points": peak,
                                           "limit": gfs.MAX_INSTANT_RPS})
    return f


def _vault_rps(s: Session, item: ProtectedItem) -> list[RestorePoint]:
    return list(s.scalars(select(RestorePoint).where(
        RestorePoint.machine_id == item.machine_id, RestorePoint.vault_id == item.vault_id)
        .order_by(RestorePoint.created_at)))


def retained(s: Session, rps: list[RestorePoint], r: gfs.Retention) -> list[datetime]:
    """Each vault copy's end of retention under r; `backup now --retain-days` on top."""
    ends = gfs.keep_until([rp.created_at for rp in rps], r)
    pinned = {j.id: j.params.get("retain_days") for j in s.scalars(
        select(Job).where(Job.id.in_({rp.job_id for rp in rps})))}
    return [max(end, rp.created_at + timedelta(days=int(days)))
            if (days := pinned.get(rp.job_id)) else end
            for rp, end in zip(rps, ends, strict=True)]


def refuse_shortening(s: Session, item: ProtectedItem, old: gfs.Retention,
                      new: gfs.Retention) -> None:
    """UserErrorImmutableVault if new would end a retention in an immutable vault
    sooner than old does."""
    v = s.get(Vault, item.vault_id)
    if v is None or not immutable(v):
        return
    rps = _vault_rps(s, item)
    shorter = [rp.id for rp, a, b in zip(rps, retained(s, rps, old), retained(s, rps, new),
                                          strict=True) if b < a]
    if shorter:
        m = s.get(Machine, item.machine_id)
        raise FrostpointError(
            "UserErrorImmutableVault", f"vault {v.name} is immutable ({v.immutability}): "
            f"the new retention would end {len(shorter)} restore point(s) of "
            f"{m.name if m else item.machine_id} sooner", {
                "vault": v.name, "immutability": v.immutability,
                "restore_points": shorter[:20], "count": len(shorter)})


class Policies:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def create(self, name: str, **fields: Any) -> dict[str, Any]:
        f = _checked({**DEFAULTS, **{k: v for k, v in fields.items() if v is not None}})
        with self.rt.sessions.begin() as s:
            if s.scalar(select(Policy).where(Policy.name == name)):
                raise FrostpointError("Conflict", f"policy {name} already exists")
            s.add(Policy(name=name, **{FIELDS[k]: v for k, v in f.items()}))
        return self.show(name)

    def update(self, name: str, **fields: Any) -> dict[str, Any]:
        with self.rt.sessions.begin() as s:
            p = self._get(s, name)
            old = retention_of(p)
            f = {k: getattr(p, c) for k, c in FIELDS.items()}
            if fields.get("schedule") not in (None, p.schedule_kind):
                f["every_hours"] = f["window_hours"] = None  # the other kind's defaults
            f = _checked({**f, **{k: v for k, v in fields.items() if v is not None}})
            for k, v in f.items():
                setattr(p, FIELDS[k], v)
            new = retention_of(p)
            for item in s.scalars(select(ProtectedItem).where(ProtectedItem.policy_id == p.id)):
                refuse_shortening(s, item, old, new)
        return {**self.show(name), "note": CHANGE_NOTE}

    def delete(self, name: str) -> dict[str, Any]:
        with self.rt.sessions.begin() as s:
            p = self._get(s, name)
            users = self._users(s, p)
            if users:
                raise FrostpointError("Conflict", f"policy {name} is in use by "
                                      f"{', '.join(users)}: move them to another policy "
                                      "(frostpoint protect enable M --vault V --policy P) "
                                      "or disable their protection first",
                                      {"machines": users})
            s.delete(p)
        return {"deleted": name}

    def show(self, name: str) -> dict[str, Any]:
        with self.rt.sessions() as s:
            return self._describe(s, self._get(s, name))

    def list_all(self) -> list[dict[str, Any]]:
        with self.rt.sessions() as s:
            return [self._describe(s, p) for p in s.scalars(select(Policy).order_by(Policy.name))]

    def preview(self, name: str, days: int) -> dict[str, Any]:
        if not 1 <= days <= 3660:
            raise _bad("--days must be 1-3660")
        with self.rt.sessions() as s:
            p = self._get(s, name)
            sched, r, instant = schedule_of(p), retention_of(p), p.instant_rp_days
        now = utcnow()
        return {"policy": name, "start": now.isoformat(timespec="seconds") + "Z",
                "days": gfs.preview(sched, instant, r, now, days)}

    def apply_retention(self) -> int:
        """Set each protected machine's vault copies' end of retention from its policy as
        it is now; returns how many changed. Soft-deleted items keep theirs (their data
        waits for the purge), and an immutable vault's never come sooner."""
        changed = 0
        with self.rt.sessions.begin() as s:
            for item, p in s.execute(select(ProtectedItem, Policy).join(
                    Policy, Policy.id == ProtectedItem.policy_id)):
                if item.protection_state == ProtectionState.SOFT_DELETED:
                    continue
                v = s.get(Vault, item.vault_id)
                rps = _vault_rps(s, item)
                for rp, end in zip(rps, retained(s, rps, retention_of(p)), strict=True):
                    if v is not None and immutable(v) and rp.vault_expires_at is not None:
                        end = max(end, rp.vault_expires_at)
                    if rp.vault_expires_at != end:
                        rp.vault_expires_at = end
                        changed += 1
        return changed

    @staticmethod
    def _get(s: Session, name: str) -> Policy:
        p: Policy = by_name(s, Policy, name, "policy")
        return p

    @staticmethod
    def _users(s: Session, p: Policy) -> list[str]:
        return sorted(m for (m,) in s.execute(
            select(Machine.name).join(ProtectedItem, ProtectedItem.machine_id == Machine.id)
            .where(ProtectedItem.policy_id == p.id)))

    def _describe(self, s: Session, p: Policy) -> dict[str, Any]:
        return {"name": p.name, "id": p.id,
                **{k: getattr(p, c) for k, c in FIELDS.items()},
                "instant_restore_points_peak": schedule_of(p).peak_instant(p.instant_rp_days),
                "used_by": self._users(s, p)}
