"""What every command group shares: the error wrapper, tables, job summaries, options."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer
from rich.table import Table

from frostpoint.cli.client import ApiError, Client, console, emit, show_error

JSON = typer.Option(False, "--json", help="Print JSON.")


def group(help_: str) -> typer.Typer:
    """A command group: with no subcommand it prints its help."""
    return typer.Typer(no_args_is_help=True, help=help_)


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
