"""The service's life: one service per data directory, starts that fail leave nothing
behind and say one thing, states that cannot stick after a failure or a crash, and bad
input that is refused as such.

Real servers, real sandboxes, real SQLite: a second `frostpoint server` is a second
process, a crash is a stopped service whose database says what a crash leaves."""

from __future__ import annotations

import hashlib
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Service, needs_root, running_service
from frostpoint.cli.client import ApiError
from frostpoint.fabric.teardown import teardown_host
from frostpoint.service.jobs import JobRunner
from frostpoint.service.models import Job, utcnow
from frostpoint.service.runtime import Runtime, instance_id

pytestmark = needs_root


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    # Retention and GC every second, so a pass that fails is seen failing at once.
    yield from running_service(FROSTPOINT_CLEANUP_S="1", FROSTPOINT_GC_S="1")


def said(p: subprocess.CompletedProcess[str]) -> str:
    return " ".join((p.stdout + p.stderr).split())  # Rich wraps long lines


def tree_digest(root: Path) -> dict[str, tuple[str, int]]:
    return {str(f.relative_to(root)): (hashlib.sha256(f.read_bytes()).hexdigest(),
                                       f.stat().st_mtime_ns)
            for f in sorted(root.rglob("*")) if f.is_file()}


def host_traces(data_dir: Path) -> dict[str, list[str]]:
    """What a service on data_dir holds on the host: loop devices, namespaces, mounts,
    processes (the fabric's dnsmasq names its config there)."""
    inst = instance_id(data_dir)
    procs = subprocess.run(["pgrep", "-af", str(data_dir)], capture_output=True,
                           text=True).stdout
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    mounts = Path("/proc/mounts").read_text()
    return {"loop": [x for x in loops.splitlines() if str(data_dir) in x],
            "netns": [x for x in netns.splitlines() if x.startswith(f"fp{inst}-")],
            "mounts": [x for x in mounts.splitlines() if str(data_dir) in x],
            "procs": procs.splitlines()}


# -- 4.1: one service per data directory ------------------------------------------------
def test_a_second_server_on_the_same_data_dir_is_refused_and_breaks_nothing(
        service: Service) -> None:
    assert service.proc is not None
    service.protected_machine("lk")
    packages = tree_digest(service.data_dir / "packages")
    assert packages
    second = Service(service.data_dir)  # same data dir, its own free port
    t0 = time.monotonic()
    p = subprocess.run(second.server_argv(), env=second.env, capture_output=True, text=True,
                       timeout=60)
    took = time.monotonic() - t0
    assert p.returncode != 0
    out = said(p)
    assert "ServiceStartFailed" in out and f"pid {service.proc.pid}" in out, out
    assert "Traceback" not in out and "fix:" in out, out
    assert took < 15, took  # at once: no migration, no fabric first
    assert (service.data_dir / "lock").read_text().strip() == str(service.proc.pid)
    # The running service is untouched: its packages are the ones it serves, and an
    # extension install (the first backup installs the snapshot extension) succeeds.
    assert tree_digest(service.data_dir / "packages") == packages
    job = service.backup("lk")
    assert job["status"] == "Completed", job
    service.client.delete("/machines/lk")


# -- 4.2: a failed start leaves nothing behind ------------------------------------------
@pytest.mark.parametrize("listen", ["busy", "nonsense", "127.0.0.1:99999", "127.0.0.1:",
                                    "no-such-host.invalid:8420"])
def test_a_failed_start_leaves_nothing_behind_and_says_one_thing(listen: str) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="fp-test-start-"))
    holder = socket.socket()
    try:
        if listen == "busy":
            holder.bind(("127.0.0.1", 0))
            holder.listen(1)
            listen = f"127.0.0.1:{holder.getsockname()[1]}"
        before = host_traces(data_dir)
        svc = Service(data_dir)
        argv = [*svc.server_argv()[:-1], listen]
        p = subprocess.run(argv, env=svc.env, capture_output=True, text=True, timeout=120)
        assert p.returncode != 0
        out = said(p)
        assert out.count("ServiceStartFailed") == 1 and "Traceback" not in out, out
        assert "fix:" in out, out
        assert listen in out, out
        assert host_traces(data_dir) == before
        assert not (data_dir / "pool.img").exists()
        assert not (data_dir / "frostpoint.db").exists()
    finally:
        holder.close()
        teardown_host(data_dir)  # only if the test failed is there anything to release
        shutil.rmtree(data_dir, ignore_errors=True)


