"""What every command group shares: the error wrapper, tables, job summaries, options."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import typer
from rich.table import Table

from frostpoint.cli.client import ApiError, Client, console, emit, show_error

JSON = typer.Option(False, "--json", help="Print JSON.")
# Plain help: flags without a <bool> label, values under their METAVAR, nothing boxed
# (tests/test_cli_docs.py checks that every option says what it is for).
HELP_STYLE: dict[str, Any] = {"rich_markup_mode": None}


def group(help_: str) -> typer.Typer:
    """A command group: with no subcommand it prints its help."""
    return typer.Typer(no_args_is_help=True, help=help_, **HELP_STYLE)


def arg(metavar: str, help_: str, default: Any = ...) -> Any:
    """A positional argument, shown as METAVAR with what it is."""
    return typer.Argument(default, metavar=metavar, help=help_, show_default=False)


MACHINE = arg("MACHINE", "The machine's name.")
NAME = arg("NAME", "The name.")


def api(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command; a service error prints its code, causes and fixes, exit 1. The
    fixes get the machine and job the command was given in place of MACHINE and JOB."""
    vm_group = fn.__module__.endswith(".machines")  # `vm show NAME`: NAME is the machine

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ApiError as e:
            machine = kwargs.get("machine") or (kwargs.get("name") if vm_group else None)
            show_error(fill_hints(e.error, machine, kwargs.get("job_id")),
                       kwargs.get("as_json", False))
            raise typer.Exit(1) from None
    return wrapper


def fill_hints(error: dict[str, Any], machine: str | None, job: str | None) -> dict[str, Any]:
    """The error with MACHINE and JOB in its fix commands replaced by real values."""
    def one(a: str) -> str:
        if machine:
            a = re.sub(r"\bMACHINE\b", machine, a)
        if job:
            a = re.sub(r"\bJOB\b", job, a)
        return a
    if not isinstance(error.get("actions"), list):
        return error
    return {**error, "actions": [one(a) if isinstance(a, str) else a
                                 for a in error["actions"]]}


# Columns a user copies into the next command: never cut or wrapped, whatever the
# terminal's width (the other columns wrap instead).
WHOLE = ("id", "job", "name")


def table(rows: list[dict[str, Any]], cols: list[str], title: str = "") -> None:
    t = Table(title=title or None)
    cells = [[str(r.get(c, "")) if r.get(c) is not None else "" for c in cols] for r in rows]
    for i, c in enumerate(cols):
        if c in WHOLE:
            t.add_column(c, no_wrap=True, min_width=max([len(c)] + [len(x[i]) for x in cells]))
        else:
            t.add_column(c)
    for row in cells:
        t.add_row(*row)
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
                  f"[{color}]{j['status']}[/] ({j['duration_s']:.1f} s)", soft_wrap=True)
    details = j.get("details") or {}
    if details.get("restore_point") and j["operation"] == "Backup":
        console.print(f"  restore point: {details['restore_point']}", soft_wrap=True)
    if details.get("source"):  # a restore: where it reads from, and who chose
        chosen = ("picked by --source auto" if details.get("source_requested") == "auto"
                  else "as asked")
        console.print(f"  source: {details['source']} ({chosen})")
    for t in j["subtasks"]:
        console.print(f"  {t['name']}: {t['status']}")
    for w in j.get("warnings", []):
        console.print(f"  [yellow]warning[/] {w.get('code')}: {w.get('message')}")
    if j.get("error"):
        show_error(fill_hints(j["error"], j.get("machine"), j.get("id")), False)
