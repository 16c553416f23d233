"""frostpoint: the command line. Talks to the service over REST; --json everywhere."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from frostpoint.cli.client import ApiError, Client, console, data_dir, emit, show_error
from frostpoint.errors.catalog import CATALOG, FrostpointError, error_dict
from frostpoint.service.runtime import DEFAULT_LISTEN, Timeouts

app = typer.Typer(no_args_is_help=True, help="Frostpoint: backup for virtual machines.")
vm = typer.Typer(no_args_is_help=True, help="Sandbox machines.")
ext = typer.Typer(no_args_is_help=True, help="Extensions on a machine.")
vault = typer.Typer(no_args_is_help=True, help="Vaults.")
policy = typer.Typer(no_args_is_help=True, help="Backup policies.")
protect = typer.Typer(no_args_is_help=True, help="Protection of machines.")
backup = typer.Typer(no_args_is_help=True, help="Backups.")
job = typer.Typer(no_args_is_help=True, help="Jobs.")
rp = typer.Typer(no_args_is_help=True, help="Restore points.")
restore = typer.Typer(no_args_is_help=True, help="Restores.")
lock = typer.Typer(no_args_is_help=True, help="Locks on resource groups.")
keyvault = typer.Typer(no_args_is_help=True, help="Key vaults: encrypted disks' keys.")
token = typer.Typer(no_args_is_help=True, help="API tokens and their roles.")
rg = typer.Typer(no_args_is_help=True, help="Resource groups (restore points' home).")
for sub, name in ((vm, "vm"), (vault, "vault"), (policy, "policy"), (protect, "protect"),
                  (backup, "backup"), (job, "job"), (rp, "rp"), (restore, "restore"),
                  (lock, "lock"), (keyvault, "keyvault"), (token, "token"), (rg, "rg")):
    app.add_typer(sub, name=name)
agent = typer.Typer(no_args_is_help=True, help="The guest agent of a machine.")
disk_cmd = typer.Typer(no_args_is_help=True, help="Disks of a machine.")
vm.add_typer(disk_cmd, name="disk")
vm.add_typer(ext, name="extension")
vm.add_typer(agent, name="agent")
vault_key = typer.Typer(no_args_is_help=True, help="A vault's key: export it for recovery.")
vault.add_typer(vault_key, name="key")

JSON = typer.Option(False, "--json", help="Print JSON.")


def api(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command; a service error prints its code, causes and fixes, exit 1."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ApiError as e:
            show_error(e.error, kwargs.get("as_json", False))
            raise typer.Exit(1) from None
    return wrapper


def table(rows: list[dict[str, Any]], cols: list[str], title: str = "") -> None:
    t = Table(title=title or None)
    for c in cols:
        t.add_column(c)
    for r in rows:
        t.add_row(*[str(r.get(c, "")) if r.get(c) is not None else "" for c in cols])
    console.print(t)


def finish_job(c: Client, j: dict[str, Any], wait: bool, as_json: bool, label: str) -> None:
    if wait:
        j = c.wait_job(j["id"], show=not as_json, label=label)
    emit(j, as_json, lambda d: print_job(d))
    if j["status"] == "Failed":
        raise typer.Exit(1)


def print_job(j: dict[str, Any]) -> None:
    color = {"Completed": "green", "CompletedWithWarnings": "yellow", "Failed": "red"}.get(
        j["status"], "white")
    console.print(f"job [bold]{j['id']}[/] {j['operation']} {j['machine']}: "
                  f"[{color}]{j['status']}[/] ({j['duration_s']:.1f} s)")
    for t in j["subtasks"]:
        console.print(f"  {t['name']}: {t['status']}")
    for w in j.get("warnings", []):
        console.print(f"  [yellow]warning[/] {w.get('code')}: {w.get('message')}")
    if j.get("error"):
        show_error(j["error"], False)


# -- server, quickstart, errors ------------------------------------------------------
@app.command()
def server(data_dir_: Path = typer.Option(None, "--data-dir", help="State, pool, vaults."),
           listen: str = typer.Option(DEFAULT_LISTEN, help="Management API address."),
           db_url: str = typer.Option(None, help="SQLAlchemy URL (default SQLite).")) -> None:
    """Run the backup service (management API, fabric endpoints, scheduler)."""
    from frostpoint.service.server import serve
    try:
        Timeouts()  # refuse limits out of order before anything starts
    except ValueError as e:
        show_error(error_dict("InvalidInput", str(e)), False)
        raise typer.Exit(2) from None
    try:
        serve(data_dir_ or data_dir(), listen, db_url)
    except FrostpointError as e:  # a refused start (lock, a damaged DATA/api-token): one error
        show_error(e.to_dict(), False)
        raise typer.Exit(1) from None
    except Exception as e:  # noqa: BLE001 - the start failed (fabric released already)
        show_error(error_dict("ServiceStartFailed", f"{type(e).__name__}: {e}"), False)
        raise typer.Exit(1) from None


@app.command()
def quickstart(down: bool = typer.Option(False, "--down", help="Remove what it made."),
               as_json: bool = JSON) -> None:
    """Back up a sandbox machine, change it, back up again, restore and check."""
    from frostpoint.cli.quickstart import run_down, run_quickstart
    try:
        summary = run_down() if down else run_quickstart(quiet=as_json)
    except ApiError as e:
        show_error(e.error, as_json)
        raise typer.Exit(1) from None
    emit(summary, as_json, lambda d: console.print(d.get("summary", d)))
    if not summary.get("ok", True):
        raise typer.Exit(1)


@app.command()
def errors(code: str = typer.Argument(None), as_json: bool = JSON) -> None:
    """The error catalog: every code with its causes and fixes."""
    codes = [code] if code else list(CATALOG)
    if code and code not in CATALOG:
        show_error(error_dict("NotFound", f"no error code {code}"), as_json)
        raise typer.Exit(1)
    data = [error_dict(c) for c in codes]
    if as_json:
        emit(data if not code else data[0], True)
        return
    for e in data:
        show_error(e, False)
        console.print()


# -- machines ------------------------------------------------------------------------
@vm.command("create")
@api
def vm_create(name: str,
              disk: list[str] = typer.Option(["data:256M:ext4"], help="NAME:SIZE[:ext4|xfs]"),
              encryption_key: str = typer.Option(
                  None, help="KEYVAULT/KEY: encrypt every disk (ext4) with a data key "
                             "wrapped by this key."),
              no_agent: bool = typer.Option(False, "--no-agent"),
              agent_version: str = typer.Option(
                  None, help="Make it from an image with this (older) agent release."),
              as_json: bool = JSON) -> None:
    """Create and start a sandbox machine."""
    disks = []
    for d in disk:
        parts = d.split(":")
        disks.append({"name": parts[0], "size": parts[1] if len(parts) > 1 else "256M",
                      "filesystem": parts[2] if len(parts) > 2 else "ext4",
                      "encryption_key": encryption_key})
    emit(Client().post("/machines", {"name": name, "disks": disks, "agent": not no_agent,
                                     "agent_version": agent_version}), as_json)


@vm.command("list")
@api
def vm_list(as_json: bool = JSON) -> None:
    rows = Client().get("/machines")
    emit(rows, as_json, lambda d: table([{**m, "agent": m["agent"]["status"],
                                          "disks": len(m["disks"])} for m in d],
                                        ["name", "provisioning_state", "power_state",
                                         "agent", "address", "disks"]))


@vm.command("show")
@api
def vm_show(name: str, as_json: bool = JSON) -> None:
    emit(Client().get(f"/machines/{name}"), as_json)


@vm.command("start")
@api
def vm_start(name: str, as_json: bool = JSON) -> None:
    emit(Client().post(f"/machines/{name}/start"), as_json)


@vm.command("stop")
@api
def vm_stop(name: str, as_json: bool = JSON) -> None:
    """Power off: the guest's processes end and its disks are unmounted."""
    emit(Client().post(f"/machines/{name}/stop"), as_json)


