"""When backups run and how long restore points are kept, as pure functions.

The scheduler and the cleanup (services.py, policies.py) and `policy preview` call
the same functions here, so what a preview predicts is what the service does.

Retention, grandfather-father-son: an RP is kept while any rule keeps it.
- daily N: every restore point is kept N days;
- weekly N on a weekday: the first restore point of that weekday is kept N weeks;
- monthly N on a day (1-28, `last`, `first-WD`, `last-WD`): the first of that day,
  N months;
- yearly N in a month: the monthly one (the monthly day rule) of that month, N years.
"""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov",
          "dec")
EVERY_HOURS = (4, 6, 8, 12)
MAX_INSTANT_RPS = 18


@dataclass(frozen=True)
class Schedule:
    """daily: once at `start` (HH:MM UTC); hourly: every `every_hours` from `start`
    for `window_hours` (the window may run past midnight)."""
    kind: str = "daily"
    start: str = "22:00"
    every_hours: int = 24
    window_hours: int = 24

    def slots(self, day: date) -> list[datetime]:
        """The backup times of the window that starts on day."""
        first = datetime.combine(day, time.fromisoformat(self.start))
        if self.kind == "daily":
            return [first]
        n = -(-self.window_hours // self.every_hours)  # ceil: a slot starts in the window
        return [first + timedelta(hours=k * self.every_hours) for k in range(n)]

    def per_day(self) -> int:
        return len(self.slots(date(2000, 1, 1)))

    def due_slot(self, now: datetime) -> datetime | None:
        """The latest slot at or before now on now's date: a backup is due when its
        item has not had it yet (a slot missed earlier today still runs, late)."""
        today = now.date()
        times = [t for d in (today - timedelta(days=1), today) for t in self.slots(d)
                 if t.date() == today and t <= now]
        return max(times, default=None)

    def peak_instant(self, instant_days: int) -> int:
        """The most instant restore points a machine holds: a day's slots for each
        day kept, and one more, taken just before the oldest expires."""
        return self.per_day() * instant_days + 1


@dataclass(frozen=True)
class Retention:
    daily: int = 30
    weekly: int = 0
    weekly_on: str = "sun"
    monthly: int = 0
    monthly_on: str = "1"
    yearly: int = 0
    yearly_in: str = "jan"


def _add_months(t: datetime, months: int) -> datetime:
    y, m = divmod(t.month - 1 + months, 12)
    year, month = t.year + y, m + 1
    return t.replace(year=year, month=month,
                     day=min(t.day, calendar.monthrange(year, month)[1]))


def monthly_day(d: date, rule: str) -> bool:
    """Whether d is the day a monthly rule names: 1-28, last, first-WD or last-WD."""
    last = calendar.monthrange(d.year, d.month)[1]
    if rule == "last":
        return d.day == last
    which, _, wd = rule.partition("-")
    if wd:
        return WEEKDAYS[d.weekday()] == wd and (
            d.day <= 7 if which == "first" else d.day + 7 > last)
    return d.day == int(rule)


def valid_monthly_on(rule: str) -> bool:
    which, _, wd = rule.partition("-")
    if wd:
        return which in ("first", "last") and wd in WEEKDAYS
    return rule == "last" or (rule.isdigit() and 1 <= int(rule) <= 28)


def keep_until(created: Sequence[datetime], r: Retention) -> list[datetime]:
    """For each creation time, when the vault copy's retention ends."""
    first: dict[date, datetime] = {}
    for t in created:
        if t.date() not in first or t < first[t.date()]:
            first[t.date()] = t
    out = []
    for t in created:
        ends = [t + timedelta(days=r.daily)]
        d = t.date()
        if first[d] == t:
            if r.weekly and WEEKDAYS[d.weekday()] == r.weekly_on:
                ends.append(t + timedelta(weeks=r.weekly))
            if monthly_day(d, r.monthly_on):
                if r.monthly:
                    ends.append(_add_months(t, r.monthly))
                if r.yearly and MONTHS[d.month - 1] == r.yearly_in:
                    ends.append(_add_months(t, 12 * r.yearly))
        out.append(max(ends))
    return out


def preview(schedule: Schedule, instant_days: int, r: Retention, start: datetime,
            days: int) -> list[dict[str, Any]]:
    """Backups at each slot after start, kept as the cleanup keeps them: for each day
    from start's date, the restore points that exist at its end (24:00 UTC)."""
    first_day = start.date()
    made = [t for k in range(-1, days) for t in schedule.slots(first_day + timedelta(days=k))
            if start < t < datetime.combine(first_day + timedelta(days=days), time())]
    vault_until = keep_until(made, r)
    out = []
    for k in range(days):
        day = first_day + timedelta(days=k)
        end = datetime.combine(day + timedelta(days=1), time())
        alive = [(t, v) for t, v in zip(made, vault_until, strict=True)
                 if t < end and max(v, t + timedelta(days=instant_days)) > end]
        out.append({"date": day.isoformat(),
                    "instant": sum(t + timedelta(days=instant_days) > end for t, _ in alive),
                    "restore_points": [t.isoformat(timespec="minutes") + "Z"
                                       for t, _ in alive]})
    return out
