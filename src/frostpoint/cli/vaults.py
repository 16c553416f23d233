"""frostpoint vault / policy / protect: where backups go, when, and for which machine."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import typer

from frostpoint.cli.client import Client, console, emit, show_error
from frostpoint.cli.common import JSON, MACHINE, api, arg, group, print_job, table
from frostpoint.errors.catalog import error_dict

VAULT = arg("VAULT", "The vault's name.")
JOB_WAIT = typer.Option(True, "--wait/--no-wait", help="Wait for the job with a progress bar.")
vault = group("Vaults.")
vault_key = group("A vault's key: export it for recovery.")
vault.add_typer(vault_key, name="key")
protect = group("Protection of machines.")


@vault.command("create")
@api
def vault_create(name: str = arg("NAME", "The new vault's name."),
                 location: str = typer.Option(
                     None, metavar="LOCATION", help="Folder (local), or azure://CONTAINER[/PREFIX]"
                     "[?connection_string_env=VAR] (azure)."),
                 backend: str = typer.Option("local", metavar="local|azure",
                                             help="Where the vault keeps its data."),
                 block_size: str = typer.Option(
                     None, metavar="SIZE",
                     help="Block (chunk) size, 64K-16M in 4K steps; default 4M."),
                 as_json: bool = JSON) -> None:
    """Create a vault. Azure reads the connection string from the service's env."""
    emit(Client().post("/vaults", {"name": name, "location": location,
                                   "backend": backend, "block_size": block_size}), as_json)


@vault.command("delete")
@api
def vault_delete(name: str = VAULT,
                 yes: bool = typer.Option(False, "--yes",
                                          help="Do not ask; required with --json."),
                 as_json: bool = JSON) -> None:
    """Delete a vault with all its data and its key. No machine may be protected into
    it: `protect stop M` and `protect disable M` first."""
    if not yes:
        if as_json or not sys.stdin.isatty():
            show_error(error_dict("InvalidInput", "not confirmed: add --yes"), as_json)
            raise typer.Exit(1)
        if not typer.confirm(f"delete vault {name}, every restore point in it, and its key?"):
            console.print(f"vault {name} kept")  # the user's answer, not an error
            return
    emit(Client().delete(f"/vaults/{name}"), as_json)


@vault.command("update")
@api
def vault_update(name: str = VAULT,
                 soft_delete: str = typer.Option(
                     None, "--soft-delete", metavar="on|off|always-on",
                     help="Soft delete of stopped items' data; always-on cannot be undone."),
                 soft_delete_days: int = typer.Option(
                     None, "--soft-delete-days", metavar="N",
                     help="Days soft-deleted data stays restorable, 14-180."),
                 as_json: bool = JSON) -> None:
    """Change a vault's soft-delete settings."""
    emit(Client().patch(f"/vaults/{name}", {"soft_delete": soft_delete,
                                            "soft_delete_days": soft_delete_days}), as_json)


@vault.command("immutability")
@api
def vault_immutability(name: str = VAULT,
                       action: str = arg("enable|disable|lock",
                                         "enable, disable (while not locked) or lock "
                                         "(cannot be undone)."),
                       as_json: bool = JSON) -> None:
    """Make a vault immutable: no restore point leaves before its retention ends."""
    emit(Client().post(f"/vaults/{name}/immutability", {"action": action}), as_json)


@vault.command("list")
@api
def vault_list(as_json: bool = JSON) -> None:
    """Vaults with their backend, location and restore point count."""
    emit(Client().get("/vaults"), as_json,
         lambda d: table(d, ["name", "backend", "location", "restore_points",
                             "soft_delete", "immutability"]))


