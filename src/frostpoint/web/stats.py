"""Figures the dashboard draws, computed from the jobs' own records (a backup job's
details["transfer"], a GC job's details["report"]): the jobs are the history, so no
second copy of it is kept that could disagree with them."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from frostpoint import schemas as S
from frostpoint.enums import JobOperation, JobStatus

FAILED = (JobStatus.FAILED,)
DONE = (JobStatus.COMPLETED, JobStatus.COMPLETED_WITH_WARNINGS)


def when(iso: str | None) -> datetime | None:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")) if iso else None


def age(iso: str | None, now: datetime) -> str:
    """'3 min', '2 h', '4 d' ago: what a person reads at a glance."""
    t = when(iso)
    if t is None:
        return "—"
    s = max(0.0, (now - (t if t.tzinfo else t.replace(tzinfo=UTC))).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s / size:.0f} {unit}"
    return f"{s:.0f} s"


def human_bytes(n: float | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def transfer(job: S.Job) -> dict[str, Any]:
    t = job.details.get("transfer")
    return t if isinstance(t, dict) else {}


@dataclass
class VaultUsage:
    name: str
    stored_bytes: int = 0
    protected_bytes: int = 0
    chunks_new: int = 0
    chunks_reused: int = 0
    plain_new: int = 0  # new whole chunks: plain bytes, and sealed (vault/reports.py)
    sealed_new: int = 0
    restore_points: dict[str, int] = field(default_factory=dict)  # machine -> count
    series: list[dict[str, Any]] = field(default_factory=list)  # {t, bytes} per sample
    last_verify: S.Job | None = None
    last_gc: S.Job | None = None

    @property
    def dedup_ratio(self) -> float | None:
        """Blocks written by backups per block stored: 2.0 means half were already there."""
        total = self.chunks_new + self.chunks_reused
        return total / self.chunks_new if self.chunks_new else None

    @property
    def compression_ratio(self) -> float | None:
        """Plain bytes per sealed byte of the new whole chunks backups stored."""
        return self.plain_new / self.sealed_new if self.sealed_new else None


def vault_usage(vaults: list[S.Vault], jobs: list[S.Job], rps: list[S.RestorePoint],
                vault_of: dict[str, str | None]) -> dict[str, VaultUsage]:
    """Per vault: stored bytes over time (each backup adds what it stored, each GC takes
    off what it deleted), data protected (the disks of each machine's newest restore
    point), dedup and compression, the last verify and GC, restore points per machine."""
    out = {v.name: VaultUsage(v.name) for v in vaults}
    for j in sorted(jobs, key=lambda j: j.started_at):
        name = vault_of.get(j.machine) if j.operation == JobOperation.BACKUP else j.machine
        u = out.get(name or "")
        if u is None:
            continue
        if j.operation == JobOperation.BACKUP and j.status in DONE and transfer(j):
            t = transfer(j)
            u.stored_bytes += int(t.get("bytes_stored", 0))
            u.plain_new += int(t.get("plain_bytes_new", 0))
            u.sealed_new += int(t.get("sealed_bytes_new", 0))
            u.chunks_new += int(t.get("chunks_new", 0))
            u.chunks_reused += int(t.get("chunks_reused", 0))
        elif j.operation == JobOperation.VAULT_GC and j.status in DONE:
            u.stored_bytes -= int((j.details.get("report") or {}).get("bytes_deleted", 0))
            u.last_gc = j
        elif j.operation == JobOperation.VAULT_VERIFY:
            u.last_verify = j
        else:
            continue
        u.series.append({"t": (j.ended_at or j.started_at)[5:16].replace("T", " "),
                         "bytes": max(0, u.stored_bytes)})
    newest: dict[str, S.RestorePoint] = {}
    for rp in rps:
        name = vault_of.get(rp.machine)
        if name in out and rp.tier != "Snapshot":
            out[name].restore_points[rp.machine] = out[name].restore_points.get(
                rp.machine, 0) + 1
            if rp.machine not in newest or rp.created_at > newest[rp.machine].created_at:
                newest[rp.machine] = rp
    for machine, rp in newest.items():
        out[vault_of[machine] or ""].protected_bytes += sum(d.size_bytes for d in rp.disks)
    return out


def backup_chart(jobs: list[S.Job], machine: str, last: int = 30) -> dict[str, Any]:
    """Duration and bytes transferred of a machine's last `last` backups, oldest first."""
    mine = sorted((j for j in jobs if j.machine == machine
                   and j.operation == JobOperation.BACKUP and j.status != JobStatus.IN_PROGRESS),
                  key=lambda j: j.started_at)[-last:]
    return {"labels": [j.started_at[5:16].replace("T", " ") for j in mine],
            "duration_s": [round(j.duration_s, 1) for j in mine],
            "bytes_read": [int(transfer(j).get("bytes_read", 0)) for j in mine],
            "bytes_stored": [int(transfer(j).get("bytes_stored", 0)) for j in mine]}


def jobs_by_machine(jobs: list[S.Job]) -> dict[str, list[S.Job]]:
    out: dict[str, list[S.Job]] = defaultdict(list)
    for j in jobs:
        out[j.machine].append(j)
    return out


def within_rpo(policy: S.Policy | None, last_good: str | None, now: datetime) -> str:
    """'yes' / 'no' against the policy's rpo_hours, '—' where the policy sets none."""
    hours = getattr(policy, "rpo_hours", None) if policy else None
    if not hours:
        return "—"
    t = when(last_good)
    if t is None:
        return "no"
    t = t if t.tzinfo else t.replace(tzinfo=UTC)
    return "yes" if (now - t).total_seconds() <= float(hours) * 3600 else "no"
