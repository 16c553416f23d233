"""frostpoint backup / job / rp / restore: backups, the jobs that run them, restore
points and restores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from frostpoint.cli.client import Client, emit
from frostpoint.cli.common import JSON, api, finish_job, group, print_job, table

backup = group("Backups.")
job = group("Jobs.")
rp = group("Restore points.")
restore = group("Restores.")


@backup.command("now")
@api
def backup_now(machine: str, wait: bool = typer.Option(False, "--wait"),
               retain_days: int = typer.Option(None, help="Keep this one N days in the vault."),
               as_json: bool = JSON) -> None:
    """Start an on-demand backup; --wait follows it with a progress bar."""
    c = Client()
    finish_job(c, c.post("/backups", {"machine": machine, "retain_days": retain_days}),
               wait, as_json, f"backup {machine}")


@job.command("list")
@api
def job_list(machine: str = typer.Option(None), as_json: bool = JSON) -> None:
    rows = Client().get("/jobs", params={"machine": machine} if machine else {})
    emit(rows, as_json, lambda d: table(
        [{**j, "error": (j.get("error") or {}).get("code"),
          "duration": f"{j['duration_s']:.1f}s"} for j in d],
        ["id", "operation", "machine", "status", "started_at", "duration", "error"]))


@job.command("show")
@api
def job_show(job_id: str, as_json: bool = JSON) -> None:
    emit(Client().get(f"/jobs/{job_id}"), as_json, print_job)


@job.command("cancel")
@api
def job_cancel(job_id: str, as_json: bool = JSON) -> None:
    emit(Client().post(f"/jobs/{job_id}/cancel"), as_json, print_job)


@rp.command("list")
@api
def rp_list(machine: str = typer.Option(None), as_json: bool = JSON) -> None:
    rows = Client().get("/restore-points", params={"machine": machine} if machine else {})
    emit(rows, as_json, lambda d: table(d, ["id", "machine", "created_at", "consistency",
                                            "tier", "freeze_ms"]))


@rp.command("delete-collection")
@api
def rp_delete_collection(machine: str, as_json: bool = JSON) -> None:
    """Delete all instant restore points of MACHINE (vault copies stay); resumable."""
    emit(Client().delete(f"/machines/{machine}/restore-point-collection"), as_json)


def _restore(kind: str, body: dict[str, Any], wait: bool, as_json: bool) -> None:
    c = Client()
    finish_job(c, c.post(f"/restores/{kind}", body), wait, as_json, f"restore {kind}")


SOURCE = typer.Option("auto", help="auto | instant | vault")
WAIT = typer.Option(True, "--wait/--no-wait")


@restore.command("disks")
@api
def restore_disks(restore_point: str, to: Path = typer.Option(...), source: str = SOURCE,
                  wait: bool = WAIT, as_json: bool = JSON) -> None:
    """Restore the disk images of a restore point into a folder."""
    _restore("disks", {"restore_point": restore_point, "to": str(to.resolve()),
                       "source": source}, wait, as_json)


@restore.command("vm")
@api
def restore_vm(restore_point: str, name: str = typer.Option(...), source: str = SOURCE,
               wait: bool = WAIT, as_json: bool = JSON) -> None:
    """Create a new machine from a restore point."""
    _restore("vm", {"restore_point": restore_point, "name": name, "source": source},
             wait, as_json)


@restore.command("files")
@api
def restore_files(restore_point: str, path: str = typer.Option(...),
                  to: Path = typer.Option(...), disk: str = typer.Option(None),
                  source: str = SOURCE, wait: bool = WAIT, as_json: bool = JSON) -> None:
    """Copy a file or folder out of a restore point's disk."""
    _restore("files", {"restore_point": restore_point, "path": path,
                       "to": str(to.resolve()), "disk": disk, "source": source}, wait, as_json)
