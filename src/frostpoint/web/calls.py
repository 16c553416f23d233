"""The dashboard's way to the service: the management API's own routes, called in
process with the signed-in token, and their answers parsed into the typed models of
schemas.py. So a page shows exactly what `frostpoint ... --json` shows, and every
refusal (role, lock, immutability) is the API's own, with its catalog code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from fastapi import FastAPI

from frostpoint import schemas as S
from frostpoint.service.roles import route_role
from frostpoint.service.tokens import Caller


class ApiFailure(Exception):
    def __init__(self, status: int, error: S.ApiError) -> None:
        super().__init__(error.message)
        self.status, self.error = status, error


class Api:
    def __init__(self, app: FastAPI) -> None:
        # The app's own error handlers answer every failure; none is raised through.
        self.transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)

    async def call(self, token: str, method: str, path: str, body: dict[str, Any] | None = None,
                   params: dict[str, Any] | None = None) -> Any:
        async with httpx.AsyncClient(transport=self.transport, base_url="http://frostpoint",
                                     timeout=None) as c:
            r = await c.request(method, path, json=body, params=params,
                                headers={"Authorization": f"Bearer {token}"})
        data = r.json()
        if r.status_code >= 400:
            raise ApiFailure(r.status_code, S.parse(S.ErrorBody, data).error)
        model = S.response_model(method, path)
        return S.parse(model, data) if model is not None else data

    async def get(self, token: str, path: str, **params: Any) -> Any:
        return await self.call(token, "GET", path, params=params or None)


@dataclass(frozen=True)
class Action:
    """A button or form of the dashboard: the API route it calls, which form fields
    fill the route's {placeholders}, and which go into the body."""
    method: str
    route: str
    body: tuple[str, ...] = ()
    query: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()  # checkboxes: present is true

    @property
    def role(self) -> str:
        return route_role(self.method, self.route) or "admin"

    def allowed(self, who: Caller) -> bool:
        return who.can(self.role)

    def request(self, form: dict[str, str]) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """The path, body and query of the call this form makes."""
        path = self.route
        for part in path.split("/"):
            if part.startswith("{"):
                value = form.get(part[1:-1], "")
                if not value:
                    raise ValueError(f"{part[1:-1]} is required")
                path = path.replace(part, quote(value, safe=""), 1)
        body: dict[str, Any] = {k: form[k] for k in self.body if form.get(k)}
        body.update({k: True for k in self.flags if form.get(k)})
        return path, body, {k: form[k] for k in self.query if form.get(k)}


ACTIONS: dict[str, Action] = {
    "backup": Action("POST", "/backups", body=("machine",)),
    "cancel": Action("POST", "/jobs/{job}/cancel"),
    "doctor-fix": Action("POST", "/machines/{machine}/doctor/fix", body=("check",)),
    "machine-start": Action("POST", "/machines/{machine}/start"),
    "machine-stop": Action("POST", "/machines/{machine}/stop"),
    "restore-vm": Action("POST", "/restores/vm", body=("restore_point", "name", "source")),
    "restore-disks": Action("POST", "/restores/disks", body=("restore_point", "to", "source")),
    "restore-files": Action("POST", "/restores/files",
                            body=("restore_point", "path", "to", "disk", "source"),
                            flags=("overwrite",)),
    "rp-delete": Action("DELETE", "/restore-points/{rp}"),
    "verify": Action("POST", "/vaults/{vault}/verify", query=("sample",)),
    "gc": Action("POST", "/vaults/{vault}/gc", query=("grace_hours",)),
    "policy-create": Action("POST", "/policies", body=("name", "schedule", "schedule_time",
                                                       "vault_retention_days", "rpo_hours")),
    "policy-delete": Action("DELETE", "/policies/{policy}"),
    "lock-create": Action("POST", "/locks", body=("name", "resource_group", "kind")),
    "lock-delete": Action("DELETE", "/locks/{lock}"),
    "keyvault-create": Action("POST", "/keyvaults", body=("name",)),
    "key-create": Action("POST", "/keyvaults/{keyvault}/keys", body=("name",)),
    "token-create": Action("POST", "/tokens", body=("name", "role")),
    "token-delete": Action("DELETE", "/tokens/{token}"),
}
