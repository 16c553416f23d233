"""The dashboard's pages: each asks the API for what it shows (web/calls.py) and hands
the typed answers to its template."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from frostpoint import schemas as S
from frostpoint.enums import JobOperation, JobStatus
from frostpoint.web import stats
from frostpoint.web.calls import Api, ApiFailure
from frostpoint.web.session import Session

Body = Callable[[Request, Session], Awaitable[Response]]
ACTIVE = (JobStatus.IN_PROGRESS, JobStatus.CANCELLING)
HISTORY = 2000  # jobs read for the overview, the charts and the vault figures


@dataclass
class PageContext:
    api: Api
    render: Callable[..., Response]

    async def maybe(self, token: str, path: str, **params: Any) -> Any:
        """An answer the role may not get (tokens for a reader): None, not an error."""
        try:
            return await self.api.get(token, path, **params)
        except ApiFailure as e:
            if e.status == 403:
                return None
            raise


async def _protections(c: PageContext, token: str,
                       machines: list[S.Machine]) -> dict[str, S.Protection]:
    found = await asyncio.gather(*(c.api.get(token, f"/protection/{m.name}")
                                   for m in machines))
    return {m.name: p for m, p in zip(machines, found, strict=True)}


def _vault_of(protections: dict[str, S.Protection]) -> dict[str, str | None]:
    return {name: p.vault for name, p in protections.items()}


def routes(c: PageContext) -> dict[str, Body]:
    api = c.api

    async def overview(request: Request, s: Session) -> Response:
        machines, jobs, vaults, policies, rps = await asyncio.gather(
            api.get(s.token, "/machines"), api.get(s.token, "/jobs", limit=HISTORY),
            api.get(s.token, "/vaults"), api.get(s.token, "/policies"),
            api.get(s.token, "/restore-points"))
        prot = await _protections(c, s.token, machines)
        now = datetime.now(UTC)
        by_machine = stats.jobs_by_machine(jobs)
        pol = {p.name: p for p in policies}
        rows = []
        for m in machines:
            backups = [j for j in by_machine.get(m.name, [])
                       if j.operation == JobOperation.BACKUP]
            last = backups[0] if backups else None
            good = max((r for r in rps if r.machine == m.name), key=lambda r: r.created_at,
                       default=None)
            p = prot[m.name]
            rows.append({"machine": m, "protection": p, "last": last,
                         "consistency": (last.details.get("consistency") if last else None),
                         "rpo": stats.within_rpo(pol.get(p.policy or ""),
                                                 good.created_at if good else None, now)})
        since = now - timedelta(hours=24)
        failures = [j for j in jobs if j.status == JobStatus.FAILED and j.error
                    and (stats.when(j.started_at) or now).replace(tzinfo=UTC) >= since]
        usage = stats.vault_usage(vaults, jobs, rps, _vault_of(prot))
        return c.render(request, s, "overview.html", rows=rows, failures=failures,
                        running=[j for j in jobs if j.status in ACTIVE], vaults=vaults,
                        usage=usage)

    async def running(request: Request, s: Session) -> Response:
        jobs = await api.get(s.token, "/jobs", limit=200)
        return c.render(request, s, "_running.html",
                        running=[j for j in jobs if j.status in ACTIVE])

    async def machines(request: Request, s: Session) -> Response:
        found = await api.get(s.token, "/machines")
        prot = await _protections(c, s.token, found)
        return c.render(request, s, "machines.html", machines=found, protections=prot)

    async def machine(request: Request, s: Session) -> Response:
        name = request.path_params["name"]
        m, p, rps, jobs = await asyncio.gather(
            api.get(s.token, f"/machines/{name}"), api.get(s.token, f"/protection/{name}"),
            api.get(s.token, "/restore-points", machine=name),
            api.get(s.token, "/jobs", machine=name, limit=200))
        return c.render(request, s, "machine.html", m=m, protection=p, rps=rps,
                        jobs=jobs[:10], chart=stats.backup_chart(jobs, name))

    async def doctor(request: Request, s: Session) -> Response:
        name = request.path_params["name"]
        findings = await api.get(s.token, f"/machines/{name}/doctor")
        return c.render(request, s, "_doctor.html", name=name, findings=findings)

    async def jobs(request: Request, s: Session) -> Response:
        q = request.query_params
        found = await api.get(s.token, "/jobs", limit=500,
                              **({"machine": q["machine"]} if q.get("machine") else {}))
        shown = [j for j in found if (not q.get("status") or j.status == q["status"])
                 and (not q.get("operation") or j.operation == q["operation"])]
        return c.render(request, s, "jobs.html", jobs=shown, q=q, statuses=list(JobStatus),
                        operations=list(JobOperation))

    async def job(request: Request, s: Session) -> Response:
        j = await api.get(s.token, f"/jobs/{request.path_params['job_id']}")
        return c.render(request, s, "job.html", job=j, active=ACTIVE)

    async def job_live(request: Request, s: Session) -> Response:
        j = await api.get(s.token, f"/jobs/{request.path_params['job_id']}")
        return c.render(request, s, "_job.html", job=j, active=ACTIVE)

    async def vaults(request: Request, s: Session) -> Response:
        found, jobs, rps, ms = await asyncio.gather(
            api.get(s.token, "/vaults"), api.get(s.token, "/jobs", limit=HISTORY),
            api.get(s.token, "/restore-points"), api.get(s.token, "/machines"))
        prot = await _protections(c, s.token, ms)
        return c.render(request, s, "vaults.html", vaults=found,
                        usage=stats.vault_usage(found, jobs, rps, _vault_of(prot)))

    async def browse(request: Request, s: Session) -> Response:
        rp_id = request.path_params["rp_id"]
        q = {k: v for k, v in request.query_params.items() if k in ("disk", "path") and v}
        listing = await api.get(s.token, f"/restore-points/{rp_id}/browse", **q)
        return c.render(request, s, "browse.html", listing=listing)

    async def config(request: Request, s: Session) -> Response:
        policies, locks, groups, keyvaults = await asyncio.gather(
            api.get(s.token, "/policies"), api.get(s.token, "/locks"),
            api.get(s.token, "/resource-groups"), api.get(s.token, "/keyvaults"))
        return c.render(request, s, "config.html", policies=policies, locks=locks,
                        groups=groups, keyvaults=keyvaults,
                        tokens=await c.maybe(s.token, "/tokens"))

    return {"/": overview, "/ui/running": running, "/ui/machines": machines,
            "/ui/machines/{name}": machine, "/ui/machines/{name}/doctor": doctor,
            "/ui/jobs": jobs, "/ui/jobs/{job_id}": job, "/ui/jobs/{job_id}/live": job_live,
            "/ui/vaults": vaults, "/ui/restore-points/{rp_id}/browse": browse,
            "/ui/config": config}
