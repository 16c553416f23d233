"""Policies on the in-memory platform (fabric/memory.py): schedules, GFS retention and
its preview, the 18 instant restore points, and changes reaching existing restore
points. Real service parts, real SQLite and a real local vault; time moves with the
service's clock (service/clock.py). No root."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from test_memory_platform import World, service_on_memory, wait_job

from frostpoint.errors.catalog import FrostpointError
from frostpoint.service import gfs
from frostpoint.service.models import Job, RestorePoint, utcnow


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with service_on_memory(tmp_path) as w:
        yield w


def to_time(w: World, hhmm: str, day_offset: int = 0) -> None:
    """Move the service's clock to HH:MM (+1 s) of today + day_offset, forward only."""
    now = utcnow()
    h, m = (int(x) for x in hhmm.split(":"))
    target = now.replace(hour=h, minute=m, second=1, microsecond=0) + \
        timedelta(days=day_offset)
    assert target > now, (now, target)
    w.clock.advance((target - now).total_seconds())


def kept(w: World, machine: str) -> tuple[list[str], int]:
    """The machine's restore points (backup minute, UTC) and how many are instant."""
    with w.rt.sessions() as s:
        rps = s.query(RestorePoint).filter(RestorePoint.machine_name == machine) \
            .order_by(RestorePoint.created_at).all()
        return ([rp.created_at.isoformat(timespec="minutes") + "Z" for rp in rps],
                sum(bool(rp.snapshot_dir) for rp in rps))


def machine_on(w: World, name: str, policy: str) -> None:
    if not any(v["name"] == "v" for v in w.svc.protection.list_vaults()):
        w.svc.protection.create_vault("v")
    w.svc.machines.create(name, [{"name": "data", "size": "16M"}])
    w.svc.protection.enable(name, "v", policy)
    w.svc.machines.stop(name)  # host-only snapshots: quicker, the same rules


def scheduled_backup(w: World, machine: str) -> None:
    assert w.svc.run_schedule() == [machine]
    with w.rt.sessions() as s:
        job = s.query(Job).filter(Job.machine_name == machine) \
            .order_by(Job.started_at.desc()).first()
        assert job is not None
        job_id = job.id
    assert wait_job(w, job_id)["status"] == "Completed"


def test_gfs_rules_pick_the_days_they_name() -> None:
    assert gfs.monthly_day(date(2026, 12, 7), "first-mon")
    assert not gfs.monthly_day(date(2026, 12, 14), "first-mon")
    assert gfs.monthly_day(date(2026, 12, 25), "last-fri")
    assert gfs.monthly_day(date(2026, 2, 28), "last") and gfs.monthly_day(date(2026, 3, 3), "3")
    r = gfs.Retention(daily=2, weekly=3, weekly_on="sun", monthly=2, monthly_on="1",
                      yearly=1, yearly_in="nov")
    sun, also_sun = datetime(2026, 11, 1, 22), datetime(2026, 11, 1, 23)  # Sunday, Nov 1
    ends = gfs.keep_until([sun, also_sun, datetime(2026, 11, 3, 22)], r)
    assert ends[0] == datetime(2027, 11, 1, 22)  # weekly, monthly and yearly: the longest
    assert ends[1] == also_sun + timedelta(days=2)  # not the first of its day: daily only
    assert ends[2] == datetime(2026, 11, 5, 22)
    assert gfs.Schedule("hourly", "20:00", 6, 12).slots(date(2026, 1, 1)) == [
        datetime(2026, 1, 1, 20), datetime(2026, 1, 2, 2)]  # the window runs past midnight


def test_a_gfs_policy_through_400_days_keeps_exactly_what_the_preview_predicted(
        world: World) -> None:
    w = world
    to_time(w, "00:01", 1)  # a day's start: its 22:00 backup is ahead
    start = utcnow().date()
    w.svc.policies.create("gfs", schedule_time="22:00", instant_rp_days=2,
                          vault_retention_days=7, weekly=4, weekly_on="sun", monthly=3,
                          monthly_on="last-fri", yearly=1,
                          yearly_in=gfs.MONTHS[(start + timedelta(days=60)).month - 1])
    predicted = w.svc.policies.preview("gfs", 400)["days"]
    machine_on(w, "g", "gfs")
    kinds: set[int] = set()
    for day in range(400):
        to_time(w, "22:00", 0)
        scheduled_backup(w, "g")
        to_time(w, "23:59", 0)
        w.svc.cleanup_all()
        points, instant = kept(w, "g")
        want = predicted[day]
        assert want["date"] == (start + timedelta(days=day)).isoformat()
        assert (points, instant) == (want["restore_points"], want["instant"]), want["date"]
        kinds.add(len(points))
        if day < 399:
            to_time(w, "00:01", 1)
    # 7 daily + up to 4 Sundays + 3 last Fridays + one yearly: the rules all played.
    assert max(kinds) >= 13 and min(kinds) == 1
    last = predicted[-1]["restore_points"]
    assert any(p.startswith((start + timedelta(days=60)).isoformat()[:7]) for p in last), \
        "the yearly point of that month was not kept"


