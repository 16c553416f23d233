"""The two endpoints that face the machines, on two ports of the fabric address.

Wire endpoint: goal state (long poll with ETag), heartbeat, status.
Host endpoint: extension packages, snapshot requests.
Each machine authenticates with its own token and sees only its own state.

Everything a guest sends is hostile input: bodies are capped before they are read,
typed and bounded before the service looks at them, and one credential may hold
only a few requests at a time, so a guest cannot use up what other machines need.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any, Literal, Protocol

from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from frostpoint.errors.catalog import FrostpointError, error_dict
from frostpoint.protocol import Consistency

MAX_BODY = 64 << 10  # bytes; the agent's largest report is a few KiB
MAX_WAIT = 55.0  # seconds a goal state poll may be held
MAX_IN_FLIGHT = 8  # requests one machine may have open on one endpoint
RATE, BURST = 20.0, 40.0  # requests a second one machine may start, sustained and at once
POLL_TICK = 0.1  # how often a held poll checks for a change and for its client

Text = Annotated[str, StringConstraints(max_length=4096)]
Short = Annotated[str, StringConstraints(max_length=256)]


# These models validate the bodies typed in frostpoint/protocol.py (HeartbeatBody,
# ExtensionStatus, StatusBody, SnapshotRequestBody) and name the same keys
# (tests/test_protocol_types.py).

class Heartbeat(BaseModel):
    """What the agent sends every few seconds (agent/main.py heartbeat_body)."""

    model_config = ConfigDict(extra="ignore")  # the service reads only these keys
    version: Annotated[str, StringConstraints(max_length=32)] = ""
    status: Literal["Ready", "NotReady"] = "Ready"
    extensions_enabled: bool | None = None
    os: Short | None = None
    kernel: Short | None = None
    python: Annotated[str, StringConstraints(max_length=32)] | None = None
    reboot_required: bool | None = None


class ExtensionReport(BaseModel):
    """One extension's status (agent/extensions.py _status, plus whatever the
    extension wrote to its status file: warnings, elapsedMs, consistency, ...)."""

    model_config = ConfigDict(extra="allow")  # kept as reported; the body cap bounds it
    name: Short
    version: Annotated[str, StringConstraints(max_length=32)]
    sequence: int = Field(ge=0, lt=1 << 53)
    status: Annotated[str, StringConstraints(max_length=32)]
    code: Short | None = None
    message: Text | None = ""
    warnings: list[Any] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _known_consistency(self) -> ExtensionReport:
        # Kept among the extras (a declared field would add "consistency": None to every
        # stored report), but only as one of the names a restore point can carry.
        c = (self.model_extra or {}).get("consistency")
        if c is not None and (not isinstance(c, str) or c not in {x.value for x in Consistency}):
            raise ValueError(f"consistency is one of {', '.join(Consistency)}")
        return self


class StatusReport(BaseModel):
    model_config = ConfigDict(extra="ignore")
    extensions: list[ExtensionReport] = Field(default_factory=list, max_length=16)


class MachineBackend(Protocol):
    """What the endpoints need from the backup service."""

    def machine_for_token(self, token: str) -> str | None: ...
    def goal_state(self, machine_id: str) -> tuple[str, dict[str, Any]]: ...
    def goal_state_version(self, machine_id: str) -> int: ...
    def record_heartbeat(self, machine_id: str, body: dict[str, Any]) -> None: ...
    def record_status(self, machine_id: str, body: dict[str, Any]) -> None: ...
    def take_snapshot(self, machine_id: str, body: dict[str, Any]) -> dict[str, Any]: ...
    def package_file(self, name: str, version: str) -> str | None: ...
    def snapshot_task(self, machine_id: str, task_id: str) -> dict[str, Any]: ...


def clamp_wait(wait: float) -> float:
    """A finite hold time in [0, MAX_WAIT]: NaN compares false with everything, so
    min(nan, 55) is nan and a deadline of nan is never reached."""
    if math.isnan(wait):
        return 0.0
    return max(0.0, min(wait, MAX_WAIT))


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _send_error(send: Send, status: int, code: str, detail: str) -> None:
    body = json.dumps(error_dict(code, detail)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class GuestGuard:
    """ASGI middleware in front of a guest-facing app. Per machine at most
    MAX_IN_FLIGHT open requests and RATE new ones a second (bursts of BURST); beyond
    that 429, answered here before any work is done. A machine is counted both by its
    fabric address and by its credential: machines share one subnet, so a guest
    could take more addresses, but it has only its own token. A body over MAX_BODY
    gets 413 (by its Content-Length, or as it streams in) before anything parses it:
    bodies are read here, at most MAX_BODY of them, and handed on whole."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.open: dict[str, int] = {}
        self.buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def _admit(self, keys: tuple[str, ...]) -> bool:
        now = time.monotonic()
        refilled = {}
        for k in keys:
            tokens, at = self.buckets.get(k, (BURST, now))
            refilled[k] = min(BURST, tokens + (now - at) * RATE)
        ok = all(refilled[k] >= 1 and self.open.get(k, 0) < MAX_IN_FLIGHT for k in keys)
        for k in keys:
            self.buckets[k] = (refilled[k] - (1 if ok else 0), now)
        if len(self.buckets) > 4096:  # forget the idle ones
            self.buckets = {k: v for k, v in self.buckets.items() if k in self.open}
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        too_large = f"request bodies are at most {MAX_BODY} bytes"
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > MAX_BODY:
            await _send_error(send, 413, "InvalidInput", too_large)
            return
        keys = ("addr:" + str((scope.get("client") or ("?",))[0]),
                "token:" + hashlib.sha256(headers.get(b"authorization", b"")).hexdigest())
        if not self._admit(keys):
            await _send_error(send, 429, "InvalidInput",
                              f"at most {MAX_IN_FLIGHT} open requests and {RATE:.0f} a "
                              "second per machine")
            return
        for k in keys:
            self.open[k] = self.open.get(k, 0) + 1
        try:
            body = bytearray()
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                body += message.get("body", b"")
                if len(body) > MAX_BODY:  # a chunked body has no Content-Length
                    await _send_error(send, 413, "InvalidInput", too_large)
                    return
                if not message.get("more_body"):
                    break
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if replayed:
                    return await receive()  # e.g. http.disconnect, for a long poll
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}

            await self.app(scope, replay, send)
        finally:
            for k in keys:
                self.open[k] -= 1
                if not self.open[k]:
                    del self.open[k]


