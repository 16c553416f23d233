"""frostpoint doctor: the troubleshooting guide for a machine, run and fixed."""

from __future__ import annotations

import sys
from typing import Any

import typer

from frostpoint.cli.client import ApiError, Client, console, emit
from frostpoint.cli.common import JSON, api


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
