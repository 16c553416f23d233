"""frostpoint status (the one-screen overview) and frostpoint notify (webhook targets)."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from frostpoint.cli.client import Client, console, emit
from frostpoint.cli.common import JSON, api, arg, group, table

notify = group("Notifications: webhooks sent failures, warnings, missed RPOs and damage.")
TARGET = arg("NAME", "The notification target's name.")
COLOR = {"Completed": "green", "CompletedWithWarnings": "yellow", "Failed": "red"}


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{n} B"
        size /= 1024
    return f"{n} B"


def _rpo(m: dict[str, Any]) -> str:
    if m["within_rpo"] is None:
        return "-" if m["rpo_hours"] is None else f"({m['rpo_hours']}h)"
    return f"[green]yes[/] ({m['rpo_hours']}h)" if m["within_rpo"] else \
        f"[red]MISSED[/] ({m['rpo_hours']}h)"


def print_status(d: dict[str, Any]) -> None:
    t = Table(title=f"machines ({d['time']})")
    for col in ("machine", "protection", "last backup", "age", "consistency", "within RPO",
                "agent"):
        t.add_column(col, no_wrap=col == "machine")
    for m in d["machines"]:
        status = m["last_backup_status"]
        t.add_row(m["name"], m["protection_state"],
                  f"[{COLOR.get(status or '', 'white')}]{status or '-'}[/]",
                  _age(m["last_backup_age_s"]) if m["last_backup_at"] else "never",
                  m["consistency"] or "-", _rpo(m),
                  f"{m['agent_status']} ({_age(m['heartbeat_age_s'])} ago)"
                  if m["heartbeat_age_s"] is not None else m["agent_status"])
    console.print(t)
    if d["running"]:
        table([{**j, "progress": f"{j['step'] or ''} {j['percent']}%"
                if j["percent"] is not None else (j["step"] or ""),
                "running": _age(j["duration_s"])} for j in d["running"]],
              ["id", "operation", "machine", "status", "progress", "running"],
              title="running now")
    else:
        console.print("running now: nothing")
    if d["failures"]:
        console.print(f"[bold red]failures of the last 24 h: {len(d['failures'])}[/]")
        for f in d["failures"]:
            e = f["error"]
            console.print(f"  {f['ended_at']} {f['operation']} {f['machine']} job {f['job']}: "
                          f"[red]{e['code']}[/] {e['message']}", soft_wrap=True)
            for a in e.get("actions", [])[:3]:
                console.print(f"      fix: {a}", soft_wrap=True)
    else:
        console.print("failures of the last 24 h: none")
    table([{**v, "stored": _size(v["bytes_stored"])} for v in d["vaults"]],
          ["name", "backend", "restore_points", "chunks", "stored"], title="vaults")


@api
def status(as_json: bool = JSON) -> None:
    """One screen: machines and their RPO, jobs running, the last day's failures, vaults."""
    emit(Client().get("/status"), as_json, print_status)


@notify.command("add")
@api
def notify_add(name: str = arg("NAME", "The new target's name."),
               url: str = typer.Option(..., "--url", metavar="URL",
                                       help="The webhook (http:// or https://) events are "
                                            "POSTed to as JSON."),
               on: str = typer.Option(..., "--on", metavar="EVENTS",
                                      help="Comma-separated: failed, warning, rpo-missed, "
                                           "verify-damage."),
               secret: str = typer.Option(None, "--secret", metavar="S",
                                          help="Sign each event with HMAC-SHA256 under this "
                                               "secret (16-256 printable ASCII characters)."),
               as_json: bool = JSON) -> None:
    """Add a webhook target. The receiver sees machine and vault names."""
    events = [e.strip() for e in on.split(",") if e.strip()]
    emit(Client().post("/notify", {"name": name, "url": url, "events": events,
                                   "secret": secret}), as_json)


@notify.command("list")
@api
def notify_list(as_json: bool = JSON) -> None:
    """Webhook targets, with their queued, delivered and given-up events."""
    emit(Client().get("/notify"), as_json,
         lambda d: table([{**t, "events": ",".join(t["events"])} for t in d],
                         ["name", "url", "events", "signed", "pending", "delivered",
                          "failed", "last_error"]))


@notify.command("remove")
@api
def notify_remove(name: str = TARGET, as_json: bool = JSON) -> None:
    """Remove a target and the events still queued for it."""
    emit(Client().delete(f"/notify/{name}"), as_json)


@notify.command("test")
@api
def notify_test(name: str = TARGET, as_json: bool = JSON) -> None:
    """Send a test event now and show how the target answered."""
    r = Client().post(f"/notify/{name}/test", {})

    def human(d: dict[str, Any]) -> None:
        if d["delivered"]:
            console.print(f"[green]delivered[/] to {name} in {d['duration_s']:.2f} s")
        else:
            console.print(f"[red]not delivered[/] to {name}: {d['error']['message']}")
    emit(r, as_json, human)
    if not r["delivered"]:
        raise typer.Exit(1)