@vm.command("deallocate")
@api
def vm_deallocate(name: str, as_json: bool = JSON) -> None:
    emit(Client().post(f"/machines/{name}/deallocate"), as_json)


@vm.command("delete")
@api
def vm_delete(name: str, as_json: bool = JSON) -> None:
    emit(Client().delete(f"/machines/{name}"), as_json)


@vm.command("exec", context_settings={"allow_extra_args": True,
                                      "ignore_unknown_options": True})
@api
def vm_exec(ctx: typer.Context, name: str, as_json: bool = JSON) -> None:
    """Run a command inside the machine: frostpoint vm exec NAME -- CMD ARGS..."""
    argv = [a for a in ctx.args if a != "--"] if ctx.args[:1] == ["--"] else ctx.args
    r = Client().post(f"/machines/{name}/exec", {"argv": argv})
    if as_json:
        emit(r, True)
    else:
        sys.stdout.write(r["stdout"])
        sys.stderr.write(r["stderr"])
    raise typer.Exit(r["returncode"])


@ext.command("list")
@api
def ext_list(machine: str, as_json: bool = JSON) -> None:
    rows = Client().get(f"/machines/{machine}")["extensions"]
    emit(rows, as_json, lambda d: table(d, ["name", "version", "provisioning_state",
                                            "sequence"]))


