"""frostpoint rp browse, restore mount|unmount|mounts, protect update, vault replicate
and replications: finding files, mounting restore points, selective disks and a
second copy (docs/operations.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from frostpoint.cli.client import Client, console, emit, show_error
from frostpoint.cli.common import JSON, MACHINE, api, arg, finish_job, table
from frostpoint.cli.jobs import RP, SOURCE, restore, rp
from frostpoint.cli.vaults import JOB_WAIT, VAULT, protect, vault
from frostpoint.errors.catalog import error_dict

DISK = typer.Option(None, metavar="DISK", help="The disk; default the first.")


@rp.command("browse")
@api
def rp_browse(restore_point: str = RP, disk: str = DISK,
              path: str = typer.Option("", metavar="DIR",
                                       help="The folder to list, from the disk's root."),
              source: str = SOURCE, as_json: bool = JSON) -> None:
    """List a folder of a restore point's disk: name, type, size, mtime (from the
    snapshot, or the vault without restoring the disk first)."""
    d = Client().get(f"/restore-points/{restore_point}/browse",
                     params={"disk": disk, "path": path, "source": source} if disk else
                     {"path": path, "source": source})

    def human(d: dict[str, Any]) -> None:
        rows = [{**e, "name": e["name"] + (f" -> {e['target']}" if e.get("target") else "")}
                for e in d["entries"]]
        table(rows, ["type", "mode", "size", "mtime", "name"],
              f"{d['disk']}:{d['path']} ({d['source']})")
        if d["truncated"]:
            console.print("[yellow]listing cut at 10000 entries[/]")
    emit(d, as_json, human)


@restore.command("mount")
@api
def restore_mount(restore_point: str = RP,
                  to: Path = typer.Option(..., metavar="DIR",
                                          help="An empty (or new) folder to mount it at."),
                  disk: str = DISK, source: str = SOURCE, as_json: bool = JSON) -> None:
    """Mount a restore point's disk on this host, read-only (nodev, nosuid, noexec),
    until `restore unmount DIR`."""
    emit(Client().post("/restores/mount", {"restore_point": restore_point,
                                           "to": str(to.resolve()), "disk": disk,
                                           "source": source}), as_json)


@restore.command("unmount")
@api
def restore_unmount(to: Path = arg("DIR", "Where the restore point is mounted."),
                    as_json: bool = JSON) -> None:
    """Unmount a restore point mounted by `restore mount`, and delete its copy."""
    emit(Client().post("/restores/unmount", {"path": str(to.resolve())}), as_json)


@restore.command("mounts")
@api
def restore_mounts(as_json: bool = JSON) -> None:
    """Restore points mounted on this host."""
    emit(Client().get("/restores/mounts"), as_json,
         lambda d: table(d, ["path", "restore_point", "disk", "created_at"]))


@protect.command("update")
@api
def protect_update(machine: str = MACHINE,
                   exclude_disk: list[str] = typer.Option(
                       None, "--exclude-disk", metavar="DISK",
                       help="Leave this disk out of backups (repeat for more)."),
                   all_disks: bool = typer.Option(False, "--all-disks",
                                                  help="Back up every disk again."),
                   as_json: bool = JSON) -> None:
    """Change which disks a protected machine's backups leave out."""
    if bool(exclude_disk) == all_disks:
        show_error(error_dict("InvalidInput", "give --exclude-disk DISK or --all-disks"),
                   as_json)
        raise typer.Exit(1)
    emit(Client().post(f"/protection/{machine}/update",
                       {"exclude_disks": [] if all_disks else exclude_disk}), as_json)


@vault.command("replicate")
@api
def vault_replicate(name: str = VAULT,
                    to: str = typer.Option(..., metavar="VAULT",
                                           help="The vault that gets the copies."),
                    every: str = typer.Option(
                        None, metavar="PERIOD",
                        help="Run again every PERIOD (e.g. 24h, 30m, 7d); default: now only."),
                    wait: bool = JOB_WAIT, as_json: bool = JSON) -> None:
    """Copy the restore points VAULT holds and the other lacks into it (only the chunks
    it lacks move; each is verified), now and on a schedule."""
    c = Client()
    finish_job(c, c.post(f"/vaults/{name}/replicate", {"to": to, "every": every}), wait,
               as_json, f"replicate {name}")


@vault.command("replications")
@api
def vault_replications(as_json: bool = JSON) -> None:
    """Replication schedules with their last run."""
    emit(Client().get("/replications"), as_json,
         lambda d: table(d, ["source", "target", "every_seconds", "last_status",
                             "last_run_at", "last_job"]))
