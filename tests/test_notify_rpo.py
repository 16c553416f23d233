"""The RPO rule and the notification queue on the in-memory platform (no root): an
rpo-missed event once per miss, again only after a restore point ended the miss; and a
target only gets the events it asked for."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from sqlalchemy import select
from test_memory_platform import World, backup, protected, service_on_memory, wait_agent

from frostpoint.errors.catalog import FrostpointError
from frostpoint.service.models import NotifyDelivery


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with service_on_memory(tmp_path) as w:
        yield w


def queued(w: World, event: str) -> list[NotifyDelivery]:
    with w.rt.sessions() as s:
        return list(s.scalars(select(NotifyDelivery).where(NotifyDelivery.event == event)))


def test_rpo_missed_once_per_miss_and_again_after_a_new_miss(world: World) -> None:
    w = world
    w.svc.notifications.add("all", "http://127.0.0.1:9/hook", ["rpo-missed"], None)
    w.svc.notifications.add("fails", "http://127.0.0.1:9/other", ["failed"], None)
    protected(w, "m", schedule="23:59")
    w.svc.policies.update("p-m", rpo_hours=2)
    wait_agent(w, "m")
    assert w.svc.notifications.check_rpo() == []  # protection began just now
    w.clock.advance(3 * 3600)
    assert w.svc.notifications.check_rpo() == ["m"]
    assert w.svc.notifications.check_rpo() == []  # the same miss: not raised again
    (d,) = queued(w, "rpo-missed")  # for the target that takes it, only
    assert d.payload["machine"] == "m" and d.payload["rpo"]["hours"] == 2
    assert next(m for m in w.svc.overview.status()["machines"]
                if m["name"] == "m")["within_rpo"] is False
    wait_agent(w, "m")  # a heartbeat after the clock's move
    assert backup(w, "m")["status"] == "Completed"
    assert w.svc.notifications.check_rpo() == []  # within again: the miss is over
    assert next(m for m in w.svc.overview.status()["machines"]
                if m["name"] == "m")["within_rpo"] is True
    w.clock.advance(3 * 3600)
    assert w.svc.notifications.check_rpo() == ["m"]  # a new miss, a new event
    assert len(queued(w, "rpo-missed")) == 2
    w.svc.policies.update("p-m", rpo_hours=0)  # 0 clears it
    assert w.svc.policies.show("p-m")["rpo_hours"] is None


def test_targets_are_checked_when_added(world: World) -> None:
    n = world.svc.notifications
    for url in ("file:///etc/passwd", "gopher://x/", "http://", "//host/x", "x" * 10):
        with pytest.raises(FrostpointError) as e:
            n.add("t", url, ["failed"], None)
        assert e.value.code == "InvalidInput", url
    with pytest.raises(FrostpointError):
        n.add("t", "https://example.invalid/", ["failed", "everything"], None)
    with pytest.raises(FrostpointError):
        n.add("t", "https://example.invalid/", ["failed"], "short")  # a weak secret
    n.add("t", "https://example.invalid/", ["failed"], "s" * 32)
    with pytest.raises(FrostpointError) as e:
        n.add("t", "https://example.invalid/", ["failed"], None)
    assert e.value.code == "Conflict"
    secret = next((world.rt.keys_dir).glob("notify-*.secret"))
    assert secret.read_text() == "s" * 32 and secret.stat().st_mode & 0o077 == 0
    assert [t["signed"] for t in n.list_all()] == [True]
    n.remove("t")
    assert n.list_all() == [] and not secret.exists()


def test_a_redirect_is_not_followed_and_counts_as_not_delivered(world: World) -> None:
    """A receiver cannot send the service's post (and its facts) on to another host."""
    hits: list[str] = []

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            hits.append(self.path)
            self.send_response(307)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    srv = HTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        n = world.svc.notifications
        n.add("r", f"http://127.0.0.1:{srv.server_address[1]}/hook", ["failed"], None)
        result = n.test("r")
        assert result["delivered"] is False
        assert result["error"]["code"] == "NotificationDeliveryFailed"
        assert hits == ["/hook"]  # /elsewhere was never asked for
    finally:
        srv.shutdown()
        srv.server_close()
