"""The API's routes for replace, browse, mounts, selective disks and replication
(docs/operations.md); added to the app by service/api.py."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from frostpoint import schemas as S
from frostpoint.errors.catalog import FrostpointError
from frostpoint.service.requests import (
    MountIn,
    ProtectUpdateIn,
    ReplicateIn,
    RestoreIn,
    UnmountIn,
)
from frostpoint.service.services import Services


def add_routes(app: FastAPI, svc: Services, r: list[Any]) -> None:
    @app.post("/restores/replace", dependencies=r, response_model=S.Job)
    def restore_replace(body: RestoreIn) -> dict[str, Any]:
        return svc.replacer.replace(body.restore_point, body.stop, body.source)

    @app.get("/restore-points/{rp_id}/browse", dependencies=r, response_model=S.Listing)
    def browse(rp_id: str, disk: str | None = None, path: str = "",
               source: str = "auto") -> dict[str, Any]:
        return svc.browser.browse(rp_id, disk, path, source)

    @app.post("/restores/mount", dependencies=r, response_model=S.HostMount)
    def mount(body: MountIn) -> dict[str, Any]:
        return svc.browser.mount(body.restore_point, body.to, body.disk, body.source)

    @app.post("/restores/unmount", dependencies=r, response_model=S.HostUnmounted)
    def unmount(body: UnmountIn) -> dict[str, Any]:
        return svc.browser.unmount(body.path)

    @app.get("/restores/mounts", dependencies=r, response_model=list[S.HostMount])
    def mounts() -> list[dict[str, Any]]:
        return svc.browser.list_mounts()

    @app.post("/vaults/{name}/replicate", dependencies=r, response_model=S.Job)
    def replicate(name: str, body: ReplicateIn) -> dict[str, Any]:
        return svc.replications.start(name, body.to, body.every)

    @app.get("/replications", dependencies=r, response_model=list[S.Replication])
    def replications() -> list[dict[str, Any]]:
        return svc.replications.list_all()

    @app.post("/protection/{machine}/update", dependencies=r, response_model=S.Protection)
    def protect_update(machine: str, body: ProtectUpdateIn) -> dict[str, Any]:
        if not isinstance(body.exclude_disks, list):
            raise FrostpointError("InvalidInput", "exclude_disks is a list of disk names")
        return svc.protection.update(machine, body.exclude_disks)
