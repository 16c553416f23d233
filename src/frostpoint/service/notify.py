"""Notifications: webhook targets, the events they are sent, and their delivery
(docs/operations.md "Notifications" has the event schema and the signature scheme).

An event is written to the queue (notify_deliveries, one row per target) in the job's
thread, which is all a job ever waits for; a worker thread of its own posts it, with
bounded timeouts, and retries a target that fails with exponential backoff. The queue
is a table, so an event raised before a restart is delivered after it."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import select

from frostpoint import __version__
from frostpoint.enums import JobOperation, JobStatus
from frostpoint.errors.catalog import FrostpointError, error_dict
from frostpoint.service.jobs import describe_job
from frostpoint.service.models import (
    Job,
    Machine,
    NotifyDelivery,
    NotifyTarget,
    Policy,
    ProtectedItem,
    new_id,
    utcnow,
)
from frostpoint.service.names import NAME_RE, by_name
from frostpoint.service.overview import last_good, within_rpo
from frostpoint.service.runtime import Runtime

log = logging.getLogger("frostpoint.service.notify")
EVENTS = ("failed", "warning", "rpo-missed", "verify-damage")
SCHEMA = "frostpoint.event/1"
SIGNATURE_HEADER = "X-Frostpoint-Signature"
PENDING, DELIVERED, GAVE_UP = "Pending", "Delivered", "Failed"


def _env(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@dataclass
class Delivery:
    """How deliveries are tried: the n-th retry waits backoff * 2**(n-1), at most
    backoff_max; after `attempts` tries the event is given up on (kept, Failed)."""
    timeout: float = field(default_factory=lambda: _env("FROSTPOINT_NOTIFY_TIMEOUT_S", 5))
    backoff: float = field(default_factory=lambda: _env("FROSTPOINT_NOTIFY_BACKOFF_S", 10))
    backoff_max: float = field(
        default_factory=lambda: _env("FROSTPOINT_NOTIFY_BACKOFF_MAX_S", 3600))
    attempts: int = field(default_factory=lambda: int(_env("FROSTPOINT_NOTIFY_ATTEMPTS", 12)))
    rpo_check: float = field(default_factory=lambda: _env("FROSTPOINT_RPO_CHECK_S", 60))

    def wait(self, attempts: int) -> float:
        return float(min(self.backoff * 2 ** (attempts - 1), self.backoff_max))


def check_url(url: str) -> str:
    """An absolute http(s) URL with a host, or InvalidInput."""
    if not url.isascii() or not url.isprintable():
        raise FrostpointError("InvalidInput", "--url must be printable ASCII (an IDN host "
                              "in its xn-- form)")
    try:
        u = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as e:
        raise FrostpointError("InvalidInput", f"--url is not a URL: {e}") from None
    if u.scheme not in ("http", "https") or not u.host or len(url) > 2048:
        raise FrostpointError("InvalidInput", "--url must be an http:// or https:// URL with "
                              "a host (at most 2048 characters)", {"url": url[:200]})
    return url


def check_events(events: list[str]) -> list[str]:
    bad = [e for e in events if e not in EVENTS]
    if bad or not events:
        raise FrostpointError("InvalidInput", f"--on takes one or more of {', '.join(EVENTS)}"
                              + (f"; not {', '.join(bad)}" if bad else ""))
    return sorted(set(events), key=EVENTS.index)


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature header's value: t=UNIX,v1=hex(HMAC-SHA256(secret, "UNIX." + body))."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def job_event(job: Job) -> str | None:
    """Which event a job's end raises, if any."""
    if job.status == JobStatus.FAILED:
        return "failed"
    if job.status == JobStatus.COMPLETED_WITH_WARNINGS:
        damaged = job.operation == JobOperation.VAULT_VERIFY and any(
            isinstance(w, dict) and w.get("code") == "VaultDataCorrupt" for w in job.warnings)
        return "verify-damage" if damaged else "warning"
    return None


