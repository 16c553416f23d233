"""The API's operations routes: /metrics, the overview (/status) and notification
targets (/notify); added to the app by service/api.py."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Header, Request, Response

from frostpoint import schemas as S
from frostpoint.service.requests import NotifyIn
from frostpoint.service.services import Services
from frostpoint.service.tokens import Caller

# The text format generate_latest writes, under the name every Prometheus version reads.
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


def _loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def add_routes(app: FastAPI, svc: Services, r: list[Any], caller: Callable[[str], Caller],
               auth: Callable[[Request, Caller], None]) -> None:
    def metrics_auth(request: Request, authorization: str = Header(default="")) -> None:
        # --metrics-no-auth-loopback: a scraper on this host needs no token.
        if svc.rt.metrics_no_auth_loopback and _loopback(
                request.client.host if request.client else None):
            return
        auth(request, caller(authorization))

    svc.metrics.instrument(app)

    @app.get("/metrics", dependencies=[Depends(metrics_auth)], response_class=Response,
             responses={200: {"content": {TEXT_FORMAT: {}}}})
    def metrics() -> Response:
        return Response(svc.metrics.render(), media_type=TEXT_FORMAT)

    @app.get("/status", dependencies=r, response_model=S.Status)
    def status() -> dict[str, Any]:
        return svc.overview.status()

    @app.post("/notify", dependencies=r, response_model=S.NotifyTarget)
    def notify_add(body: NotifyIn) -> dict[str, Any]:
        return svc.notifications.add(body.name, body.url, body.events, body.secret)

    @app.get("/notify", dependencies=r, response_model=list[S.NotifyTarget])
    def notify_list() -> list[dict[str, Any]]:
        return svc.notifications.list_all()

    @app.delete("/notify/{name}", dependencies=r, response_model=S.Deleted)
    def notify_remove(name: str) -> dict[str, Any]:
        return svc.notifications.remove(name)

    @app.post("/notify/{name}/test", dependencies=r, response_model=S.NotifyTested)
    def notify_test(name: str) -> dict[str, Any]:
        return svc.notifications.test(name)
