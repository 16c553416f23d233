"""frostpoint backup / job / rp / restore: backups, the jobs that run them, restore
points and restores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from frostpoint.cli.client import Client, emit, show_error
from frostpoint.cli.common import JSON, MACHINE, api, arg, finish_job, group, print_job, table
from frostpoint.errors.catalog import error_dict

backup = group("Backups.")
job = group("Jobs.")
rp = group("Restore points.")
restore = group("Restores.")
JOB = arg("JOB_ID", "The job's id (job list).")
RP = arg("RP_ID", "The restore point's id (rp list).")
FILTER = typer.Option(None, "--machine", metavar="MACHINE", help="Only this machine's.")


@backup.command("now")
@api
def backup_now(machine: str = MACHINE,
               wait: bool = typer.Option(False, "--wait",
                                         help="Follow the job to its end, then print it."),
               retain_days: int = typer.Option(
                   None, metavar="N", help="Keep this one N days in the vault (1-36500)."),
               as_json: bool = JSON) -> None:
    """Start an on-demand backup; --wait follows it with a progress bar."""
    c = Client()
    finish_job(c, c.post("/backups", {"machine": machine, "retain_days": retain_days}),
               wait, as_json, f"backup {machine}")


@job.command("list")
@api
def job_list(machine: str = FILTER, as_json: bool = JSON) -> None:
    """The 50 newest jobs, newest first."""
    rows = Client().get("/jobs", params={"machine": machine} if machine else {})
    emit(rows, as_json, lambda d: table(
        [{**j, "error": (j.get("error") or {}).get("code"),
          "duration": f"{j['duration_s']:.1f}s"} for j in d],
        ["id", "operation", "machine", "status", "started_at", "duration", "error"]))


@job.command("show")
@api
def job_show(job_id: str = JOB, as_json: bool = JSON) -> None:
    """A job: status, sub-tasks with progress, warnings, error."""
    emit(Client().get(f"/jobs/{job_id}"), as_json, print_job)


@job.command("cancel")
@api
def job_cancel(job_id: str = JOB, as_json: bool = JSON) -> None:
    """Ask a running job to stop."""
    emit(Client().post(f"/jobs/{job_id}/cancel"), as_json, print_job)


@rp.command("list")
@api
def rp_list(machine: str = FILTER, as_json: bool = JSON) -> None:
    """Restore points, oldest first."""
    rows = Client().get("/restore-points", params={"machine": machine} if machine else {})
    emit(rows, as_json, lambda d: table(d, ["id", "machine", "created_at", "consistency",
                                            "tier", "freeze_ms"]))


@rp.command("delete-collection")
@api
def rp_delete_collection(machine: str = MACHINE, as_json: bool = JSON) -> None:
    """Delete all instant restore points of MACHINE (vault copies stay); resumable."""
    emit(Client().delete(f"/machines/{machine}/restore-point-collection"), as_json)


@rp.command("delete")
@api
def rp_delete(restore_point: str = RP, as_json: bool = JSON) -> None:
    """Delete one restore point: its instant snapshot and its vault copy."""
    emit(Client().delete(f"/restore-points/{restore_point}"), as_json)


def _restore(kind: str, body: dict[str, Any], wait: bool, as_json: bool) -> None:
    c = Client()
    finish_job(c, c.post(f"/restores/{kind}", body), wait, as_json, f"restore {kind}")


SOURCE = typer.Option("auto", metavar="auto|instant|vault",
                      help="Read from the snapshot or the vault; auto: the snapshot if it "
                           "still exists.")
WAIT = typer.Option(True, "--wait/--no-wait", help="Follow the job to its end.")
TO = typer.Option(..., metavar="DIR", help="The folder to restore into (made if missing).")


@restore.command("disks")
@api
def restore_disks(restore_point: str = RP,
                  to: Path = typer.Option(None, metavar="DIR",
                                          help="The folder to restore into (made if missing)."),
                  replace: bool = typer.Option(
                      False, "--replace", help="Swap them into the machine instead (stopped; "
                      "a safety restore point is taken first, rolled back to on failure)."),
                  stop: bool = typer.Option(False, "--stop",
                                            help="With --replace: stop a running machine."),
                  source: str = SOURCE, wait: bool = WAIT, as_json: bool = JSON) -> None:
    """Restore the disk images of a restore point into a folder, or (--replace) in
    place of the machine's disks."""
    if replace == (to is not None):
        show_error(error_dict("InvalidInput", "give --to DIR or --replace"), as_json)
        raise typer.Exit(1)
    if replace:
        _restore("replace", {"restore_point": restore_point, "stop": stop,
                             "source": source}, wait, as_json)
        return
    assert to is not None
    _restore("disks", {"restore_point": restore_point, "to": str(to.resolve()),
                       "source": source}, wait, as_json)


@restore.command("vm")
@api
def restore_vm(restore_point: str = RP,
               name: str = typer.Option(..., metavar="NEW",
                                        help="The new machine's name (vm create's rules)."),
               source: str = SOURCE,
               missing_disks: str = typer.Option(
                   "refuse", metavar="refuse|empty",
                   help="A disk the restore point left out (--exclude-disk): refuse, or "
                        "make it new and empty."),
               kind: str = typer.Option(None, metavar="sandbox|qemu",
                                        help="The new machine's kind (default: the backed-up "
                                             "machine's)."),
               wait: bool = WAIT, as_json: bool = JSON) -> None:
    """Create a new machine from a restore point."""
    _restore("vm", {"restore_point": restore_point, "name": name, "source": source,
                    "missing_disks": missing_disks, "kind": kind}, wait, as_json)


@restore.command("files")
@api
def restore_files(restore_point: str = RP,
                  path: str = typer.Option(..., metavar="PATH",
                                           help="File or folder, relative to the disk's root; "
                                                "globs match (quote them): 'docs/*.txt'."),
                  to: Path = TO,
                  disk: str = typer.Option(None, metavar="DISK",
                                           help="The disk; default the first."),
                  overwrite: bool = typer.Option(
                      False, "--overwrite", help="Replace what is already at DIR/<name>."),
                  source: str = SOURCE, wait: bool = WAIT, as_json: bool = JSON) -> None:
    """Copy a file or folder out of a restore point's disk into DIR. An existing
    DIR/<name> is kept unless --overwrite."""
    _restore("files", {"restore_point": restore_point, "path": path,
                       "to": str(to.resolve()), "disk": disk, "source": source,
                       "overwrite": overwrite}, wait, as_json)
