"""The service's rules on the in-memory platform (fabric/memory.py): no root, seconds.

The service runs as it does in the server (Runtime, Services, real SQLite, a real
local vault); only the machines are in memory, with an in-process guest that answers
the goal state as the agent and snapshot extension do. Time moves with the service's
clock (service/clock.py), not by editing the database.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from frostpoint.errors.catalog import FrostpointError
from frostpoint.fabric.memory import MemoryPlatform, PlatformRefused
from frostpoint.fabric.platform import DiskSpec, MachinePlatform, MachineSpec
from frostpoint.protocol import GUEST_ETC
from frostpoint.service import clock
from frostpoint.service.jobs import describe_job
from frostpoint.service.models import Job, RestorePoint
from frostpoint.service.runtime import Runtime
from frostpoint.service.services import Services

MiB = 1 << 20


@dataclass
class World:
    rt: Runtime
    svc: Services
    platform: MemoryPlatform
    clock: clock.Clock


@contextlib.contextmanager
def service_on_memory(tmp_path: Path) -> Iterator[World]:
    """The service as the server wires it (Runtime, Services, the backend attached),
    on the memory platform and a clock of its own."""
    platform = MemoryPlatform(tmp_path / "memory", heartbeat_s=0.05)
    moved = clock.Clock()
    old = clock.use(moved)
    rt = Runtime(tmp_path / "data", platform=platform)
    rt.start_fabric()
    svc = Services(rt)
    platform.attach_backend(svc.machines)
    try:
        yield World(rt, svc, platform, moved)
    finally:
        for m in list(platform.machines.values()):
            platform.stop(m.spec)
        clock.use(old)
        rt.engine.dispose()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with service_on_memory(tmp_path) as w:
        yield w


def wait_job(w: World, job_id: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        with w.rt.sessions() as s:
            job = describe_job(s.get(Job, job_id))  # type: ignore[arg-type]
        if job["status"] not in ("InProgress", "Cancelling") or time.monotonic() > deadline:
            return job
        time.sleep(0.02)


def wait_agent(w: World, name: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while w.svc.machines.show(name)["agent"]["status"] != "Ready" or \
            w.svc.machines.show(name)["agent"]["last_heartbeat_age_s"] is None:
        assert time.monotonic() < deadline, "the in-process agent never heartbeated"
        time.sleep(0.02)


def protected(w: World, name: str, instant_days: int = 2, vault_days: int = 30,
              schedule: str = "22:00") -> None:
    if not any(v["name"] == "v" for v in w.svc.protection.list_vaults()):
        w.svc.protection.create_vault("v")
    policy = f"p-{name}"
    w.svc.policies.create(policy, schedule_time=schedule, instant_rp_days=instant_days,
                          vault_retention_days=vault_days)
    w.svc.machines.create(name, [{"name": "data", "size": "16M"}])
    w.svc.protection.enable(name, "v", policy)


def backup(w: World, name: str) -> dict[str, Any]:
    return wait_job(w, w.svc.backups.start(name)["id"])


def rp_of(w: World, job: dict[str, Any]) -> RestorePoint:
    with w.rt.sessions() as s:
        rp = s.get(RestorePoint, job["details"]["restore_point"])
        assert rp is not None
        return rp


def test_the_memory_platform_is_a_machine_platform(tmp_path: Path) -> None:
    p: MachinePlatform = MemoryPlatform(tmp_path)  # type-checked against the Protocol
    spec = MachineSpec("m", 1, [DiskSpec("data", MiB, "ext4", tmp_path / "d" / "m.img")])
    with pytest.raises(PlatformRefused):
        p.start(spec)  # a machine must exist
    p.create(spec, {f"{GUEST_ETC}/agent.conf": ("Extensions.Enabled=y\n", 0o644)})
    with pytest.raises(PlatformRefused):
        p.create(spec, {})
    with pytest.raises(PlatformRefused):
        p.exec("m", ["true"])  # and run, to exec in it
    p.start(spec)
    assert p.is_running("m")
    assert p.exec("m", ["no-such-program"]).returncode == 127
    with pytest.raises(ValueError):
        p.write_guest_file("m", "/etc/passwd", b"x")  # only the shared guest folders
    assert p.read_guest_file("m", f"{GUEST_ETC}/agent.conf") == b"Extensions.Enabled=y\n"
    mem = p
    assert isinstance(mem, MemoryPlatform)
    mem.write_disk("m", "data", b"before")
    snap = p.snapshot_disks("m", "s1", spec.disks)
    mem.write_disk("m", "data", b"after!")
    assert mem.read_disk(snap.location, "data", 6) == b"before"  # a copy of the bytes
    with pytest.raises(FileExistsError):
        p.snapshot_disks("m", "s1", spec.disks)  # never taken again
    mem.machines["m"].frozen.add("data")
    with pytest.raises(PlatformRefused):
        mem.write_disk("m", "data", b"x")  # frozen: writes wait (here: refused)
    assert p.thaw("m", spec.disks) == ["data"] and p.thaw("m", spec.disks) == []
    p.stop(spec, deallocate=True)
    assert mem.power_state("m") == "Deallocated" and not p.is_running("m")
    p.delete(spec)
    assert not p.disk_exists(spec.disks[0]) and "m" not in mem.machines
    assert p.snapshot_exists(snap.location)  # restore points outlive their machine


def test_a_backup_runs_through_the_guest_and_keeps_the_bytes_of_its_moment(
        world: World) -> None:
    w = world
    protected(w, "m1")
    wait_agent(w, "m1")
    w.platform.write_disk("m1", "data", b"one")
    job = backup(w, "m1")
    assert job["status"] == "Completed", job
    assert job["details"]["consistency"] == "FileSystemConsistent"  # the guest froze
    assert job["details"]["transfer"]["bytes_total"] == 16 * MiB
    w.platform.write_disk("m1", "data", b"two")
    rp = rp_of(w, job)
    assert w.platform.read_disk(str(rp.snapshot_dir), "data", 3) == b"one"
    assert not w.platform.machines["m1"].frozen  # thawed after the snapshot
    # Powered off, the backup is crash-consistent, taken by the host alone.
    w.svc.machines.stop("m1")
    job = backup(w, "m1")
    assert job["status"] == "Completed", job
    assert job["details"]["consistency"] == "CrashConsistent"
    assert w.platform.read_disk(str(rp_of(w, job).snapshot_dir), "data", 3) == b"two"


def test_one_backup_of_a_machine_at_a_time(world: World) -> None:
    w = world
    protected(w, "m2")
    wait_agent(w, "m2")
    w.platform.machines["m2"].hold_frozen_s = 0.5  # the first backup lasts a while
    first = w.svc.backups.start("m2")
    with pytest.raises(FrostpointError) as e:
        w.svc.backups.start("m2")
    assert e.value.code == "UserErrorBackupOperationInProgress"
    assert e.value.details["running_job"] == first["id"]
    assert wait_job(w, first["id"])["status"] == "Completed"
    assert backup(w, "m2")["status"] == "Completed"  # the slot is free again


def test_18_instant_restore_points_and_a_lock_that_blocks_their_cleanup(
        world: World) -> None:
    w = world
    protected(w, "m3", instant_days=1)
    w.svc.machines.stop("m3")  # host-only snapshots: quicker, the same rules
    for _ in range(18):
        assert backup(w, "m3")["status"] == "Completed"
    job = backup(w, "m3")
    assert job["status"] == "Failed" and \
        job["error"]["code"] == "UserErrorRpCollectionLimitReached", job
    rg = w.svc.machines.show("m3")["resource_group"]
    w.svc.protection.create_lock("keep", rg, "CanNotDelete")
    w.clock.advance(timedelta(days=1, minutes=1).total_seconds())  # all 18 expired
    job = backup(w, "m3")
    assert job["error"]["code"] == "UserErrorRpCollectionLimitReached", job
    assert job["error"]["details"]["locks"] == ["keep"]  # the lock stops the cleanup
    w.svc.protection.delete_lock("keep")
    job = backup(w, "m3")
    assert job["status"] == "Completed", job  # the cleanup before it freed the 18
    with w.rt.sessions() as s:
        snaps = [rp for rp in s.query(RestorePoint).filter(
            RestorePoint.machine_name == "m3") if rp.snapshot_dir]
    assert len(snaps) == 1
    assert all(not w.platform.snapshot_exists(str(p))
               for p in (w.platform.root / "snapshots" / "m3").iterdir()
               if p.name != job["id"]), "expired snapshots were left in the pool"


def test_vault_retention_follows_the_clock(world: World) -> None:
    w = world
    protected(w, "m4", instant_days=1, vault_days=1)
    w.svc.machines.stop("m4")
    old = backup(w, "m4")["details"]["restore_point"]
    assert w.svc.expire_vault_restore_points() == []  # not yet
    w.clock.advance(timedelta(hours=12).total_seconds())
    new = backup(w, "m4")["details"]["restore_point"]
    w.clock.advance(timedelta(hours=13).total_seconds())  # old: 25 h, new: 13 h
    w.svc.cleanup_all()  # the instant copy goes first, then the vault copy
    with w.rt.sessions() as s:
        left = {rp.id for rp in s.query(RestorePoint)}
    assert old not in left and new in left


def test_the_schedule_comes_due_once_a_day(world: World) -> None:
    w = world
    protected(w, "m5", schedule="00:00")  # due at any time of day once
    w.svc.machines.stop("m5")
    assert w.svc.run_schedule() == ["m5"]
    assert w.svc.run_schedule() == []  # once a day
    with w.rt.sessions() as s:
        job = s.query(Job).filter(Job.machine_name == "m5").one()
        assert job.trigger == "Scheduled"
        job_id = job.id
    assert wait_job(w, job_id)["status"] == "Completed"
    w.clock.advance(86400)
    assert w.svc.run_schedule() == ["m5"]  # the next day


def test_a_guest_dead_while_frozen_is_thawed_by_the_host(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Short limits, in their order: host call < freeze < extension wait < job.
    for k, v in (("FROSTPOINT_HOST_CALL_S", "0.5"), ("FROSTPOINT_FREEZE_S", "1"),
                 ("FROSTPOINT_EXTENSION_WAIT_S", "10"), ("FROSTPOINT_JOB_S", "60"),
                 ("FROSTPOINT_HEARTBEAT_STALE_S", "1")):
        monkeypatch.setenv(k, v)
    with service_on_memory(tmp_path) as w:  # after the variables: Timeouts reads them
        protected(w, "m6")
        wait_agent(w, "m6")
        w.platform.machines["m6"].die_when_frozen = True
        job = backup(w, "m6")
        assert job["error"]["code"] == "UserErrorGuestAgentStatusUnavailable", job
        assert job["error"]["details"]["host_thawed"] == ["data"], job["error"]
        assert not w.platform.machines["m6"].frozen  # the fabric thawed it


def test_a_backup_cancelled_through_the_api_mid_freeze_ends_cancelled_and_thawed(
        world: World) -> None:
    from fastapi.testclient import TestClient

    from frostpoint.service.api import create_app
    w = world
    protected(w, "m7")
    wait_agent(w, "m7")
    w.platform.machines["m7"].hold_frozen_s = 1.0
    api = TestClient(create_app(w.svc), headers={"Authorization": f"Bearer {w.rt.api_token}"})
    job = api.post("/backups", json={"machine": "m7"}).json()
    deadline = time.monotonic() + 10
    while not w.platform.machines["m7"].frozen:
        assert time.monotonic() < deadline, "the guest never froze"
        time.sleep(0.01)
    assert api.post(f"/jobs/{job['id']}/cancel").json()["status"] == "Cancelling"
    final = wait_job(w, job["id"])
    assert final["status"] == "Cancelled", final
    # The job may end before the guest's freeze does (as with the real extension):
    # the guest asks for its snapshot, is refused (the task is withdrawn), and thaws.
    deadline = time.monotonic() + 5
    while w.platform.machines["m7"].frozen:
        assert time.monotonic() < deadline, "the guest stayed frozen"
        time.sleep(0.02)
    assert api.get("/restore-points", params={"machine": "m7"}).json() == []
    assert not (w.platform.root / "snapshots" / "m7" / job["id"]).exists()  # never taken
    assert backup(w, "m7")["status"] == "Completed"  # and the slot is free


def test_restores_from_the_pool_and_the_vault_hold_the_bytes_of_the_backup(
        world: World, tmp_path: Path) -> None:
    w = world
    protected(w, "m8")
    wait_agent(w, "m8")
    w.platform.write_disk("m8", "data", b"backed-up", offset=5 * MiB)
    rp = backup(w, "m8")["details"]["restore_point"]
    w.platform.write_disk("m8", "data", b"later....", offset=5 * MiB)
    for source in ("instant", "vault"):
        out = tmp_path / source
        job = wait_job(w, w.svc.restores.restore_disks(rp, str(out), source)["id"])
        assert job["status"] == "Completed", job
        with open(out / "data.img", "rb") as f:
            f.seek(5 * MiB)
            assert f.read(9) == b"backed-up", source
        name = f"copy-{source[0]}"
        job = wait_job(w, w.svc.restores.restore_vm(rp, name, source)["id"])
        assert job["status"] == "Completed", job
        assert w.platform.is_running(name)
        copy = w.platform.machines[name].spec.disks[0]
        with open(copy.image_path, "rb") as f:
            f.seek(5 * MiB)
            assert f.read(9) == b"backed-up", source
    assert not list(w.platform.scratch_dir().iterdir()), "restores left copies behind"
