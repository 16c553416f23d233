"""/metrics, webhook notifications (with RPO) and `frostpoint status`, against a real
service with sandbox machines and a real HTTP receiver on loopback."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Service, free_port, running_service

SECRET = "a-receivers-shared-secret-0123456789"
FAST = {"FROSTPOINT_NOTIFY_BACKOFF_S": "0.5", "FROSTPOINT_NOTIFY_BACKOFF_MAX_S": "2",
        "FROSTPOINT_RPO_CHECK_S": "1", "FROSTPOINT_METRICS_NO_AUTH_LOOPBACK": "1"}


class Receiver:
    """A webhook receiver on 127.0.0.1:port that can be down (not listening) or up."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.server: ThreadingHTTPServer | None = None

    def up(self) -> None:
        got = self.got

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [json.loads(b) for h, b in self.got if h["x-frostpoint-event"] == kind]

    def wait(self, kind: str, n: int, timeout: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.events(kind)) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(self.events(kind)) >= n, f"{kind}: {len(self.events(kind))} of {n}"
        return self.events(kind)


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    yield from running_service(**FAST)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver(free_port())
    yield r
    r.down()


def scrape(service: Service, token: str | None = None) -> dict[tuple[str, tuple[Any, ...]], float]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = httpx.get(f"{service.url}/metrics", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(r.text) for s in fam.samples}


def value(samples: dict[tuple[str, tuple[Any, ...]], float], name: str,
          **labels: str) -> float | None:
    want = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and want <= set(ls)]
    return sum(found) if found else None


def test_metrics_parse_and_move_as_a_backup_runs(service: Service) -> None:
    service.protected_machine("m1")
    reader = service.client.post("/tokens", {"name": "scraper", "role": "reader"})["token"]
    before = scrape(service, reader)
    assert value(before, "frostpoint_restore_points", machine="m1") == 0
    assert value(before, "frostpoint_backup_duration_seconds_count", machine="m1") is None
    assert value(before, "frostpoint_backup_last_success_timestamp_seconds",
                 machine="m1") is None
    job = service.backup("m1")
    assert job["status"] == "Completed", job
    after = scrape(service)  # no token: the service allows loopback (FAST)
    assert value(after, "frostpoint_restore_points", machine="m1") == 1
    assert value(after, "frostpoint_backup_duration_seconds_count", machine="m1") == 1
    assert value(after, "frostpoint_freeze_window_seconds_count", machine="m1") == 1
    assert value(after, "frostpoint_backup_last_status", machine="m1",
                 status="Completed") == 1
    ended = datetime.fromisoformat(job["ended_at"].removesuffix("Z")).replace(tzinfo=UTC)
    last = value(after, "frostpoint_backup_last_success_timestamp_seconds", machine="m1")
    assert last is not None and abs(last - ended.timestamp()) < 2
    read = value(after, "frostpoint_backup_read_bytes_total", machine="m1")
    assert read is not None and read > 0
    stored = value(after, "frostpoint_vault_stored_bytes", vault="v1")
    assert stored is not None and stored > 0
    chunks = value(after, "frostpoint_vault_chunks", vault="v1")
    assert chunks is not None and chunks > 0
    beat = value(after, "frostpoint_agent_heartbeat_age_seconds", machine="m1")
    assert beat is not None and 0 <= beat < 30
    assert (value(after, "frostpoint_api_request_duration_seconds_count",
                  route="/backups", method="POST") or 0) >= 1


def test_with_the_setting_a_loopback_scraper_needs_no_token(service: Service) -> None:
    r = httpx.get(f"{service.url}/metrics", headers={"Authorization": "Bearer wrong" * 8})
    assert r.status_code == 200  # loopback: the token is not even looked at
    # The same service refuses a wrong token everywhere else.
    assert httpx.get(f"{service.url}/status").status_code == 401


def _failed_backup(service: Service, machine: str) -> dict[str, Any]:
    j = service.backup(machine, timeout=60)
    assert j["status"] == "Failed" and j["error"]["code"] == \
        "UserErrorGuestAgentStatusUnavailable", j
    return j


def _signed(headers: dict[str, str], body: bytes) -> bool:
    parts = dict(p.split("=", 1) for p in headers["x-frostpoint-signature"].split(","))
    mac = hmac.new(SECRET.encode(), f"{parts['t']}.".encode() + body,
                   hashlib.sha256).hexdigest()
    return hmac.compare_digest(mac, parts["v1"]) and abs(int(parts["t"]) - time.time()) < 300


