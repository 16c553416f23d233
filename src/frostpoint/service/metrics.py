"""/metrics for Prometheus (docs/operations.md "Metrics" lists each with its type).

Two kinds, on one registry of this service:
- read from the database at each scrape (DbCollector): last success, last status,
  bytes read and stored, heartbeat age, restore points, vault usage, failures by code.
  They are the same after a restart, and the same whichever replica is scraped.
- observed in this process (prometheus_client Histograms): backup duration and freeze
  window at each backup's end, API request latency in a middleware. They start empty
  when the service starts, as Prometheus expects of a histogram (a counter reset).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.routing import Match

from frostpoint.enums import JobOperation, JobStatus
from frostpoint.service.jobs import ACTIVE
from frostpoint.service.models import (
    Job,
    Machine,
    NotifyDelivery,
    Policy,
    ProtectedItem,
    RestorePoint,
    Vault,
    utcnow,
)
from frostpoint.service.overview import VaultUsage, last_good, within_rpo

GOOD = (JobStatus.COMPLETED, JobStatus.COMPLETED_WITH_WARNINGS)
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)
FREEZE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"frostpoint_{name}", doc, labels=labels)


def _counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
    return CounterMetricFamily(f"frostpoint_{name}", doc, labels=labels)


class DbCollector(Collector):
    """What the database holds, read at scrape time."""

    def __init__(self, sessions: Any, usage: VaultUsage) -> None:
        self.sessions = sessions
        self.usage = usage

    def collect(self) -> Iterator[Metric]:
        now = utcnow()
        success = _gauge("backup_last_success_timestamp_seconds",
                         "When the machine's last successful backup ended (Unix time).",
                         ["machine"])
        status = _gauge("backup_last_status", "1 for the status of the machine's last "
                        "backup job.", ["machine", "status"])
        read = _counter("backup_read_bytes", "Bytes read from the machine's disks by its "
                        "backups' transfers.", ["machine"])
        stored = _counter("backup_stored_bytes", "Bytes its backups added to the vault "
                          "(new chunks, after dedup and compression).", ["machine"])
        beat = _gauge("agent_heartbeat_age_seconds", "Seconds since the guest agent's "
                      "last heartbeat.", ["machine"])
        rps = _gauge("restore_points", "Restore points of the machine.", ["machine"])
        rpo = _gauge("rpo_within", "1 while the machine has a restore point within its "
                     "policy's RPO, 0 past it (machines whose policy sets an RPO).",
                     ["machine"])
        failures = _counter("job_failures", "Failed jobs by catalog code.",
                            ["code", "operation"])
        running = _gauge("jobs_running", "Jobs in progress now.", ["operation"])
        v_bytes = _gauge("vault_stored_bytes", "Bytes of chunks the vault stores.", ["vault"])
        v_chunks = _gauge("vault_chunks", "Chunks the vault stores.", ["vault"])
        v_rps = _gauge("vault_restore_points", "Restore points in the vault.", ["vault"])
        queue = _gauge("notify_deliveries", "Webhook deliveries by state.", ["state"])
        with self.sessions() as s:
            last: dict[str, Job] = {}
            done: dict[str, float] = {}
            totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
            for j in s.scalars(select(Job).where(Job.operation == JobOperation.BACKUP,
                                                 Job.ended_at.is_not(None))
                               .order_by(Job.ended_at)):
                last[j.machine_name] = j
                if j.status in GOOD and j.ended_at:
                    done[j.machine_name] = j.ended_at.timestamp()
                t = (j.details or {}).get("transfer") or {}
                totals[j.machine_name][0] += int(t.get("bytes_read") or 0)
                totals[j.machine_name][1] += int(t.get("bytes_stored") or 0)
            for m in s.scalars(select(Machine).order_by(Machine.name)):
                if m.last_heartbeat:
                    beat.add_metric([m.name], (now - m.last_heartbeat).total_seconds())
                rps.add_metric([m.name], s.scalar(select(func.count()).select_from(
                    RestorePoint).where(RestorePoint.machine_id == m.id)) or 0)
                row = s.execute(select(ProtectedItem, Policy).join(
                    Policy, Policy.id == ProtectedItem.policy_id)
                    .where(ProtectedItem.machine_id == m.id)).first()
                if row is not None:
                    r = within_rpo(row[0], row[1], last_good(s, m.id), now)
                    if r.within is not None:
                        rpo.add_metric([m.name], 1.0 if r.within else 0.0)
            for name, j in last.items():
                for st in JobStatus:
                    if st not in ACTIVE:
                        status.add_metric([name, st], 1.0 if j.status == st else 0.0)
            for name, ts in done.items():
                success.add_metric([name], ts)
            for name, (b_read, b_stored) in totals.items():
                read.add_metric([name], b_read)
                stored.add_metric([name], b_stored)
            codes: Counter[tuple[str, str]] = Counter(
                ((err or {}).get("code") or "unknown", op) for err, op in s.execute(
                    select(Job.error, Job.operation).where(Job.status == JobStatus.FAILED)))
            for (code, op), n in sorted(codes.items()):
                failures.add_metric([code, op], n)
            for op, n in s.execute(select(Job.operation, func.count())
                                   .where(Job.status.in_(ACTIVE)).group_by(Job.operation)):
                running.add_metric([op], n)
            for state, n in s.execute(select(NotifyDelivery.status, func.count())
                                      .group_by(NotifyDelivery.status)):
                queue.add_metric([state], n)
            vaults = [(v.id, v.name, s.scalar(select(func.count()).select_from(RestorePoint)
                                               .where(RestorePoint.vault_id == v.id)) or 0)
                      for v in s.scalars(select(Vault).order_by(Vault.name))]
        for vid, name, n in vaults:
            v_rps.add_metric([name], n)
            usage = self.usage.of(vid)
            if usage is not None:
                v_chunks.add_metric([name], usage[0])
                v_bytes.add_metric([name], usage[1])
        yield from (success, status, read, stored, beat, rps, rpo, failures, running,
                    v_bytes, v_chunks, v_rps, queue)


class Metrics:
    """The service's registry: the database collector and the observed histograms."""

    def __init__(self, sessions: Any, usage: VaultUsage) -> None:
        self.sessions = sessions
        self.registry = CollectorRegistry()
        self.registry.register(DbCollector(sessions, usage))
        self.backup_duration = Histogram(
            "frostpoint_backup_duration_seconds", "Backup job duration, observed at its end "
            "(since this service started).", ["machine", "status"],
            buckets=DURATION_BUCKETS, registry=self.registry)
        self.freeze = Histogram(
            "frostpoint_freeze_window_seconds", "How long a backup kept the guest's "
            "filesystems frozen, observed at its end.", ["machine"],
            buckets=FREEZE_BUCKETS, registry=self.registry)
        self.latency = Histogram(
            "frostpoint_api_request_duration_seconds", "Management API request latency.",
            ["method", "route", "status"], buckets=LATENCY_BUCKETS, registry=self.registry)

    def on_job_end(self, job_id: str) -> None:
        """A job listener (Runtime.job_listeners)."""
        with self.sessions() as s:
            j = s.get(Job, job_id)
            if j is None or j.operation != JobOperation.BACKUP or j.ended_at is None:
                return
            name, status = j.machine_name, j.status
            seconds = (j.ended_at - j.started_at).total_seconds()
            freeze_ms = (j.details or {}).get("freeze_ms")
        self.backup_duration.labels(name, status).observe(seconds)
        if isinstance(freeze_ms, int | float):
            self.freeze.labels(name).observe(freeze_ms / 1000.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def instrument(self, app: FastAPI) -> None:
        """Time every request, labelled by its route's template (never the raw path: a
        path holds names and ids, and each would be a series of its own)."""

        @app.middleware("http")
        async def timed(request: Request,
                        call_next: Callable[[Request], Awaitable[Response]]) -> Response:
            started = time.perf_counter()
            route = next((getattr(r, "path", "") for r in app.router.routes
                          if r.matches(request.scope)[0] == Match.FULL), "unmatched")
            response = await call_next(request)
            self.latency.labels(request.method, route, str(response.status_code)).observe(
                time.perf_counter() - started)
            return response