@ext.command("set")
@api
def ext_set(machine: str, name: str,
            command: str = typer.Option(None, help="commandToExecute (CustomScript)."),
            as_json: bool = JSON) -> None:
    """Add or update an extension, e.g. Frostpoint.CustomScript --command '...'."""
    settings = {"commandToExecute": command} if command else {}
    emit(Client().call("PUT", f"/machines/{machine}/extensions/{name}",
                       json={"settings": settings}), as_json)


@ext.command("remove")
@api
def ext_remove(machine: str, name: str, as_json: bool = JSON) -> None:
    emit(Client().delete(f"/machines/{machine}/extensions/{name}"), as_json)


@disk_cmd.command("delete")
@api
def disk_delete(machine: str, disk: str, as_json: bool = JSON) -> None:
    """Detach a disk from MACHINE and delete it."""
    emit(Client().delete(f"/machines/{machine}/disks/{disk}"), as_json)


@agent.command("restart")
@api
def agent_restart(machine: str, as_json: bool = JSON) -> None:
    """Restart the guest agent (and its supervisor if it gave up)."""
    emit(Client().post(f"/machines/{machine}/agent/restart"), as_json)


@agent.command("install")
@api
def agent_install(machine: str, as_json: bool = JSON) -> None:
    """Install and start the guest agent in a machine made without it."""
    emit(Client().post(f"/machines/{machine}/agent/install"), as_json)


@app.command()
@api
def doctor(machine: str, fix: bool = typer.Option(False, "--fix", help="Apply safe fixes."),
           yes: bool = typer.Option(False, "--yes", help="Apply risky fixes without asking."),
           as_json: bool = JSON) -> None:
    """Walk the troubleshooting guide for MACHINE: find what will fail, and fix it."""
    c = Client()
    findings = c.get(f"/machines/{machine}/doctor")
    applied: list[dict[str, Any]] = []
    if fix:
        for f in findings:
            if f["status"] == "pass" or not f["remedy"]:
                continue
            if f["risky"] and not yes and (as_json or not sys.stdin.isatty() or not typer.confirm(
                    f"{f['check']}: {f['message']}\n  apply: {'; '.join(f['fix'])}?")):
                applied.append({"check": f["check"], "result": "skipped (risky)"})
                continue
            try:
                applied.append({"check": f["check"], **c.post(
                    f"/machines/{machine}/doctor/fix", {"check": f["check"]})})
            except ApiError as e:
                applied.append({"check": f["check"], "result": "failed", "error": e.error})
        if applied:
            findings = c.get(f"/machines/{machine}/doctor")
    failed = any(f["status"] == "fail" for f in findings)

    def human(data: dict[str, Any]) -> None:
        colors = {"pass": "green", "warn": "yellow", "fail": "red"}
        for f in data["findings"]:
            code = f" [dim]({f['code']})[/]" if f["code"] and f["status"] != "pass" else ""
            console.print(f"[{colors[f['status']]}]{f['status']:>4}[/] {f['check']}: "
                          f"{f['message']}{code}")
            if f["status"] != "pass":
                for cmd in f["fix"]:
                    console.print(f"       fix: [cyan]{cmd}[/]"
                                  + (" [dim](risky)[/]" if f["risky"] else ""))
        for a in data["applied"]:
            console.print(f"applied: {a['check']}: {a.get('result')}")
    emit({"machine": machine, "ok": not failed, "findings": findings, "applied": applied},
         as_json, human)
    if failed:
        raise typer.Exit(1)


# -- vaults, policies, protection ------------------------------------------------------
@vault.command("create")
@api
def vault_create(name: str,
                 location: str = typer.Option(
                     None, help="Folder (local), or azure://CONTAINER[/PREFIX]"
                     "[?connection_string_env=VAR] (azure)."),
                 backend: str = typer.Option("local", help="local | azure"),
                 block_size: str = typer.Option(
                     None, help="Block (chunk) size, 64K-16M in 4K steps; default 4M."),
                 as_json: bool = JSON) -> None:
    """Create a vault. Azure reads the connection string from the service's env."""
    emit(Client().post("/vaults", {"name": name, "location": location,
                                   "backend": backend, "block_size": block_size}), as_json)


