"""frostpoint doctor: the troubleshooting guide for a machine, run and fixed."""

from __future__ import annotations

import sys
from typing import Any

import typer
from rich.markup import escape

from frostpoint.cli.client import ApiError, Client, console, emit, show_error
from frostpoint.cli.common import JSON, MACHINE, api
from frostpoint.errors.catalog import error_dict


def _confirm(f: dict[str, Any], yes: bool, as_json: bool) -> bool:
    """A risky fix is applied when confirmed: asked on a terminal, or --yes for the one
    fix named by --check (never --yes for all of them: one was a user's lock)."""
    if yes:
        return True
    if as_json or not sys.stdin.isatty():
        return False
    return typer.confirm(f"{f['check']}: {f['message']}\n  apply: {'; '.join(f['fix'])}?")


@api
def doctor(machine: str = MACHINE,
           fix: bool = typer.Option(False, "--fix", help="Apply safe fixes."),
           check: str = typer.Option(
               None, "--check", metavar="CHECK",
               help="With --fix: apply only this finding's fix (risky ones only this way)."),
           yes: bool = typer.Option(
               False, "--yes", help="With --fix --check: apply that risky fix without asking."),
           as_json: bool = JSON) -> None:
    """Walk the troubleshooting guide for MACHINE: find what will fail, and fix it.

    --fix applies the safe fixes and asks for each risky one (it changes the guest,
    deletes a lock or restore points, or grants key access). Without a terminal, or
    to skip the question, a risky fix is applied one at a time: --fix --check CHECK --yes."""
    c = Client()
    findings = c.get(f"/machines/{machine}/doctor")
    if check and not any(f["check"] == check for f in findings):
        show_error(error_dict("NotFound", f"no finding {check} on {machine}; the doctor's "
                              "checks are: " + ", ".join(f["check"] for f in findings),
                              machine=machine), as_json)
        raise typer.Exit(1)
    applied: list[dict[str, Any]] = []
    if fix:
        for f in findings:
            if check and f["check"] == check and (f["status"] == "pass" or not f["remedy"]):
                applied.append({"check": check, "result": "nothing to apply: "
                                + ("it passes" if f["status"] == "pass" else
                                   "the doctor has no fix for it; see its fix commands")})
            if f["status"] == "pass" or not f["remedy"] or (check and f["check"] != check):
                continue
            if f["risky"] and not _confirm(f, yes and bool(check), as_json):
                applied.append({"check": f["check"], "result": "skipped (risky)",
                                "apply_with": f"frostpoint doctor {machine} --fix --check "
                                              f"{f['check']} --yes"})
                continue
            try:
                applied.append({"check": f["check"], **c.post(
                    f"/machines/{machine}/doctor/fix", {"check": f["check"]})})
            except ApiError as e:
                applied.append({"check": f["check"], "result": "failed", "error": e.error})
        if any(a.get("result") not in ("skipped (risky)", "failed")
               and not str(a.get("result")).startswith("nothing") for a in applied):
            findings = c.get(f"/machines/{machine}/doctor")
    failed = any(f["status"] == "fail" for f in findings)

    def human(data: dict[str, Any]) -> None:
        colors = {"pass": "green", "warn": "yellow", "fail": "red"}
        for f in data["findings"]:
            code = f" [dim]({f['code']})[/]" if f["code"] and f["status"] != "pass" else ""
            console.print(f"[{colors[f['status']]}]{f['status']:>4}[/] {f['check']}: "
                          f"{escape(f['message'])}{code}")
            if f["status"] != "pass":
                for cmd in f["fix"]:  # one line each, never wrapped: it is pasted
                    console.print(f"       fix: [cyan]{escape(cmd)}[/]"
                                  + (" [dim](risky)[/]" if f["risky"] else ""),
                                  soft_wrap=True)
        for a in data["applied"]:
            console.print(f"applied: {a['check']}: {escape(str(a.get('result')))}"
                          + (f"; to apply it: [cyan]{a['apply_with']}[/]"
                             if a.get("apply_with") else ""), soft_wrap=True)
    emit({"machine": machine, "ok": not failed, "findings": findings, "applied": applied},
         as_json, human)
    if failed:
        raise typer.Exit(1)
