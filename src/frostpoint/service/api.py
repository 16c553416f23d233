"""The management REST API (OpenAPI at /docs). Every error is a catalog entry."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy import select
from starlette.exceptions import HTTPException as StarletteHTTPException

from frostpoint import __version__
from frostpoint import schemas as S
from frostpoint.doctor.doctor import Doctor, as_dicts
from frostpoint.enums import JobStatus, JobTrigger
from frostpoint.errors.catalog import CATALOG, FrostpointError, Unauthorized, error_dict
from frostpoint.protocol import SNAPSHOT_EXTENSION
from frostpoint.service import api_ops
from frostpoint.service.api_recovery import add_routes
from frostpoint.service.imports import import_vm
from frostpoint.service.jobs import ACTIVE, describe_job
from frostpoint.service.models import Job
from frostpoint.service.names import parse_size
from frostpoint.service.requests import (
    BackupIn,
    ExecIn,
    FixIn,
    GrantIn,
    ImmutabilityIn,
    ImportIn,
    KeyExportIn,
    LockIn,
    MachineIn,
    NameIn,
    PolicyIn,
    PolicyUpdateIn,
    ProtectIn,
    RestoreIn,
    TokenIn,
    VaultImportIn,
    VaultIn,
    VaultUpdateIn,
)
from frostpoint.service.roles import contained, route_role
from frostpoint.service.runtime import job_key
from frostpoint.service.services import Services
from frostpoint.service.tokens import Caller, Tokens
from frostpoint.service.vault_errors import catalog_error as vault_catalog_error
from frostpoint.vault.errors import VaultError
from frostpoint.web.app import add_dashboard

log = logging.getLogger("frostpoint.service.api")
JOB_WAIT_MAX = 30.0  # seconds a GET /jobs/ID?wait= long poll is held at most

def create_app(svc: Services) -> FastAPI:
    app = FastAPI(title="Frostpoint backup service", version=__version__)

    tokens = Tokens(svc.rt.sessions)

    def caller(authorization: str = Header(default="")) -> Caller:
        scheme, _, token = authorization.strip().partition(" ")
        who = tokens.authenticate(token.strip()) if scheme.lower() == "bearer" else None
        if who is None:
            raise FrostpointError("Unauthorized", "missing or wrong API token")
        return who

    def auth(request: Request, who: Caller = Depends(caller)) -> None:
        path = getattr(request.scope.get("route"), "path", "")
        need = route_role(request.method, path) or "admin"
        if need != "public" and not who.can(need):
            raise FrostpointError("AuthorizationFailed", f"token {who.name} has role "
                                  f"{who.role}; {request.method} {path} needs {need}",
                                  {"role": who.role, "needs": need})

    @app.exception_handler(FrostpointError)
    async def catalog_error(req: Request, e: FrostpointError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(e, Unauthorized) else None
        # The machine in the route fills the fix hints' {machine} (not MACHINE).
        params = req.path_params
        machine = params.get("machine") or (
            params.get("name") if req.url.path.startswith("/machines/") else None)
        return JSONResponse({"error": e.to_dict(machine)}, status_code=e.spec.http_status,
                            headers=headers)

    @app.exception_handler(VaultError)
    async def vault_error(req: Request, e: VaultError) -> JSONResponse:
        return await catalog_error(req, vault_catalog_error(e))  # the vault's edge

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_req: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {401: "Unauthorized", 404: "NotFound", 409: "Conflict"}.get(
            e.status_code, "InvalidInput")
        return JSONResponse({"error": error_dict(code, str(e.detail))},
                            status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_req: Request, e: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}"
                             for x in e.errors())
        return JSONResponse({"error": error_dict("InvalidInput", problems)},
                            status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(req: Request, e: Exception) -> JSONResponse:
        # Exception text can hold paths, keys or SQL: it goes to the server log under an
        # id, and the client gets the catalog code and that id, nothing of the exception.
        error_id = secrets.token_hex(6)
        log.error("internal error %s in %s %s", error_id, req.method, req.url.path,
                  exc_info=e)
        return JSONResponse({"error": error_dict(
            "BackUpOperationFailed", f"internal error {error_id}: the server log has the "
            f"details under this id", {"error_id": error_id})}, status_code=500)

    @app.get("/health", response_model=S.Health)
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "instance": svc.rt.instance}

    r: list[Any] = [Depends(auth)]

    @app.get("/errors", dependencies=r, response_model=list[S.ApiError])
    def errors() -> list[dict[str, Any]]:
        return [error_dict(c) for c in CATALOG]

    # machines
    @app.post("/machines", dependencies=r, response_model=S.Machine)
    def create_machine(body: MachineIn) -> dict[str, Any]:
        return svc.machines.create(body.name, [d.model_dump() for d in body.disks],
                                   body.region, body.agent, body.agent_version,
                                   body.kind, body.memory, body.cpus)

    @app.post("/machines/import", dependencies=r, response_model=S.Machine)
    def import_machine(body: ImportIn) -> dict[str, Any]:
        return import_vm(svc.machines, body.name, [d.model_dump() for d in body.disks],
                         body.memory, body.cpus)

    @app.get("/machines", dependencies=r, response_model=list[S.Machine])
    def list_machines() -> list[dict[str, Any]]:
        return svc.list_machines()

    @app.get("/machines/{name}", dependencies=r, response_model=S.Machine)
    def show_machine(name: str) -> dict[str, Any]:
        return svc.machines.show(name)

    @app.post("/machines/{name}/start", dependencies=r, response_model=S.Machine)
    def start_machine(name: str) -> dict[str, Any]:
        return svc.machines.start(name)

    @app.post("/machines/{name}/stop", dependencies=r, response_model=S.Machine)
    def stop_machine(name: str) -> dict[str, Any]:
        return svc.machines.stop(name)

    @app.post("/machines/{name}/deallocate", dependencies=r, response_model=S.Machine)
    def deallocate_machine(name: str) -> dict[str, Any]:
        return svc.machines.stop(name, deallocate=True)

    @app.delete("/machines/{name}", dependencies=r, response_model=S.Deleted)
    def delete_machine(name: str) -> dict[str, Any]:
        svc.delete_machine(name)
        return {"deleted": name}

    @app.post("/machines/{name}/exec", dependencies=r, response_model=S.ExecResult)
    def exec_machine(name: str, body: ExecIn) -> dict[str, Any]:
        return svc.machines.exec(name, body.argv, body.timeout)

    @app.get("/machines/{name}/console", dependencies=r, response_model=S.Console)
    def console(name: str) -> dict[str, Any]:
        return {"name": name, "console": svc.console(name)}

    @app.delete("/machines/{name}/disks/{disk}", dependencies=r, response_model=S.Machine)
    def delete_disk(name: str, disk: str) -> dict[str, Any]:
        return svc.machines.delete_disk(name, disk)

    @app.post("/machines/{name}/agent/restart", dependencies=r, response_model=S.Machine)
    def agent_restart(name: str) -> dict[str, Any]:
        return svc.machines.agent_restart(name)

    @app.post("/machines/{name}/agent/install", dependencies=r, response_model=S.Machine)
    def agent_install(name: str) -> dict[str, Any]:
        return svc.machines.agent_install(name)

    @app.get("/machines/{name}/doctor", dependencies=r, response_model=list[S.Finding])
    def doctor(name: str) -> list[dict[str, Any]]:
        return as_dicts(Doctor(svc).examine(name))

    @app.post("/machines/{name}/doctor/fix", dependencies=r, response_model=S.FixResult)
    def doctor_fix(name: str, body: FixIn) -> dict[str, Any]:
        doc = Doctor(svc)
        found = [f for f in doc.examine(name) if f.check == body.check and f.remedy]
        if not found:
            raise FrostpointError("NotFound", f"no fixable finding {body.check} on {name}")
        return {"result": doc.apply(name, found[0])}

    @app.put("/machines/{name}/extensions/{ext}", dependencies=r, response_model=S.Machine)
    def set_extension(name: str, ext: str, body: dict[str, Any]) -> dict[str, Any]:
        if ext == SNAPSHOT_EXTENSION:
            raise FrostpointError("InvalidInput", "the snapshot extension is driven by "
                                  "backups; use frostpoint backup now")
        mid = svc.machines.show(name)["id"]
        svc.machines.set_extension(mid, body.get("settings", {}), ext)
        return svc.machines.show(name)

    @app.delete("/machines/{name}/extensions/{ext}", dependencies=r, response_model=S.Machine)
    def remove_extension(name: str, ext: str) -> dict[str, Any]:
        svc.machines.remove_extension(name, ext)
        return svc.machines.show(name)

    # vaults, policies, protection
    @app.post("/vaults", dependencies=r, response_model=S.Vault)
    def create_vault(body: VaultIn) -> dict[str, Any]:
        return svc.protection.create_vault(
            body.name, body.location, body.backend,
            parse_size(body.block_size) if body.block_size else None)

    @app.get("/vaults", dependencies=r, response_model=list[S.Vault])
    def list_vaults() -> list[dict[str, Any]]:
        return svc.protection.list_vaults()

    @app.delete("/vaults/{name}", dependencies=r, response_model=S.VaultDeleted)
    def delete_vault(name: str) -> dict[str, Any]:
        return svc.protection.delete_vault(name)

    @app.post("/vaults/{name}/key/export", dependencies=r, response_model=S.KeyFile)
    def export_vault_key(name: str, body: KeyExportIn) -> dict[str, Any]:
        return svc.protection.export_key(name, body.passphrase)

    @app.post("/vaults/import", dependencies=r, response_model=S.VaultImported)
    def import_vault(body: VaultImportIn) -> dict[str, Any]:
        return svc.protection.import_vault(body.name, body.backend, body.location,
                                           body.key_file, body.passphrase)

    # verify and GC are jobs: the answer is the job (follow it at /jobs/{id})
    @app.post("/vaults/{name}/verify", dependencies=r, response_model=S.Job)
    def verify_vault(name: str, sample: float = 100.0) -> dict[str, Any]:
        return svc.vault_checks.start_verify(name, sample)

    @app.post("/vaults/{name}/gc", dependencies=r, response_model=S.Job)
    def gc_vault(name: str, grace_hours: float = 24.0) -> dict[str, Any]:
        return svc.vault_checks.start_gc(name, grace_hours)

    @app.patch("/vaults/{name}", dependencies=r, response_model=S.Vault)
    def update_vault(name: str, body: VaultUpdateIn) -> dict[str, Any]:
        return svc.softdelete.update_vault(name, body.soft_delete, body.soft_delete_days)

    @app.post("/vaults/{name}/immutability", dependencies=r, response_model=S.Vault)
    def vault_immutability(name: str, body: ImmutabilityIn) -> dict[str, Any]:
        return svc.softdelete.set_immutability(name, body.action)

    @app.post("/policies", dependencies=r, response_model=S.Policy)
    def create_policy(body: PolicyIn) -> dict[str, Any]:
        return svc.policies.create(body.name, **body.model_dump(exclude={"name"}))

    @app.get("/policies", dependencies=r, response_model=list[S.Policy])
    def list_policies() -> list[dict[str, Any]]:
        return svc.policies.list_all()

    @app.get("/policies/{name}", dependencies=r, response_model=S.Policy)
    def show_policy(name: str) -> dict[str, Any]:
        return svc.policies.show(name)

    @app.patch("/policies/{name}", dependencies=r, response_model=S.PolicyUpdated)
    def update_policy(name: str, body: PolicyUpdateIn) -> dict[str, Any]:
        return svc.policies.update(name, **body.model_dump())

    @app.delete("/policies/{name}", dependencies=r, response_model=S.Deleted)
    def delete_policy(name: str) -> dict[str, Any]:
        return svc.policies.delete(name)

    @app.get("/policies/{name}/preview", dependencies=r, response_model=S.PolicyPreview)
    def preview_policy(name: str, days: int = 400) -> dict[str, Any]:
        return svc.policies.preview(name, days)

    @app.post("/protection/enable", dependencies=r, response_model=S.Protection)
    def protect_enable(body: ProtectIn) -> dict[str, Any]:
        return svc.protection.enable(body.machine, body.vault, body.policy,
                                     body.exclude_disks)

    @app.post("/protection/{machine}/stop", dependencies=r, response_model=S.Protection)
    def protect_stop(machine: str, delete_data: bool = False) -> dict[str, Any]:
        return svc.softdelete.stop(machine, delete_data)

    @app.post("/protection/{machine}/undelete", dependencies=r,
              response_model=S.Protection)
    def protect_undelete(machine: str) -> dict[str, Any]:
        return svc.softdelete.undelete(machine)

    @app.post("/protection/{machine}/disable", dependencies=r,
              response_model=S.Protection)
    def protect_disable(machine: str) -> dict[str, Any]:
        return svc.protection.disable(machine)

    @app.post("/protection/{machine}/resume", dependencies=r, response_model=S.Protection)
    def protect_resume(machine: str) -> dict[str, Any]:
        return svc.protection.set_state(machine, "resume")

    @app.get("/protection/{machine}", dependencies=r, response_model=S.Protection)
    def protect_show(machine: str) -> dict[str, Any]:
        return svc.protection.describe_protection(machine)

    # backups and jobs
    @app.post("/backups", dependencies=r, response_model=S.Job)
    def backup_now(body: BackupIn) -> dict[str, Any]:
        return svc.backups.start(body.machine, JobTrigger.ON_DEMAND, body.retain_days)

    @app.get("/jobs", dependencies=r, response_model=list[S.Job])
    def list_jobs(machine: str | None = None,
                  limit: int = Query(50, ge=1, le=10000)) -> list[dict[str, Any]]:
        with svc.rt.sessions() as s:
            q = select(Job).order_by(Job.started_at.desc()).limit(limit)
            if machine:
                q = q.where(Job.machine_name == machine)
            return [describe_job(j) for j in s.scalars(q)]

    @app.get("/jobs/{job_id}", dependencies=r, response_model=S.Job)
    def show_job(job_id: str, wait: float = Query(0, ge=0, le=JOB_WAIT_MAX)) -> dict[str, Any]:
        """The job; with wait > 0, answered once it has ended or after wait seconds
        (a long poll: `--wait` returns as the job ends, not at the next poll)."""
        version = svc.rt.notifier.version(job_key(job_id))  # before the read: no lost wake
        with svc.rt.sessions() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise FrostpointError("NotFound", f"no job {job_id}")
            if not wait or job.status not in ACTIVE:
                return describe_job(job)
        svc.rt.notifier.wait(job_key(job_id), version, wait)
        return show_job(job_id, 0)

    @app.post("/jobs/{job_id}/cancel", dependencies=r, response_model=S.Job)
    def cancel_job(job_id: str) -> dict[str, Any]:
        with svc.rt.sessions.begin() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise FrostpointError("NotFound", f"no job {job_id}")
            if job.status in ACTIVE:
                job.cancel_requested = True
                job.status = JobStatus.CANCELLING
        return show_job(job_id, 0)

    # restore points and restores
    @app.get("/restore-points", dependencies=r, response_model=list[S.RestorePoint])
    def list_rps(machine: str | None = None) -> list[dict[str, Any]]:
        return svc.restores.list_restore_points(machine)

    @app.delete("/restore-points/{rp_id}", dependencies=r, response_model=S.Deleted)
    def delete_rp(rp_id: str) -> dict[str, Any]:
        return svc.softdelete.delete_restore_point(rp_id)

    @app.delete("/machines/{name}/restore-point-collection", dependencies=r,
                response_model=S.CollectionDeleted)
    def delete_collection(name: str) -> dict[str, Any]:
        return svc.backups.delete_collection(name)

    @app.post("/restores/disks", dependencies=r, response_model=S.Job)
    def restore_disks(body: RestoreIn, who: Caller = Depends(caller)) -> dict[str, Any]:
        if not body.to:
            raise FrostpointError("InvalidInput", "--to FOLDER is required")
        to = body.to if who.can("admin") else contained(svc.rt.restore_area, body.to)
        return svc.restores.restore_disks(body.restore_point, to, body.source)

    @app.post("/restores/vm", dependencies=r, response_model=S.Job)
    def restore_vm(body: RestoreIn) -> dict[str, Any]:
        if not body.name:
            raise FrostpointError("InvalidInput", "--name NEW_MACHINE is required")
        return svc.restores.restore_vm(body.restore_point, body.name, body.source,
                                       body.missing_disks, body.kind)

    @app.post("/restores/files", dependencies=r, response_model=S.Job)
    def restore_files(body: RestoreIn, who: Caller = Depends(caller)) -> dict[str, Any]:
        if not body.path or not body.to:
            raise FrostpointError("InvalidInput", "--path and --to are required")
        to = body.to if who.can("admin") else contained(svc.rt.restore_area, body.to)
        return svc.restores.restore_files(body.restore_point, body.path, to, body.disk,
                                          body.source, body.overwrite)

    # locks and resource groups
    @app.post("/locks", dependencies=r, response_model=S.Lock)
    def create_lock(body: LockIn) -> dict[str, Any]:
        return svc.protection.create_lock(body.name, body.resource_group, body.kind)

    @app.get("/locks", dependencies=r, response_model=list[S.Lock])
    def list_locks() -> list[dict[str, Any]]:
        return svc.protection.list_locks()

    @app.delete("/locks/{name}", dependencies=r, response_model=S.Deleted)
    def delete_lock(name: str) -> dict[str, Any]:
        svc.protection.delete_lock(name)
        return {"deleted": name}

    # key vaults
    kv = svc.machines.keyvaults

    @app.post("/keyvaults", dependencies=r, response_model=S.KeyVault)
    def create_keyvault(body: NameIn) -> dict[str, Any]:
        return kv.create(body.name)

    @app.get("/keyvaults", dependencies=r, response_model=list[S.KeyVault])
    def list_keyvaults() -> list[dict[str, Any]]:
        return kv.list()

    @app.get("/keyvaults/{name}", dependencies=r, response_model=S.KeyVault)
    def show_keyvault(name: str) -> dict[str, Any]:
        return kv.show(name)

    @app.post("/keyvaults/{name}/keys", dependencies=r, response_model=S.KeyVault)
    def create_key(name: str, body: NameIn) -> dict[str, Any]:
        return kv.create_key(name, body.name)

    @app.post("/keyvaults/{name}/grants", dependencies=r, response_model=S.KeyVault)
    def grant(name: str, body: GrantIn) -> dict[str, Any]:
        return kv.grant(name, body.principal, body.permissions)

    @app.delete("/keyvaults/{name}/grants/{principal}", dependencies=r,
                response_model=S.KeyVault)
    def revoke(name: str, principal: str) -> dict[str, Any]:
        return kv.revoke(name, principal)

    @app.get("/resource-groups", dependencies=r, response_model=list[S.ResourceGroup])
    def list_rgs() -> list[dict[str, Any]]:
        return svc.protection.list_resource_groups()

    # API tokens (admin only; see route_role)
    @app.post("/tokens", dependencies=r, response_model=S.NewToken)
    def create_token(body: TokenIn) -> dict[str, Any]:
        return tokens.create(body.name, body.role)

    @app.get("/tokens", dependencies=r, response_model=list[S.Token])
    def list_tokens() -> list[dict[str, Any]]:
        return tokens.list()

    @app.delete("/tokens/{name}", dependencies=r, response_model=S.TokenRevoked)
    def revoke_token(name: str) -> dict[str, Any]:
        return tokens.revoke(name)

    add_routes(app, svc, r)  # replace, browse, mounts, selective disks, replication
    api_ops.add_routes(app, svc, r, caller, auth)  # metrics, status, notify
    add_dashboard(app, tokens, svc.rt.restore_area)  # the web UI at / (web/), on these same routes

    # Each route's role in OpenAPI, for clients and for the test that checks them all.
    for route in app.routes:
        if isinstance(route, APIRoute):
            for method in route.methods or ():
                role = route_role(method, route.path)
                if role:
                    route.openapi_extra = {**(route.openapi_extra or {}),
                                           "x-frostpoint-role": role}
    return app