@vault.command("delete")
@api
def vault_delete(name: str, yes: bool = typer.Option(False, "--yes",
                                                     help="Do not ask; required with --json."),
                 as_json: bool = JSON) -> None:
    """Delete a vault with all its data and its key (no machine may be protected into it)."""
    if not yes and (as_json or not sys.stdin.isatty() or not typer.confirm(
            f"delete vault {name}, every restore point in it, and its key?")):
        show_error(error_dict("InvalidInput", "not confirmed: add --yes"), as_json)
        raise typer.Exit(1)
    emit(Client().delete(f"/vaults/{name}"), as_json)


@vault.command("list")
@api
def vault_list(as_json: bool = JSON) -> None:
    emit(Client().get("/vaults"), as_json,
         lambda d: table(d, ["name", "backend", "location", "restore_points"]))


@vault.command("verify")
@api
def vault_verify(name: str,
                 sample: float = typer.Option(100.0, help="Percent of chunks to re-read."),
                 wait: bool = typer.Option(True, "--wait/--no-wait"),
                 as_json: bool = JSON) -> None:
    """Re-read and re-hash the vault; name each damaged chunk and what it affects.

    A job: waits for it with a progress bar (--no-wait: print the job and return);
    --json prints the final job, its report in details.report."""
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
def vault_gc(name: str,
             grace_hours: float = typer.Option(24.0, help="Safety margin before deletion."),
             wait: bool = typer.Option(True, "--wait/--no-wait"),
             as_json: bool = JSON) -> None:
    """Reclaim packs no restore point uses (mark now, delete after the margin).

    A job: waits for it with a progress bar (--no-wait: print the job and return);
    --json prints the final job, its report in details.report."""
    c = Client()
    j = c.post(f"/vaults/{name}/gc", params={"grace_hours": grace_hours})
    _vault_job(c, j, wait, as_json, f"gc {name}", lambda d: emit(d, False))


def _vault_job(c: Client, j: dict[str, Any], wait: bool, as_json: bool, label: str,
               human: Any) -> dict[str, Any] | None:
    """Follow a vault verify/GC job; print the final job (--json) or its report. Exits
    1 when the job did not complete; returns the report (None: not waited for)."""
    if not wait:
        emit(j, as_json, print_job)
        return None
    j = c.wait_job(j["id"], show=not as_json, label=label)
    report = j.get("details", {}).get("report")
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


PASSPHRASE_ENV = typer.Option(None, "--passphrase-env",
                              help="Read the passphrase from this environment variable.")


