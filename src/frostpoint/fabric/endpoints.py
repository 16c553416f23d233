"""The two endpoints that face the machines, on two ports of the fabric address.

Wire endpoint: goal state (long poll with ETag), heartbeat, status.
Host endpoint: extension packages, snapshot requests.
Each machine authenticates with its own token and sees only its own state.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi.responses import FileResponse, JSONResponse

from frostpoint.errors.catalog import FrostpointError


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


def _machine_dep(backend: MachineBackend):  # type: ignore[no-untyped-def]
    def dep(authorization: str = Header(default="")) -> str:
        token = authorization.removeprefix("Bearer ").strip()
        machine_id = backend.machine_for_token(token) if token else None
        if machine_id is None:
            raise HTTPException(401, "unknown machine credential")
        return machine_id
    return dep


def wire_app(backend: MachineBackend) -> FastAPI:
    app = FastAPI(title="Frostpoint wire endpoint", docs_url=None, redoc_url=None)
    machine = _machine_dep(backend)

    @app.get("/machine/goalstate")
    async def goal_state(request: Request, wait: float = 0,
                         machine_id: str = Depends(machine)) -> Response:
        seen = request.headers.get("if-none-match", "")
        deadline = asyncio.get_running_loop().time() + min(wait, 55)
        version = backend.goal_state_version(machine_id)
        while True:
            etag, body = await asyncio.to_thread(backend.goal_state, machine_id)
            if etag != seen:
                return JSONResponse(body, headers={"ETag": etag})
            # Wake on a change made in this process, or re-read now and then.
            for _ in range(20):
                if asyncio.get_running_loop().time() >= deadline:
                    return Response(status_code=304, headers={"ETag": etag})
                if backend.goal_state_version(machine_id) != version:
                    break
                await asyncio.sleep(0.1)
            version = backend.goal_state_version(machine_id)

    @app.post("/machine/heartbeat")
    def heartbeat(body: dict[str, Any], machine_id: str = Depends(machine)) -> dict[str, str]:
        backend.record_heartbeat(machine_id, body)
        return {"ok": "true"}

    @app.post("/machine/status")
    def status(body: dict[str, Any], machine_id: str = Depends(machine)) -> dict[str, str]:
        backend.record_status(machine_id, body)
        return {"ok": "true"}

    return app


def host_app(backend: MachineBackend) -> FastAPI:
    app = FastAPI(title="Frostpoint host endpoint", docs_url=None, redoc_url=None)
    machine = _machine_dep(backend)

    @app.get("/extensions/{name}/{version}")
    def package(name: str, version: str, _m: str = Depends(machine)) -> FileResponse:
        path = backend.package_file(name, version)
        if path is None:
            raise HTTPException(404, "no such extension package")
        return FileResponse(path, media_type="application/gzip")

    @app.post("/snapshot")
    def snapshot(body: dict[str, Any], machine_id: str = Depends(machine)) -> JSONResponse:
        try:
            return JSONResponse(backend.take_snapshot(machine_id, body))
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
