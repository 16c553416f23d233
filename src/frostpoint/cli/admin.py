"""frostpoint server / quickstart / errors, and the administration groups: locks,
resource groups, key vaults, API tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from frostpoint.cli.client import ApiError, Client, console, data_dir, emit, show_error
from frostpoint.cli.common import JSON, api, arg, group, table
from frostpoint.defaults import DEFAULT_LISTEN
from frostpoint.errors.catalog import CATALOG, FrostpointError, error_dict

lock = group("Locks on resource groups.")
keyvault = group("Key vaults: encrypted disks' keys.")
token = group("API tokens and their roles.")
rg = group("Resource groups (restore points' home).")


def server(data_dir_: Path = typer.Option(
               None, "--data-dir", metavar="PATH",
               help="State, pool, vaults; default $FROSTPOINT_DATA_DIR or /var/lib/frostpoint."),
           listen: str = typer.Option(DEFAULT_LISTEN, metavar="HOST:PORT",
                                      help="Management API address."),
           db_url: str = typer.Option(None, metavar="URL",
                                      help="SQLAlchemy URL (default SQLite in the data "
                                           "directory)."),
           metrics_no_auth_loopback: bool = typer.Option(
               False, "--metrics-no-auth-loopback",
               help="Serve /metrics without a token to clients on loopback (a local "
                    "Prometheus); also FROSTPOINT_METRICS_NO_AUTH_LOOPBACK=1.")) -> None:
    """Run the backup service (management API, fabric endpoints, scheduler)."""
    # The service is imported here only: every other command starts without it.
    from frostpoint.service.runtime import Timeouts
    from frostpoint.service.server import serve
    try:
        Timeouts()  # refuse limits out of order before anything starts
    except ValueError as e:
        show_error(error_dict("InvalidInput", str(e)), False)
        raise typer.Exit(2) from None
    try:
        serve(data_dir_ or data_dir(), listen, db_url, metrics_no_auth_loopback)
    except FrostpointError as e:  # a refused start (lock, a damaged DATA/api-token): one error
        show_error(e.to_dict(), False)
        raise typer.Exit(1) from None
    except Exception as e:  # noqa: BLE001 - the start failed (fabric released already)
        show_error(error_dict("ServiceStartFailed", f"{type(e).__name__}: {e}"), False)
        raise typer.Exit(1) from None


def quickstart(down: bool = typer.Option(False, "--down", help="Remove what it made."),
               kind: str = typer.Option("sandbox", metavar="sandbox|qemu",
                                        help="The demo machine's kind: qemu for a VM."),
               as_json: bool = JSON) -> None:
    """Back up a machine, change it, back up again, restore and check."""
    from frostpoint.cli.quickstart import run_down, run_quickstart
    try:
        summary = run_down() if down else run_quickstart(quiet=as_json, kind=kind)
    except ApiError as e:
        show_error(e.error, as_json)
        raise typer.Exit(1) from None
    emit(summary, as_json, lambda d: console.print(d.get("summary", d)))
    if not summary.get("ok", True):
        raise typer.Exit(1)


def errors(code: str = arg("CODE", "One code; default all.", None), as_json: bool = JSON) -> None:
    """The error catalog: every code with its causes and fixes."""
    codes = [code] if code else list(CATALOG)
    if code and code not in CATALOG:
        show_error(error_dict("NotFound", f"no error code {code}"), as_json)
        raise typer.Exit(1)
    data = [error_dict(c) for c in codes]
    if as_json:
        emit(data if not code else data[0], True)
        return
    for e in data:  # on stdout: `frostpoint errors | grep Freeze` finds it
        show_error(e, False, console)
        console.print()


@lock.command("create")
@api
def lock_create(name: str = arg("NAME", "The new lock's name."),
                resource_group: str = typer.Option(..., metavar="RG",
                                                   help="The resource group (rg list)."),
                kind: str = typer.Option("CanNotDelete", metavar="CanNotDelete|ReadOnly",
                                         help="Either stops the cleanup of restore points."),
                as_json: bool = JSON) -> None:
    """Lock a resource group: its restore points are not cleaned up."""
    emit(Client().post("/locks", {"name": name, "resource_group": resource_group,
                                  "kind": kind}), as_json)


@lock.command("list")
@api
def lock_list(as_json: bool = JSON) -> None:
    """Locks and their resource groups."""
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
def lock_delete(name: str = arg("NAME", "The lock."), as_json: bool = JSON) -> None:
    """Delete a lock."""
    emit(Client().delete(f"/locks/{name}"), as_json)


@keyvault.command("create")
@api
def keyvault_create(name: str = arg("NAME", "The new key vault's name."),
                    as_json: bool = JSON) -> None:
    """Create a key vault."""
    emit(Client().post("/keyvaults", {"name": name}), as_json)


@keyvault.command("list")
@api
def keyvault_list(as_json: bool = JSON) -> None:
    """Key vaults, their keys and grants."""
    emit(Client().get("/keyvaults"), as_json, lambda d: table(
        [{**v, "keys": ", ".join(v["keys"]),
          "grants": ", ".join(f"{g['principal']}: {'/'.join(g['permissions'])}"
                              for g in v["grants"])} for v in d], ["name", "keys", "grants"]))


@keyvault.command("show")
@api
def keyvault_show(name: str = arg("NAME", "The key vault."), as_json: bool = JSON) -> None:
    """A key vault: keys and grants."""
    emit(Client().get(f"/keyvaults/{name}"), as_json)


@keyvault.command("key-create")
@api
def keyvault_key_create(name: str = arg("NAME", "The key vault."),
                        key: str = arg("KEY", "The new key's name."), as_json: bool = JSON) -> None:
    """Make a key-encryption key in the key vault (disks use it as NAME/KEY)."""
    emit(Client().post(f"/keyvaults/{name}/keys", {"name": key}), as_json)


@keyvault.command("grant")
@api
def keyvault_grant(name: str = arg("NAME", "The key vault."),
                   principal: str = typer.Option("frostpoint-backup", metavar="P",
                                                 help="Who: the backup service by default."),
                   permissions: str = typer.Option(
                       "get,unwrapKey", metavar="P1,P2",
                       help="Of get, list, wrapKey, unwrapKey (backup needs get,unwrapKey)."),
                   as_json: bool = JSON) -> None:
    """Let a principal use the key vault's keys (backup needs get and unwrapKey)."""
    emit(Client().post(f"/keyvaults/{name}/grants", {
        "principal": principal, "permissions": [p for p in permissions.split(",") if p]}),
        as_json)


@keyvault.command("revoke")
@api
def keyvault_revoke(name: str = arg("NAME", "The key vault."),
                    principal: str = typer.Option("frostpoint-backup", metavar="P",
                                                  help="Whose grant to remove."),
                    as_json: bool = JSON) -> None:
    """Remove a principal's grant on the key vault."""
    emit(Client().delete(f"/keyvaults/{name}/grants/{principal}"), as_json)


# -- API tokens -------------------------------------------------------------------------
@token.command("create")
@api
def token_create(name: str = arg("NAME", "The new token's name."),
                 role: str = typer.Option(..., metavar="reader|operator|admin",
                                          help="What the token may do (security.md)."),
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
def token_revoke(name: str = arg("NAME", "The token."), as_json: bool = JSON) -> None:
    """Revoke a token: its next request gets Unauthorized."""
    emit(Client().delete(f"/tokens/{name}"), as_json)