def test_events_wait_for_a_receiver_that_is_down_then_arrive_signed(
        service: Service, receiver: Receiver) -> None:
    c = service.client
    for bad in ("file:///etc/passwd", "ftp://x/y", "http://", "not a url"):
        r = service.cli("notify", "add", "bad", "--url", bad, "--on", "failed", check=False)
        assert r.returncode == 1 and "InvalidInput" in r.stderr, (bad, r.stderr)
    url = f"http://127.0.0.1:{receiver.port}/hook"
    service.cli("notify", "add", "hook", "--url", url, "--on", "failed,warning,rpo-missed",
                "--secret", SECRET)
    assert service.cli("notify", "test", "hook", check=False).returncode == 1  # down
    if not any(v["name"] == "v1" for v in c.get("/vaults")):  # run alone (-k)
        c.post("/vaults", {"name": "v1"})
        c.post("/policies", {"name": "p1"})
    # A machine made without an agent: its backup fails at once, a real Failed job.
    c.post("/machines", {"name": "noagent", "agent": False,
                         "disks": [{"name": "data", "size": "64M"}]})
    c.post("/protection/enable", {"machine": "noagent", "vault": "v1", "policy": "p1"})
    started = time.monotonic()
    job = _failed_backup(service, "noagent")
    assert time.monotonic() - started < 20  # the receiver being down costs the job nothing
    time.sleep(3)  # retries against the closed port, with backoff
    (target,) = service.cli_json("notify", "list")
    assert target["pending"] == 1 and target["last_error"], target
    receiver.up()
    (event,) = receiver.wait("failed", 1)
    assert event["schema"] == "frostpoint.event/1" and event["machine"] == "noagent"
    assert event["job"]["id"] == job["id"]
    assert event["error"]["code"] == "UserErrorGuestAgentStatusUnavailable"
    assert event["error"]["actions"], event
    headers, body = receiver.got[-1]
    assert _signed(headers, body)
    assert not _signed(headers, body + b" ")  # the signature covers the body
    assert service.cli_json("notify", "test", "hook")["delivered"] is True
    (target,) = service.cli_json("notify", "list")
    assert target["pending"] == 0 and target["delivered"] == 1, target


def test_a_queued_event_is_delivered_after_a_service_restart(
        service: Service, receiver: Receiver) -> None:
    receiver.down()
    job = _failed_backup(service, "noagent")
    time.sleep(1)
    service.stop()
    receiver.up()
    time.sleep(1)
    assert [e for e in receiver.events("failed") if e["job"]["id"] == job["id"]] == []
    service.start()
    events = receiver.wait("failed", 2)
    assert [e["job"]["id"] for e in events].count(job["id"]) == 1


def test_rpo_missed_is_raised_once_and_status_shows_the_facts(
        service: Service, receiver: Receiver) -> None:
    c = service.client
    # A daily time after the moved clock's now, on its day: no scheduled backup runs.
    moved = datetime.now(UTC) + timedelta(hours=2)
    later = moved + timedelta(hours=1)
    at = later.strftime("%H:%M") if later.date() == moved.date() else "23:59"
    service.cli("policy", "create", "rpo", "--time", at, "--rpo-hours", "1")
    c.post("/protection/enable", {"machine": "noagent", "vault": "v1", "policy": "rpo"})
    status = service.cli_json("status")
    noagent = next(m for m in status["machines"] if m["name"] == "noagent")
    assert noagent["within_rpo"] is True and noagent["rpo_hours"] == 1
    assert receiver.events("rpo-missed") == []
    service.move_clock(2 * 3600)
    (event,) = receiver.wait("rpo-missed", 1)
    assert event["machine"] == "noagent" and event["rpo"]["hours"] == 1
    time.sleep(3)  # several RPO checks later: still the one event
    assert len(receiver.events("rpo-missed")) == 1
    status = service.cli_json("status")
    machines = {m["name"]: m for m in status["machines"]}
    assert machines["noagent"]["within_rpo"] is False
    assert machines["m1"]["last_backup_status"] == "Completed"
    (rp,) = c.get("/restore-points", params={"machine": "m1"})
    assert machines["m1"]["consistency"] == rp["consistency"]
    assert machines["m1"]["last_restore_point_at"] == rp["created_at"]
    assert machines["m1"]["within_rpo"] is None  # p1 sets no RPO
    failures = [f for f in status["failures"] if f["machine"] == "noagent"]
    assert len(failures) == 2 and all(
        f["error"]["code"] == "UserErrorGuestAgentStatusUnavailable" and f["error"]["actions"]
        for f in failures)
    (vault,) = status["vaults"]
    assert vault["restore_points"] == 1 and vault["bytes_stored"] > 0
    human = service.cli("status").stdout
    assert "MISSED" in human and "UserErrorGuestAgentStatusUnavailable" in human
    metrics = scrape(service)
    assert value(metrics, "frostpoint_rpo_within", machine="noagent") == 0
    assert value(metrics, "frostpoint_job_failures_total",
                 code="UserErrorGuestAgentStatusUnavailable") == 2