def test_an_enhanced_policy_backs_up_several_times_a_day_within_18_instant_points(
        world: World) -> None:
    w = world
    with pytest.raises(FrostpointError) as e:  # 6 a day for 3 days, and one more: 19
        w.svc.policies.create("big", schedule="hourly", every_hours=4, instant_rp_days=3)
    assert e.value.code == "InvalidInput" and "18" in e.value.detail
    assert e.value.details == {"instant_restore_points": 19, "limit": 18}
    with pytest.raises(FrostpointError):  # a standard policy keeps 1-5 days
        w.svc.policies.create("std", instant_rp_days=6)
    p = w.svc.policies.create("enh", schedule="hourly", every_hours=4, schedule_time="00:00",
                              instant_rp_days=2, vault_retention_days=3)
    assert p["instant_restore_points_peak"] == 13
    machine_on(w, "e", "enh")
    to_time(w, "00:00", 1)
    per_day: dict[str, int] = {}
    most = 0
    for _ in range(4 * 6):  # four days of 4-hourly slots
        scheduled_backup(w, "e")
        assert w.svc.run_schedule() == []  # once per slot
        w.svc.cleanup_all()
        points, instant = kept(w, "e")
        most = max(most, instant)
        assert instant <= 18
        today = utcnow().date().isoformat()
        per_day[today] = per_day.get(today, 0) + 1
        w.clock.advance(4 * 3600)
    assert list(per_day.values()) == [6, 6, 6, 6]
    # The peak the policy announced, less one when the oldest expired just in time.
    assert 12 <= most <= p["instant_restore_points_peak"]


def test_a_policy_change_reaches_existing_restore_points_at_the_next_cleanup(
        world: World) -> None:
    w = world
    w.svc.policies.create("chg", schedule_time="22:00", instant_rp_days=1,
                          vault_retention_days=2)
    machine_on(w, "c", "chg")
    to_time(w, "00:01", 1)
    for _ in range(5):
        to_time(w, "22:00", 0)
        scheduled_backup(w, "c")
        to_time(w, "00:01", 1)
    w.svc.cleanup_all()
    assert len(kept(w, "c")[0]) == 2  # daily 2
    longer = w.svc.policies.update("chg", vault_retention_days=10)
    assert "next cleanup" in longer["note"]
    for _ in range(4):
        to_time(w, "22:00", 0)
        scheduled_backup(w, "c")
        to_time(w, "00:01", 1)
        w.svc.cleanup_all()
    assert len(kept(w, "c")[0]) == 6  # the two kept, and four new: none expired
    w.svc.policies.update("chg", vault_retention_days=1)
    assert len(kept(w, "c")[0]) == 6  # not before the cleanup
    w.svc.cleanup_all()
    assert len(kept(w, "c")[0]) == 1  # shorter prunes
    with pytest.raises(FrostpointError) as e:
        w.svc.policies.delete("chg")
    assert e.value.code == "Conflict" and e.value.details["machines"] == ["c"]
    w.svc.policies.create("other")
    w.svc.protection.enable("c", "v", "other")
    assert w.svc.policies.delete("chg") == {"deleted": "chg"}


def test_an_upgraded_database_does_not_repeat_the_backup_it_already_ran_today(
        tmp_path: Path) -> None:
    """Migration 0004 on a 0003 database: a machine backed up today by the old daily
    schedule (its last scheduled date) is not backed up again after the upgrade."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from frostpoint.service.db import MIGRATIONS, make_engine
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    today = datetime(2026, 12, 4, 23, 0)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003")
        conn.execute(text("INSERT INTO vaults VALUES ('v1', 'v', 'local', '/x', :t)"),
                     {"t": today})
        conn.execute(text("INSERT INTO policies VALUES ('p1', 'p', '22:00', 2, 30, :t)"),
                     {"t": today})
        conn.execute(text(
            "INSERT INTO machines (id, name, region, slot, address, provisioning_state, "
            "power_state, agent_token_hash, agent_installed, agent_status, agent_info, "
            "goal_state_incarnation, created_at) VALUES ('m1', 'm', 'local', 1, '10.0.0.2', "
            "'Succeeded', 'Stopped', 'x', 1, 'Unknown', '{}', 1, :t)"), {"t": today})
        conn.execute(text(
            "INSERT INTO protected_items (id, machine_id, vault_id, policy_id, "
            "protection_state, last_scheduled_date, created_at) VALUES ('i1', 'm1', 'v1', "
            "'p1', 'Protected', '2026-12-04', :t)"), {"t": today})
        command.upgrade(cfg, "head")
        slot, = conn.execute(text("SELECT last_scheduled_slot FROM protected_items")).one()
        policy = conn.execute(text("SELECT schedule_kind, every_hours, weekly_keep, "
                                   "vault_retention_days FROM policies")).one()
    due = gfs.Schedule("daily", "22:00").due_slot(today)
    assert due is not None and slot == due.isoformat(timespec="minutes")
    assert tuple(policy) == ("daily", 24, 0, 30)  # an old policy keeps its meaning
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0003")
        assert conn.execute(text("SELECT last_scheduled_date FROM protected_items")).one() \
            == ("2026-12-04",)
    engine.dispose()


def test_a_soft_deleted_machine_once_deleted_keeps_its_vault_copy_until_the_purge(
        world: World) -> None:
    w = world
    w.svc.policies.create("one", instant_rp_days=1, vault_retention_days=1)
    machine_on(w, "s", "one")
    rp = wait_job(w, w.svc.backups.start("s")["id"])["details"]["restore_point"]
    pinned = wait_job(w, w.svc.backups.start("s", retain_days=20)["id"])
    assert w.svc.softdelete.stop("s", delete_data=True)["protection_state"] == "SoftDeleted"
    w.svc.delete_machine("s")

    def ids() -> set[str]:
        with w.rt.sessions() as s:
            return {r.id for r in s.query(RestorePoint)}
    w.clock.advance(13 * 86400)  # past the one day, inside the 14
    w.svc.cleanup_all()
    assert rp in ids()
    w.clock.advance(2 * 86400)
    w.svc.cleanup_all()
    # The purge time was the machine's last hold on it; `--retain-days 20` still keeps
    # the other.
    assert ids() == {pinned["details"]["restore_point"]}
