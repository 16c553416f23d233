"""frostpoint policy: when machines are backed up and how long restore points are kept."""

from __future__ import annotations

from typing import Any

import typer

from frostpoint.cli.client import Client, console, emit
from frostpoint.cli.common import JSON, api, arg, group, table

policy = group("Backup policies: schedules and retention (standard, enhanced, GFS).")
POLICY = arg("NAME", "The policy's name.")


def _rules(schedule: str | None, every: str | None, time: str | None,
           window_hours: int | None, instant_days: int | None, daily: int | None,
           weekly: int | None, weekly_on: str | None, monthly: int | None,
           monthly_on: str | None, yearly: int | None, yearly_in: str | None) -> dict[str, Any]:
    """The request body (service/requests.py PolicyUpdateIn); None: default/unchanged."""
    every_hours = None
    if every is not None:
        text = every.lower().removesuffix("h")
        every_hours = int(text) if text.isdigit() else -1  # the service says what is valid
    return {"schedule": schedule, "every_hours": every_hours, "schedule_time": time,
            "window_hours": window_hours, "instant_rp_days": instant_days,
            "vault_retention_days": daily, "weekly": weekly, "weekly_on": weekly_on,
            "monthly": monthly, "monthly_on": monthly_on, "yearly": yearly,
            "yearly_in": yearly_in}


SCHEDULE = typer.Option(None, "--schedule", metavar="daily|hourly",
                        help="daily (standard) or hourly (enhanced). Default daily.")
EVERY = typer.Option(None, "--every", metavar="4h|6h|8h|12h",
                     help="Hourly: the interval. Default 4h.")
TIME = typer.Option(None, "--time", metavar="HH:MM",
                    help="UTC: the daily time, or the hourly window's start. Default 22:00.")
WINDOW = typer.Option(None, "--window-hours", metavar="N",
                      help="Hourly: the window's length from --time. Default 24.")
INSTANT = typer.Option(None, "--instant-days", metavar="N",
                       help="Days instant restore points are kept: 1-5 daily, 1-30 hourly.")
DAILY = typer.Option(None, "--daily", metavar="N",
                     help="Keep every restore point N days in the vault. Default 30.")
WEEKLY = typer.Option(None, "--weekly", metavar="N",
                      help="Keep the first restore point of --weekly-on N weeks.")
WEEKLY_ON = typer.Option(None, "--weekly-on", metavar="mon..sun",
                         help="The weekly rule's weekday. Default sun.")
MONTHLY = typer.Option(None, "--monthly", metavar="N",
                       help="Keep the first restore point of --monthly-on N months.")
MONTHLY_ON = typer.Option(None, "--monthly-on", metavar="DAY",
                          help="1-28, last, first-WD or last-WD (e.g. first-sun). Default 1.")
YEARLY = typer.Option(None, "--yearly", metavar="N",
                      help="Keep the monthly restore point of --yearly-in N years.")
YEARLY_IN = typer.Option(None, "--yearly-in", metavar="jan..dec",
                         help="The yearly rule's month. Default jan.")
RPO = typer.Option(None, "--rpo-hours", metavar="N",
                   help="Raise rpo-missed when a machine has no restore point this many "
                        "hours old (1-8760; 0 clears it).")


@policy.command("create")
@api
def policy_create(name: str = arg("NAME", "The new policy's name."),
                  schedule: str = SCHEDULE, every: str = EVERY, time: str = TIME,
                  window_hours: int = WINDOW, instant_days: int = INSTANT,
                  daily: int = DAILY, weekly: int = WEEKLY, weekly_on: str = WEEKLY_ON,
                  monthly: int = MONTHLY, monthly_on: str = MONTHLY_ON,
                  yearly: int = YEARLY, yearly_in: str = YEARLY_IN,
                  rpo_hours: int = RPO, as_json: bool = JSON) -> None:
    """Create a policy. Refused when it would keep over 18 instant restore points."""
    body = _rules(schedule, every, time, window_hours, instant_days, daily, weekly,
                  weekly_on, monthly, monthly_on, yearly, yearly_in)
    emit(Client().post("/policies", {"name": name, **body, "rpo_hours": rpo_hours}),
         as_json)


@policy.command("update")
@api
def policy_update(name: str = POLICY,
                  schedule: str = SCHEDULE, every: str = EVERY, time: str = TIME,
                  window_hours: int = WINDOW, instant_days: int = INSTANT,
                  daily: int = DAILY, weekly: int = WEEKLY, weekly_on: str = WEEKLY_ON,
                  monthly: int = MONTHLY, monthly_on: str = MONTHLY_ON,
                  yearly: int = YEARLY, yearly_in: str = YEARLY_IN,
                  rpo_hours: int = RPO, as_json: bool = JSON) -> None:
    """Change a policy's rules; existing restore points follow at the next cleanup."""
    body = _rules(schedule, every, time, window_hours, instant_days, daily, weekly,
                  weekly_on, monthly, monthly_on, yearly, yearly_in)
    emit(Client().patch(f"/policies/{name}", {**body, "rpo_hours": rpo_hours}), as_json)


@policy.command("show")
@api
def policy_show(name: str = POLICY, as_json: bool = JSON) -> None:
    """A policy's rules and the machines that use it."""
    emit(Client().get(f"/policies/{name}"), as_json)


@policy.command("list")
@api
def policy_list(as_json: bool = JSON) -> None:
    """Backup policies."""
    emit(Client().get("/policies"), as_json,
         lambda d: table(d, ["name", "schedule", "schedule_time", "every_hours",
                             "instant_rp_days", "vault_retention_days", "weekly",
                             "monthly", "yearly", "rpo_hours"]))


@policy.command("delete")
@api
def policy_delete(name: str = POLICY, as_json: bool = JSON) -> None:
    """Delete a policy no machine uses."""
    emit(Client().delete(f"/policies/{name}"), as_json)


@policy.command("preview")
@api
def policy_preview(name: str = POLICY,
                   days: int = typer.Option(400, "--days", metavar="N",
                                            help="How many days from today, 1-3660."),
                   as_json: bool = JSON) -> None:
    """Which restore points would exist at the end of each day, from now on."""
    doc = Client().get(f"/policies/{name}/preview", params={"days": days})

    def human(d: dict[str, Any]) -> None:
        t = [{"date": x["date"], "restore_points": len(x["restore_points"]),
              "instant": x["instant"],
              "oldest": x["restore_points"][0] if x["restore_points"] else ""}
             for x in d["days"]]
        table(t, ["date", "restore_points", "instant", "oldest"],
              title=f"policy {name} from {d['start']}")
        console.print("restore points: those that exist at 24:00 UTC of the day; "
                      "--json lists each one")
    emit(doc, as_json, human)