@vault.command("verify")
@api
def vault_verify(name: str = VAULT,
                 sample: float = typer.Option(100.0, metavar="PERCENT",
                                              help="Percent of chunks to re-read."),
                 wait: bool = JOB_WAIT,
                 as_json: bool = JSON) -> None:
    """Re-read and re-hash the vault; name each damaged chunk and what it affects.

    Runs as a job (--no-wait returns it; --json prints it, report in details.report)."""
    c = Client()
    j = c.post(f"/vaults/{name}/verify", params={"sample": sample})

    def human(d: dict[str, Any]) -> None:
        state = "[green]OK[/]" if d["ok"] else "[red]DAMAGED[/]"
        console.print(f"vault {name}: {state}, {d['chunks_checked']} chunks checked "
                      f"({d['sample_percent']}%) in {d['restore_points']} restore points")
        for p in d["problems"]:
            console.print(f"  [red]{p['kind']}[/] chunk {p['chunk']} (pack {p['pack']}): "
                          f"{p['reason']}")
            for a in p["affects"]:
                console.print(f"    restore point {a['restore_point']} "
                              f"({a.get('machine', '?')}) disk {a['disk']} "
                              f"at {a['offset']}: files {a.get('files')}")
    report = _vault_job(c, j, wait, as_json, f"verify {name}", human)
    if report is not None and not report["ok"]:
        raise typer.Exit(1)


@vault.command("gc")
@api
def vault_gc(name: str = VAULT,
             grace_hours: float = typer.Option(24.0, metavar="HOURS",
                                               help="Safety margin before deletion."),
             wait: bool = JOB_WAIT,
             as_json: bool = JSON) -> None:
    """Reclaim packs no restore point uses (mark now, delete after the margin).

    Runs as a job (--no-wait returns it; --json prints it, report in details.report)."""
    c = Client()
    j = c.post(f"/vaults/{name}/gc", params={"grace_hours": grace_hours})
    _vault_job(c, j, wait, as_json, f"gc {name}", lambda d: emit(d, False))


def _vault_job(c: Client, j: dict[str, Any], wait: bool, as_json: bool, label: str,
               human: Any) -> dict[str, Any] | None:
    """Follow a vault verify/GC job, waiting with a progress bar (--no-wait: print the
    job and return); print the final job (--json, its report in details.report) or its
    report. Exits 1 when the job did not complete; returns the report (None: not
    waited for)."""
    if not wait:
        emit(j, as_json, print_job)
        return None
    j = c.wait_job(j["id"], show=not as_json, label=label)
    report: dict[str, Any] | None = j.get("details", {}).get("report")
    if as_json:
        emit(j, True)
    elif report is not None:
        human(report)
    else:
        print_job(j)
    if j["status"] not in ("Completed", "CompletedWithWarnings") or report is None:
        raise typer.Exit(1)
    return report


def _passphrase(env: str | None, twice: bool, as_json: bool) -> str:
    """From the environment variable env (scripts), else asked on the terminal."""
    if env:
        value = os.environ.get(env)
        if not value:
            show_error(error_dict("InvalidInput", f"environment variable {env} with the "
                                  "passphrase is not set"), as_json)
            raise typer.Exit(1)
        return value
    if not sys.stdin.isatty():
        show_error(error_dict("InvalidInput", "no terminal to ask for the passphrase: "
                              "use --passphrase-env VAR"), as_json)
        raise typer.Exit(1)
    value = typer.prompt("passphrase", hide_input=True)
    if twice and typer.prompt("passphrase again", hide_input=True) != value:
        show_error(error_dict("InvalidInput", "the passphrases differ"), as_json)
        raise typer.Exit(1)
    return str(value)


PASSPHRASE_ENV = typer.Option(None, "--passphrase-env", metavar="VAR",
                              help="Read the passphrase from this environment variable.")