@vault_key.command("export")
@api
def vault_key_export(name: str,
                     to: Path = typer.Option(..., "--to", help="The key file to write."),
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
def vault_import(name: str,
                 backend: str = typer.Option(
                     None, help="local | azure; default: as in the key file."),
                 location: str = typer.Option(
                     None, help="Where the vault is now; default: as in the key file."),
                 key: Path = typer.Option(..., "--key", help="A `vault key export` file."),
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


@policy.command("create")
@api
def policy_create(name: str, time: str = typer.Option("22:00", help="Daily, HH:MM UTC."),
                  instant_days: int = typer.Option(2, help="Instant restore points, 1-5 days."),
                  retention_days: int = typer.Option(30, help="Vault retention, days."),
                  as_json: bool = JSON) -> None:
    emit(Client().post("/policies", {"name": name, "schedule_time": time,
                                     "instant_rp_days": instant_days,
                                     "vault_retention_days": retention_days}), as_json)


@policy.command("list")
@api
def policy_list(as_json: bool = JSON) -> None:
    emit(Client().get("/policies"), as_json,
         lambda d: table(d, ["name", "schedule_time", "instant_rp_days",
                             "vault_retention_days"]))


@protect.command("enable")
@api
def protect_enable(machine: str, vault_: str = typer.Option(..., "--vault"),
                   policy_: str = typer.Option(..., "--policy"), as_json: bool = JSON) -> None:
    emit(Client().post("/protection/enable", {"machine": machine, "vault": vault_,
                                              "policy": policy_}), as_json)


@protect.command("stop")
@api
def protect_stop(machine: str, as_json: bool = JSON) -> None:
    """Stop protection, retaining the data."""
    emit(Client().post(f"/protection/{machine}/stop"), as_json)


@protect.command("resume")
@api
def protect_resume(machine: str, as_json: bool = JSON) -> None:
    emit(Client().post(f"/protection/{machine}/resume"), as_json)


@protect.command("show")
@api
def protect_show(machine: str, as_json: bool = JSON) -> None:
    emit(Client().get(f"/protection/{machine}"), as_json)


# -- backups, jobs, restore points ----------------------------------------------------
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


# -- locks ------------------------------------------------------------------------------
@lock.command("create")
@api
def lock_create(name: str, resource_group: str = typer.Option(...),
                kind: str = typer.Option("CanNotDelete"), as_json: bool = JSON) -> None:
    emit(Client().post("/locks", {"name": name, "resource_group": resource_group,
                                  "kind": kind}), as_json)


@lock.command("list")
@api
def lock_list(as_json: bool = JSON) -> None:
    emit(Client().get("/locks"), as_json,
         lambda d: table(d, ["name", "kind", "resource_group"]))


@rg.command("list")
@api
def rg_list(as_json: bool = JSON) -> None:
    """Resource groups, with their locks and the machines whose restore points live there."""
    emit(Client().get("/resource-groups"), as_json,
         lambda d: table([{**g, "locks": ", ".join(g["locks"]) or "-",
                           "machines": ", ".join(g.get("machines", [])) or "-"} for g in d],
                         ["name", "region", "locks", "machines"]))


@lock.command("delete")
@api
def lock_delete(name: str, as_json: bool = JSON) -> None:
    emit(Client().delete(f"/locks/{name}"), as_json)


@keyvault.command("create")
@api
def keyvault_create(name: str, as_json: bool = JSON) -> None:
    emit(Client().post("/keyvaults", {"name": name}), as_json)


@keyvault.command("list")
@api
def keyvault_list(as_json: bool = JSON) -> None:
    emit(Client().get("/keyvaults"), as_json, lambda d: table(
        [{**v, "keys": ", ".join(v["keys"]),
          "grants": ", ".join(f"{g['principal']}: {'/'.join(g['permissions'])}"
                              for g in v["grants"])} for v in d], ["name", "keys", "grants"]))


@keyvault.command("show")
@api
def keyvault_show(name: str, as_json: bool = JSON) -> None:
    emit(Client().get(f"/keyvaults/{name}"), as_json)


@keyvault.command("key-create")
@api
def keyvault_key_create(name: str, key: str, as_json: bool = JSON) -> None:
    """Make a key-encryption key in the key vault (disks use it as NAME/KEY)."""
    emit(Client().post(f"/keyvaults/{name}/keys", {"name": key}), as_json)


@keyvault.command("grant")
@api
def keyvault_grant(name: str,
                   principal: str = typer.Option("frostpoint-backup",
                                                 help="Who: the backup service by default."),
                   permissions: str = typer.Option("get,unwrapKey"),
                   as_json: bool = JSON) -> None:
    """Let a principal use the key vault's keys (backup needs get and unwrapKey)."""
    emit(Client().post(f"/keyvaults/{name}/grants", {
        "principal": principal, "permissions": [p for p in permissions.split(",") if p]}),
        as_json)


@keyvault.command("revoke")
@api
def keyvault_revoke(name: str, principal: str = typer.Option("frostpoint-backup"),
                    as_json: bool = JSON) -> None:
    emit(Client().delete(f"/keyvaults/{name}/grants/{principal}"), as_json)


# -- API tokens -------------------------------------------------------------------------
@token.command("create")
@api
def token_create(name: str,
                 role: str = typer.Option(..., help="reader | operator | admin"),
                 as_json: bool = JSON) -> None:
    """Make an API token with a role; it is printed once (only its hash is kept)."""
    def human(d: dict[str, Any]) -> None:
        console.print(f"token [bold]{d['name']}[/] ({d['role']}); shown once, keep it:")
        print(d["token"])
    emit(Client().post("/tokens", {"name": name, "role": role}), as_json, human)


@token.command("list")
@api
def token_list(as_json: bool = JSON) -> None:
    """Tokens by name and role (never the tokens themselves)."""
    emit(Client().get("/tokens"), as_json, lambda d: table(
        d, ["name", "role", "created_at", "file"]))


@token.command("revoke")
@api
def token_revoke(name: str, as_json: bool = JSON) -> None:
    """Revoke a token: its next request gets Unauthorized."""
    emit(Client().delete(f"/tokens/{name}"), as_json)


if __name__ == "__main__":
    app()