def _guest_app(title: str) -> FastAPI:
    app = FastAPI(title=title, docs_url=None, redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # The catalog's shape, with where and why only: never the input echoed back.
        errors = [{"loc": list(e.get("loc", ()))[:8], "msg": str(e.get("msg", ""))[:200]}
                  for e in exc.errors()[:10]]
        return JSONResponse(error_dict("InvalidInput", "the request body is not valid",
                                       {"errors": errors}), status_code=422)

    app.add_middleware(GuestGuard)
    return app


def _machine_dep(backend: MachineBackend) -> Callable[..., str]:
    def dep(authorization: str = Header(default="")) -> str:
        token = authorization.removeprefix("Bearer ").strip()
        machine_id = backend.machine_for_token(token) if token else None
        if machine_id is None:
            raise HTTPException(401, "unknown machine credential")
        return machine_id
    return dep


def wire_app(backend: MachineBackend) -> FastAPI:
    app = _guest_app("Frostpoint wire endpoint")
    machine = _machine_dep(backend)

    @app.get("/machine/goalstate")
    async def goal_state(request: Request, wait: float = 0,
                         machine_id: str = Depends(machine)) -> Response:
        seen = request.headers.get("if-none-match", "")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + clamp_wait(wait)
        version = backend.goal_state_version(machine_id)
        while True:
            etag, body = await asyncio.to_thread(backend.goal_state, machine_id)
            if etag != seen:
                return JSONResponse(body, headers={"ETag": etag})
            # Wake on a change made in this process, or re-read now and then.
            for _ in range(20):
                if loop.time() >= deadline:
                    return Response(status_code=304, headers={"ETag": etag})
                if backend.goal_state_version(machine_id) != version:
                    break
                if await request.is_disconnected():  # nobody waits for the answer
                    return Response(status_code=304, headers={"ETag": etag})
                await asyncio.sleep(POLL_TICK)
            version = backend.goal_state_version(machine_id)

    @app.post("/machine/heartbeat")
    def heartbeat(body: Heartbeat, machine_id: str = Depends(machine)) -> dict[str, str]:
        backend.record_heartbeat(machine_id, body.model_dump(exclude_none=True))
        return {"ok": "true"}

    @app.post("/machine/status")
    def status(body: StatusReport, machine_id: str = Depends(machine)) -> dict[str, str]:
        backend.record_status(machine_id, body.model_dump())
        return {"ok": "true"}

    return app


class SnapshotRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    taskId: Annotated[str, StringConstraints(max_length=64)]  # noqa: N815 - wire name
    frozen: bool = False


def host_app(backend: MachineBackend) -> FastAPI:
    app = _guest_app("Frostpoint host endpoint")
    machine = _machine_dep(backend)

    @app.get("/extensions/{name}/{version}")
    def package(name: str, version: str, _m: str = Depends(machine)) -> FileResponse:
        path = backend.package_file(name, version)
        if path is None:
            raise HTTPException(404, "no such extension package")
        return FileResponse(path, media_type="application/gzip")

    @app.post("/snapshot")
    def snapshot(body: SnapshotRequest, machine_id: str = Depends(machine)) -> JSONResponse:
        try:
            return JSONResponse(backend.take_snapshot(machine_id, body.model_dump()))
        except FrostpointError as e:
            return JSONResponse(e.to_dict(), status_code=409)

    add_snapshot_task_route(app, backend, machine)
    return app


def add_snapshot_task_route(app: FastAPI, backend: MachineBackend, machine: Any) -> None:
    """GET /snapshot/task/{id}: is this machine's snapshot task still live? The
    extension asks right before it freezes, so a dead job's task never freezes."""

    @app.get("/snapshot/task/{task_id}")
    def snapshot_task(task_id: str, machine_id: str = Depends(machine)) -> JSONResponse:
        if len(task_id) > 64:
            return JSONResponse(FrostpointError("InvalidInput", "bad task id").to_dict(),
                                status_code=409)
        try:
            return JSONResponse(backend.snapshot_task(machine_id, task_id))
        except FrostpointError as e:
            return JSONResponse(e.to_dict(), status_code=409)