def test_a_start_that_fails_after_the_fabric_is_made_releases_it() -> None:
    """DATA/packages is a file, so the start fails after the pool, the fabric namespace
    and the mount folder were made: all of it is released again."""
    data_dir = Path(tempfile.mkdtemp(prefix="fp-test-start-"))
    try:
        (data_dir / "packages").write_text("not a folder")
        before = host_traces(data_dir)
        svc = Service(data_dir)
        p = subprocess.run(svc.server_argv(), env=svc.env, capture_output=True, text=True,
                           timeout=120)
        assert p.returncode != 0
        out = said(p)
        assert out.count("ServiceStartFailed") == 1 and "Traceback" not in out, out
        assert "packages" in out, out
        assert host_traces(data_dir) == before
        assert not (data_dir / "pool.img").exists()
    finally:
        teardown_host(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


# -- 4.4: bad input -----------------------------------------------------------------------
def test_a_duplicate_disk_name_is_invalid_input(service: Service) -> None:
    c = service.client
    with pytest.raises(ApiError) as e:
        c.post("/machines", {"name": "dup", "disks": [{"name": "data", "size": "64M"},
                                                      {"name": "data", "size": "64M"}]})
    assert e.value.status == 422 and e.value.error["code"] == "InvalidInput", e.value.error
    assert "data" in e.value.error["message"]
    assert "INSERT" not in str(e.value.error) and "UNIQUE" not in str(e.value.error)
    p = service.cli("vm", "create", "dup", "--disk", "data:64M", "--disk", "data:64M",
                    check=False)
    assert p.returncode == 1 and "InvalidInput" in said(p), said(p)
    assert "Traceback" not in said(p)
    assert all(m["name"] != "dup" for m in c.get("/machines"))
    assert not (service.data_dir / "machines" / "dup").exists()


@pytest.mark.parametrize("token_file", ["missing", "empty"])
def test_the_cli_without_a_token_file_says_so_in_one_error(
        service: Service, tmp_path: Path, token_file: str) -> None:
    if token_file == "empty":
        (tmp_path / "api-token").write_text("")
    env = {k: v for k, v in service.env.items() if k != "FROSTPOINT_TOKEN"}
    env["FROSTPOINT_DATA_DIR"] = str(tmp_path)
    p = subprocess.run([sys.executable, "-m", "frostpoint.cli.main", "vm", "list"],
                       env=env, capture_output=True, text=True, timeout=60)
    out = said(p)
    assert p.returncode == 1, out
    assert "Traceback" not in out and len((p.stdout + p.stderr).splitlines()) < 10, out
    assert "Unauthorized" in out and str(tmp_path / "api-token") in out, out
    assert ("does not exist" if token_file == "missing" else "is empty") in out, out


# -- 2.6: retention and GC go on past a failure ----------------------------------------
def listed(service: Service) -> set[str]:
    return {r["id"] for r in service.client.get("/restore-points")}


def test_one_broken_vault_and_a_manifest_deleted_by_hand_stop_no_retention(
        service: Service, tmp_path: Path) -> None:
    s, c = service, service.client
    bad_dir = tmp_path / "bad-vault"
    c.post("/vaults", {"name": "good"})
    c.post("/vaults", {"name": "bad", "location": str(bad_dir)})
    c.post("/policies", {"name": "keep"})
    for m, v in (("rg", "good"), ("rb", "bad")):
        c.post("/machines", {"name": m, "disks": [{"name": "data", "size": "64M"}]})
        c.post("/protection/enable", {"machine": m, "vault": v, "policy": "keep"})
    s.wait_agent_ready("rg")
    s.wait_agent_ready("rb")
    plain, by_hand, on_bad = (s.backup(m) for m in ("rg", "rg", "rb"))
    for j in (plain, by_hand, on_bad):
        assert j["status"] == "Completed", j
    plain, by_hand, on_bad = (j["details"]["restore_point"]
                              for j in (plain, by_hand, on_bad))
    good_dir = Path(next(v for v in c.get("/vaults") if v["name"] == "good")["location"])
    (good_dir / "manifests" / by_hand).unlink()  # an operator's hand, before expiry
    shutil.move(bad_dir, tmp_path / "bad-vault.away")  # the bad vault's storage is gone
    bad_dir.write_text("not a vault")
    mark = len((s.data_dir / "server.log").read_bytes())
    s.let_days_pass(30)  # the "keep" policy's vault retention: all three are due
    deadline = time.monotonic() + 45
    while {plain, by_hand} & listed(s):
        assert time.monotonic() < deadline, "retention stopped at the first failure"
        time.sleep(0.5)
    # The unreachable vault's point is not dropped as if deleted: it waits for its vault.
    assert on_bad in listed(s)
    deadline = time.monotonic() + 30
    while "vault good gc:" not in (s.data_dir / "server.log").read_bytes()[mark:].decode(
            errors="replace"):
        assert time.monotonic() < deadline, "no GC of the good vault after the failure"
        time.sleep(0.5)
    assert s.cli_json("vault", "verify", "good")["details"]["report"]["ok"]
    # Storage back: the next pass deletes the bad vault's expired point too.
    bad_dir.unlink()
    shutil.move(tmp_path / "bad-vault.away", bad_dir)
    deadline = time.monotonic() + 30
    while on_bad in listed(s):
        assert time.monotonic() < deadline, "the vault came back but its expiry did not"
        time.sleep(0.5)
    for m in ("rg", "rb"):
        c.delete(f"/machines/{m}")


# -- 2.7: states that stick ----------------------------------------------------------------
def set_states(service: Service, states: dict[str, str]) -> None:
    with sqlite3.connect(service.data_dir / "frostpoint.db", timeout=30) as db:
        for name, state in states.items():
            db.execute("UPDATE machines SET provisioning_state = ? WHERE name = ?",
                       (state, name))


def test_machines_left_mid_operation_by_a_crash_are_reconciled_at_start(
        service: Service) -> None:
    s, c = service, service.client
    for m in ("ru", "rd"):
        c.post("/machines", {"name": m, "disks": [{"name": "data", "size": "64M"}]})
    rd_ns = f"fp{instance_id(s.data_dir)}-m-rd"
    assert Path(f"/run/netns/{rd_ns}").exists()
    # A crash in the middle of an update (start, stop, disk detach) and of a delete.
    s.stop(9)
    set_states(s, {"ru": "Updating", "rd": "Deleting"})
    s.start()
    ru = c.get("/machines/ru")
    assert (ru["provisioning_state"], ru["power_state"]) == ("Succeeded", "Running"), ru
    assert all(m["name"] != "rd" for m in c.get("/machines"))  # the delete finished
    assert not Path(f"/run/netns/{rd_ns}").exists()
    assert not (s.data_dir / "machines" / "rd").exists()
    s.wait_agent_ready("ru", timeout=60)
    assert s.exec("ru", "echo alive").strip() == "alive"  # and Updating refuses nothing now
    # A crash in the middle of a create: Failed, and `vm delete` cleans it up.
    s.stop(9)
    set_states(s, {"ru": "Creating"})
    s.start()
    assert c.get("/machines/ru")["provisioning_state"] == "Failed"
    s.cli("vm", "delete", "ru")
    assert all(m["name"] != "ru" for m in c.get("/machines"))


def test_a_job_whose_finish_fails_does_not_stay_in_progress(service: Service) -> None:
    """The database is locked (another process holds its write lock) for longer than a
    write waits (30 s): the body's write and the job's first finish both fail."""
    s = service
    s.protected_machine("jf")
    assert s.backup("jf")["status"] == "Completed"
    s.exec("jf", "head -c 20000000 /dev/urandom > /mnt/data/big.bin")
    db = sqlite3.connect(s.data_dir / "frostpoint.db", timeout=30, isolation_level=None)
    try:
        job = s.client.post("/backups", {"machine": "jf"})
        db.execute("BEGIN EXCLUSIVE")
        time.sleep(70)
    finally:
        db.execute("ROLLBACK") if db.in_transaction else None
        db.close()
    final = s.wait_job(job["id"], timeout=90)
    assert final["status"] in ("Failed", "Completed", "CompletedWithWarnings"), final
    # And the machine's slot is free: the next backup runs (once the agent's heartbeat,
    # refused while the database was locked, is recorded again).
    s.wait_agent_ready("jf", timeout=60)
    after = s.backup("jf")
    assert after["status"] == "Completed", after["error"]
    s.client.delete("/machines/jf")



def test_a_job_whose_result_cannot_be_saved_ends_failed(tmp_path: Path) -> None:
    """A body's result the database cannot store (raw bytes from a guest's output) makes
    the job's finish fail for real; the job still ends, Failed, saying why."""
    rt = Runtime(tmp_path / "data")  # a real database; no fabric is needed for a job
    job = Job(operation="RestoreFiles", machine_name="x", owner=rt.owner,
              heartbeat_at=utcnow())
    with rt.sessions.begin() as s:
        s.add(job)
    JobRunner(rt).run(job.id, lambda _id: ("Completed", [{"stderr": b"\xff"}])).join(30)
    with rt.sessions() as s:
        ended = s.get(Job, job.id)
        assert ended is not None
        assert ended.status == "Failed", ended.status
        assert ended.error is not None and ended.error["code"] == "BackUpOperationFailed"
        assert "could not be saved" in ended.error["message"]
        assert ended.error["details"]["ended_as"] == "Completed"
        assert ended.ended_at is not None