@vault_key.command("export")
@api
def vault_key_export(name: str = VAULT,
                     to: Path = typer.Option(..., "--to", metavar="FILE",
                                             help="The key file to write."),
                     passphrase_env: str = PASSPHRASE_ENV, as_json: bool = JSON) -> None:
    """Write the vault's key, sealed under a passphrase, for `vault import` after the
    host is lost. Keep the file and the passphrase apart from the host."""
    if to.exists():
        show_error(error_dict("Conflict", f"{to} exists: choose a new file"), as_json)
        raise typer.Exit(1)
    doc = Client().post(f"/vaults/{name}/key/export",
                        {"passphrase": _passphrase(passphrase_env, True, as_json)})
    fd = os.open(to, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    emit({"vault": name, "key_file": str(to), "vault_id": doc.get("vault_id")}, as_json)


@vault.command("import")
@api
def vault_import(name: str = arg("NAME", "The name the vault gets here."),
                 backend: str = typer.Option(
                     None, metavar="local|azure", help="Default: as in the key file."),
                 location: str = typer.Option(
                     None, metavar="LOCATION",
                     help="Where the vault is now; default: as in the key file."),
                 key: Path = typer.Option(..., "--key", metavar="FILE",
                                          help="A `vault key export` file."),
                 passphrase_env: str = PASSPHRASE_ENV, as_json: bool = JSON) -> None:
    """Register an existing vault from its exported key; its restore points are listed
    again and restore from the vault."""
    try:
        doc = json.loads(key.read_text())
    except (OSError, ValueError) as e:
        show_error(error_dict("InvalidInput", f"cannot read key file {key}: {e}"), as_json)
        raise typer.Exit(1) from None
    if not isinstance(doc, dict):
        show_error(error_dict("InvalidInput", f"{key} is not a key file"), as_json)
        raise typer.Exit(1)
    backend = backend or str(doc.get("backend") or "local")
    location = location or str(doc.get("location") or "")
    emit(Client().post("/vaults/import", {
        "name": name, "backend": backend, "location": location, "key_file": doc,
        "passphrase": _passphrase(passphrase_env, False, as_json)}), as_json)


@protect.command("enable")
@api
def protect_enable(machine: str = MACHINE,
                   vault_: str = typer.Option(..., "--vault", metavar="VAULT",
                                              help="The vault its backups go to."),
                   policy_: str = typer.Option(..., "--policy", metavar="POLICY",
                                               help="When it is backed up, how long kept."),
                   exclude_disk: list[str] = typer.Option(
                       None, "--exclude-disk", metavar="DISK",
                       help="Leave this disk out of backups (repeat for more)."),
                   as_json: bool = JSON) -> None:
    """Protect a machine: scheduled backups into a vault (or move it to another)."""
    emit(Client().post("/protection/enable", {"machine": machine, "vault": vault_,
                                              "policy": policy_,
                                              "exclude_disks": exclude_disk or None}),
         as_json)


@protect.command("stop")
@api
def protect_stop(machine: str = MACHINE,
                 delete_data: bool = typer.Option(
                     False, "--delete-data",
                     help="Soft delete: restorable until the vault's soft-delete period "
                          "ends, then purged."),
                 as_json: bool = JSON) -> None:
    """Stop protection, retaining the data (or soft-deleting it with --delete-data)."""
    emit(Client().post(f"/protection/{machine}/stop",
                       params={"delete_data": "true"} if delete_data else None), as_json)


@protect.command("undelete")
@api
def protect_undelete(machine: str = MACHINE, as_json: bool = JSON) -> None:
    """Bring a SoftDeleted item back to ProtectionStopped (then `protect resume`)."""
    emit(Client().post(f"/protection/{machine}/undelete"), as_json)


@protect.command("disable")
@api
def protect_disable(machine: str = MACHINE, as_json: bool = JSON) -> None:
    """Unprotect a machine whose protection is stopped: its vault can then be deleted.
    Its restore points stay."""
    emit(Client().post(f"/protection/{machine}/disable"), as_json)


@protect.command("resume")
@api
def protect_resume(machine: str = MACHINE, as_json: bool = JSON) -> None:
    """Resume stopped or paused protection."""
    emit(Client().post(f"/protection/{machine}/resume"), as_json)


@protect.command("show")
@api
def protect_show(machine: str = MACHINE, as_json: bool = JSON) -> None:
    """A machine's protection: state, vault, policy, last backup."""
    emit(Client().get(f"/protection/{machine}"), as_json)