class Notifications:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.delivery = Delivery()
        self.wake = threading.Event()
        self._last_rpo = 0.0

    # -- targets -----------------------------------------------------------------------
    def add(self, name: str, url: str, events: list[str], secret: str | None) -> dict[str, Any]:
        if not NAME_RE.match(name):
            raise FrostpointError("InvalidInput", "a target's name is 1-20 of a-z, 0-9 and "
                                  "-, starting with a letter")
        if secret is not None and not (16 <= len(secret) <= 256 and secret.isascii()
                                       and secret.isprintable()):
            raise FrostpointError("InvalidInput", "--secret must be 16-256 printable ASCII "
                                  "characters")
        target = NotifyTarget(id=new_id(), name=name, url=check_url(url),
                              events=check_events(events),
                              signed=secret is not None)
        with self.rt.sessions.begin() as s:
            if s.scalar(select(NotifyTarget.id).where(NotifyTarget.name == name)):
                raise FrostpointError("Conflict", f"notification target {name} exists")
            s.add(target)
            if secret is not None:  # in DATA/keys like every secret, never in the database
                self.rt.write_secret(self._secret_name(target.id), secret.encode())
        return self.show(name)

    def show(self, name: str) -> dict[str, Any]:
        with self.rt.sessions() as s:
            return self._describe(s, by_name(s, NotifyTarget, name, "notification target"))

    def list_all(self) -> list[dict[str, Any]]:
        with self.rt.sessions() as s:
            return [self._describe(s, t) for t in
                    s.scalars(select(NotifyTarget).order_by(NotifyTarget.name))]

    def remove(self, name: str) -> dict[str, Any]:
        with self.rt.sessions.begin() as s:
            t = by_name(s, NotifyTarget, name, "notification target")
            for d in s.scalars(select(NotifyDelivery).where(NotifyDelivery.target_id == t.id)):
                s.delete(d)
            s.delete(t)
            tid = t.id
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.rt.keys_dir / self._secret_name(tid))
        return {"deleted": name}

    def test(self, name: str) -> dict[str, Any]:
        """Send a test event now (not queued) and say how the target answered."""
        with self.rt.sessions() as s:
            t = by_name(s, NotifyTarget, name, "notification target")
            tid, url, signed = t.id, t.url, t.signed
        payload = self._payload("test", f"a test event for notification target {name}")
        started = time.monotonic()
        error = self._post(tid, url, signed, "test", new_id(), payload)
        return {"target": name, "delivered": error is None,
                "duration_s": round(time.monotonic() - started, 3),
                "error": error_dict("NotificationDeliveryFailed", error,
                                    {"target": name}) if error else None}

    def _describe(self, s: Any, t: NotifyTarget) -> dict[str, Any]:
        rows = list(s.scalars(select(NotifyDelivery).where(NotifyDelivery.target_id == t.id)))
        last = max((d for d in rows if d.status != PENDING or d.attempts),
                   key=lambda d: d.created_at, default=None)
        return {"name": t.name, "url": t.url, "events": t.events, "signed": t.signed,
                "created_at": t.created_at.isoformat() + "Z",
                "pending": sum(d.status == PENDING for d in rows),
                "delivered": sum(d.status == DELIVERED for d in rows),
                "failed": sum(d.status == GAVE_UP for d in rows),
                "last_error": last.last_error if last else None}

    @staticmethod
    def _secret_name(target_id: str) -> str:
        return f"notify-{target_id}.secret"

    # -- raising events ------------------------------------------------------------------
    def _payload(self, event: str, summary: str, **facts: Any) -> dict[str, Any]:
        return {"schema": SCHEMA, "id": new_id(), "event": event,
                "time": utcnow().isoformat() + "Z", "instance": self.rt.instance,
                "summary": summary, "machine": None, "vault": None, "job": None,
                "error": None, "warnings": [], "rpo": None, **facts}

    def raise_event(self, event: str, summary: str, **facts: Any) -> int:
        """Queue the event for each target that takes it; returns how many."""
        payload = self._payload(event, summary, **facts)
        with self.rt.sessions.begin() as s:
            targets = [t.id for t in s.scalars(select(NotifyTarget)) if event in t.events]
            for tid in targets:
                s.add(NotifyDelivery(target_id=tid, event=event, payload=payload))
        if targets:
            self.wake.set()
        return len(targets)

    def on_job_end(self, job_id: str) -> None:
        """A job listener (Runtime.job_listeners): failed, warning, verify-damage."""
        with self.rt.sessions() as s:
            job = s.get(Job, job_id)
            if job is None or (event := job_event(job)) is None:
                return
            d = describe_job(job)
            vault = job.params.get("vault") if job.machine_id is None else None
            first = job.error or next(iter(job.warnings), None) or {}
        summary = (f"{d['operation']} of {d['machine']} {d['status']}"
                   + (f": {first.get('code')}: {first.get('message')}" if first else ""))
        self.raise_event(event, summary, machine=None if vault else d["machine"],
                         vault=vault, error=d["error"], warnings=d["warnings"],
                         job={k: d[k] for k in ("id", "operation", "trigger", "status",
                                                "started_at", "ended_at", "duration_s")})

    def check_rpo(self) -> list[str]:
        """Raise rpo-missed for each machine past its RPO, once per miss: the item
        remembers it was raised until a new restore point brings it within again."""
        now, missed = utcnow(), []
        with self.rt.sessions.begin() as s:
            for item, policy, m in s.execute(
                    select(ProtectedItem, Policy, Machine)
                    .join(Policy, Policy.id == ProtectedItem.policy_id)
                    .join(Machine, Machine.id == ProtectedItem.machine_id)
                    .where(Policy.rpo_hours.is_not(None))).all():
                rpo = within_rpo(item, policy, last_good(s, m.id), now)
                if rpo.within is True:
                    item.rpo_missed_at = None
                elif rpo.within is False and item.rpo_missed_at is None:
                    item.rpo_missed_at = now
                    missed.append((m.name, rpo, policy.name))
        for name, rpo, policy_name in missed:
            hours = (now - rpo.since).total_seconds() / 3600
            self.raise_event(
                "rpo-missed", f"{name} has no restore point within its RPO of {rpo.hours} h "
                f"(the newest is {hours:.1f} h old)", machine=name,
                rpo={"hours": rpo.hours, "policy": policy_name,
                     "since": rpo.since.isoformat() + "Z"})
        return [n for n, _, _ in missed]

    # -- delivering ------------------------------------------------------------------------
    def run(self, stopping: threading.Event) -> None:
        """The worker: deliver what is due, check RPOs now and then, sleep till woken."""
        while not stopping.is_set():
            try:
                if time.monotonic() - self._last_rpo >= self.delivery.rpo_check:
                    self._last_rpo = time.monotonic()
                    self.check_rpo()
                self.deliver_due(stopping)
            except Exception:  # noqa: BLE001 - the worker goes on (a locked database)
                log.exception("notifications")
            self.wake.wait(min(1.0, self.delivery.rpo_check))
            self.wake.clear()

    def deliver_due(self, stopping: threading.Event | None = None) -> int:
        with self.rt.sessions() as s:
            due = [(d.id, t.id, t.url, t.signed, d.event, d.payload, d.attempts)
                   for d, t in s.execute(
                       select(NotifyDelivery, NotifyTarget)
                       .join(NotifyTarget, NotifyTarget.id == NotifyDelivery.target_id)
                       .where(NotifyDelivery.status == PENDING,
                              NotifyDelivery.next_attempt_at <= utcnow())
                       .order_by(NotifyDelivery.next_attempt_at).limit(50))]
        sent = 0
        for did, tid, url, signed, event, payload, attempts in due:
            if stopping is not None and stopping.is_set():
                break
            error = self._post(tid, url, signed, event, did, payload)
            with self.rt.sessions.begin() as s:
                d = s.get(NotifyDelivery, did)
                if d is None:  # its target was removed meanwhile
                    continue
                d.attempts = attempts + 1
                if error is None:
                    d.status, d.delivered_at, d.last_error = DELIVERED, utcnow(), None
                    sent += 1
                    continue
                d.last_error = error[:500]
                if d.attempts >= self.delivery.attempts:
                    d.status = GAVE_UP
                    log.warning("notification %s to %s given up after %d attempts: %s",
                                did, url, d.attempts, error)
                else:
                    d.next_attempt_at = utcnow() + timedelta(
                        seconds=self.delivery.wait(d.attempts))
        return sent

    def _post(self, target_id: str, url: str, signed: bool, event: str, delivery_id: str,
              payload: dict[str, Any]) -> str | None:
        """POST the event; None when the target took it (2xx), else why not."""
        body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "User-Agent": f"frostpoint/{__version__}",
                   "X-Frostpoint-Event": event, "X-Frostpoint-Delivery": delivery_id}
        if signed:
            try:
                secret = (self.rt.keys_dir / self._secret_name(target_id)).read_bytes()
            except OSError as e:
                return f"the target's secret cannot be read: {e.strerror}"
            headers[SIGNATURE_HEADER] = signature(secret, int(time.time()), body)
        try:
            # No redirects: a receiver must not send the event (and its facts) elsewhere.
            r = httpx.post(url, content=body, headers=headers, timeout=self.delivery.timeout,
                           follow_redirects=False)
        except httpx.HTTPError as e:
            return f"{type(e).__name__}: {e}"[:500]
        return None if 200 <= r.status_code < 300 else f"HTTP {r.status_code}"
