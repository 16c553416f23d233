"""A snapshot task lives only as long as its job: an agent that gets to it late never
freezes for a job that has already ended, and an agent that will never run it (its
extensions disabled) fails the backup at once."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import pytest

from conftest import Service, needs_root

pytestmark = needs_root
M = "live"
EXT = "Frostpoint.Backup.Snapshot"


@pytest.fixture(scope="module", autouse=True)
def machine(service: Service) -> None:
    service.protected_machine(M)
    assert service.backup(M)["status"] == "Completed"  # installs the extension


def guest_config(service: Service, key: str, value: str) -> None:
    service.exec(M, f"sed -i 's/^{key}=.*/{key}={value}/' /etc/frostpoint/agent.conf")


def snapshot_log(service: Service) -> str:
    p = service.guest_file(M, "log") / EXT / "snapshot.log"
    return p.read_text() if p.exists() else ""


def sequence(service: Service) -> int:
    m = service.client.get(f"/machines/{M}")
    return int(next(e for e in m["extensions"] if e["name"] == EXT)["sequence"])


def wait_heartbeat_says(service: Service, key: str, value: Any) -> None:
    deadline = time.monotonic() + 30
    while service.client.get(f"/machines/{M}")["agent"].get(key) != value:
        assert time.monotonic() < deadline, f"agent never reported {key}={value}"
        time.sleep(0.2)


def test_extensions_disabled_fails_the_backup_at_once(service: Service) -> None:
    guest_config(service, "Extensions.Enabled", "n")
    service.cli_json("vm", "agent", "restart", M)
    wait_heartbeat_says(service, "extensions_enabled", False)
    seq = sequence(service)
    t0 = time.monotonic()
    job = service.backup(M, timeout=60)
    took = time.monotonic() - t0
    assert job["status"] == "Failed", job
    err = job["error"]
    assert err["code"] == "GuestAgentSnapshotTaskStatusError", err
    assert err["details"]["cause"] == "extensions disabled", err
    assert "Extensions.Enabled" in err["message"] and err["actions"], err
    assert took < 8, f"took {took:.0f} s: it waited for a status that cannot come"
    assert sequence(service) == seq, "a task was put in the goal state for nobody"
    # Extensions back on: nothing is frozen for the failed job; the next backup works.
    guest_config(service, "Extensions.Enabled", "y")
    service.cli_json("vm", "agent", "restart", M)
    wait_heartbeat_says(service, "extensions_enabled", True)
    assert service.backup(M)["status"] == "Completed"


def test_task_of_an_ended_job_is_withdrawn_and_never_frozen(service: Service) -> None:
    # The agent goes away with the task not yet run: the job fails on its heartbeat.
    guest_config(service, "Agent.AutoRestart", "n")
    service.exec(M, f"{sys.executable} -m frostpoint.agent.main stop")
    job = service.backup(M, timeout=90)
    assert job["status"] == "Failed", job
    assert job["error"]["code"] == "UserErrorGuestAgentStatusUnavailable", job["error"]
    dead_seq = sequence(service)
    # The agent comes back and reads its goal state: the dead job's task is withdrawn.
    guest_config(service, "Agent.AutoRestart", "y")
    service.cli_json("vm", "agent", "restart", M)
    service.wait_agent_ready(M)
    gs = service.guest_file(M, "lib") / "agent-state.json"
    deadline = time.monotonic() + 20
    while True:
        goal = json.loads(gs.read_text()) if gs.exists() else {}
        ext = next((e for e in goal.get("extensions", []) if e["name"] == EXT), {})
        if ext.get("sequence") == dead_seq:
            break
        assert time.monotonic() < deadline, goal
        time.sleep(0.2)
    assert ext["state"] == "withdrawn", ext
    time.sleep(3)  # time enough for an agent to have run it
    assert f"[{dead_seq}]" not in snapshot_log(service), snapshot_log(service)[-2000:]
    assert not (service.guest_file(M, "lib") / "frozen.json").exists()
    # The doctor sees no provisioning failure to fix; the next backup works.
    report = json.loads(service.cli("doctor", M, "--json", check=False).stdout)
    prov = next(f for f in report["findings"] if f["check"] == "machine.provisioning")
    assert prov["status"] == "pass", prov
    assert service.backup(M)["status"] == "Completed"


def test_host_refuses_the_liveness_check_of_an_ended_or_foreign_task(
        service: Service) -> None:
    """The extension's check before freezing: GET /snapshot/task/{id} on the host
    endpoint, asked from inside the machine with its own credential."""
    jobs = service.client.get("/jobs", params={"machine": M})
    ended = next(j["id"] for j in jobs if j["status"] == "Completed")
    probe = (f"{sys.executable} -c \"import httpx, sys; from frostpoint.agent.config import "
             "AgentConfig; c = AgentConfig.load().resolved(); "
             "r = httpx.get(c.host_url + '/snapshot/task/' + sys.argv[1], "
             "headers={'Authorization': 'Bearer ' + c.token}); "
             "print(r.status_code, r.text)\" ")
    for task in (ended, "no-such-task"):
        out = service.exec(M, probe + task)
        status, body = out.split(" ", 1)
        assert status == "409", out
        assert json.loads(body)["code"] == "ExtensionOperationFailedForManagedDisks", out


@pytest.mark.parametrize("attempt", range(3))
def test_host_port_blocked_before_the_extension_was_installed_gives_no_network(
        service: Service, attempt: int) -> None:
    """The code follows the cause (the network), not timing: tried several times, on a
    machine whose snapshot extension was never installed."""
    m = f"nonet{attempt}"
    service.protected_machine(m)
    service.exec(m, "iptables -A OUTPUT -d 10.213.0.1 -p tcp --dport 32526 -j DROP")
    job = service.backup(m, timeout=90)
    assert job["status"] == "Failed", job
    assert job["error"]["code"] == "ExtensionSnapshotFailedNoNetwork", job["error"]
    assert "cannot be reached" in job["error"]["message"], job["error"]
    report = json.loads(service.cli("doctor", m, "--json", check=False).stdout)
    found = {f["code"] for f in report["findings"] if f["status"] == "fail"}
    assert "ExtensionSnapshotFailedNoNetwork" in found, report
    # A failed backup is no machine to repair: no extension-removing fix is offered.
    prov = next(f for f in report["findings"] if f["check"] == "machine.provisioning")
    assert prov["status"] == "pass", prov
    for f in report["findings"]:  # risky fixes: one --check at a time
        if f["status"] == "fail" and f["risky"] and f["remedy"]:
            service.cli("doctor", m, "--fix", "--check", f["check"], "--yes", "--json",
                        check=False)
    assert "32526" not in service.exec(m, "iptables -S OUTPUT")
    assert service.backup(m)["status"] == "Completed"
    service.client.delete(f"/machines/{m}")


EXT_DIR = "/var/lib/frostpoint-agent/Frostpoint.Backup.Snapshot-*"
CANNOT_EXECUTE = {
    # A mount deeper than /var/lib/frostpoint-agent itself, noexec.
    "deeper-noexec-mount": (f"d=$(echo {EXT_DIR})/bin; mount --bind $d $d && "
                            "mount -o remount,bind,noexec $d $d",
                            f"umount $(echo {EXT_DIR})/bin", "noexec"),
    # The program lost its execute permission.
    "permission": (f"chmod 0644 {EXT_DIR}/bin/frostpoint-snapshot",
                   f"chmod 0755 {EXT_DIR}/bin/frostpoint-snapshot", "permission"),
    # The kernel refuses the executable itself (not a program it can run).
    "refused-by-the-kernel": (
        f"f=$(echo {EXT_DIR})/bin/frostpoint-snapshot; cp $f /tmp/fp-launcher && "
        "printf '\\177ELF-broken' > $f",
        f"cat /tmp/fp-launcher > $(echo {EXT_DIR})/bin/frostpoint-snapshot && "
        "rm /tmp/fp-launcher", "refused"),
}


@pytest.mark.parametrize("fault", list(CANNOT_EXECUTE))
def test_extension_that_cannot_execute_says_so_and_where(service: Service,
                                                         fault: str) -> None:
    make, undo, why = CANNOT_EXECUTE[fault]
    service.exec(M, make)
    try:
        job = service.backup(M, timeout=90)
        assert job["status"] == "Failed", job
        err = job["error"]
        assert err["code"] == "GuestAgentSnapshotTaskStatusError", err
        assert err["details"]["cause"] == "extension cannot be executed", err
        path = err["details"]["path"]
        assert path.startswith("/var/lib/frostpoint-agent/Frostpoint.Backup.Snapshot-"), err
        assert "cannot be executed" in err["message"] and path in err["message"], err
        assert why in err["message"], err
        report = json.loads(service.cli("doctor", M, "--json", check=False).stdout)
        ext = next(f for f in report["findings"] if f["check"] == f"extension.{EXT}")
        assert ext["status"] == "fail", ext
        assert ext["code"] == "GuestAgentSnapshotTaskStatusError", ext
        assert "could not be executed" in ext["message"] and path in ext["message"], ext
        if fault == "deeper-noexec-mount":  # the in-guest doctor finds the mount too
            exe = next(f for f in report["findings"]
                       if f["check"] == "guest.extension.executable")
            assert exe["status"] == "fail" and "/bin" in exe["message"], exe
    finally:
        service.exec(M, undo)
    assert service.backup(M)["status"] == "Completed"


def test_eighteen_live_restore_points_and_a_lock_are_fixed_by_the_doctor(
        service: Service) -> None:
    """None has expired, so removing the lock alone frees nothing: the doctor's risky
    fix removes the lock and deletes the collection, and says what it deletes."""
    m = "rp18"
    service.protected_machine(m)
    group = service.cli_json("vm", "show", m)["resource_group"]
    listed = {g["name"]: g for g in service.cli_json("rg", "list")}
    assert m in listed[group]["machines"], listed
    service.cli_json("lock", "create", "keep18", "--resource-group", group)
    assert "keep18" in {g["name"]: g for g in service.cli_json("rg", "list")}[group]["locks"]
    assert "keep18" in service.cli("rg", "list").stdout
    for _ in range(18):
        assert service.backup(m)["status"] == "Completed"
    job = service.backup(m)
    assert job["error"]["code"] == "UserErrorRpCollectionLimitReached", job
    instant = [r["id"] for r in service.client.get("/restore-points", params={"machine": m})
               if r["tier"] != "Vault"]
    assert len(instant) == 18
    report = json.loads(service.cli("doctor", m, "--json", check=False).stdout)
    count = next(f for f in report["findings"] if f["check"] == "restore_points.count")
    assert count["risky"] and "keep18" in count["message"], count
    assert all(rp in count["message"] for rp in instant), count  # says what goes
    # Without --yes nothing is deleted.
    service.cli("doctor", m, "--fix", "--json", check=False)
    assert len([r for r in service.client.get("/restore-points", params={"machine": m})
                if r["tier"] != "Vault"]) == 18
    # --yes alone applies no risky fix (it once deleted a user's lock): --check names it.
    skipped = json.loads(service.cli("doctor", m, "--fix", "--yes", "--json",
                                     check=False).stdout)
    assert [a for a in skipped["applied"] if a["check"] == "restore_points.count"] == [{
        "check": "restore_points.count", "result": "skipped (risky)",
        "apply_with": f"frostpoint doctor {m} --fix --check restore_points.count --yes"}]
    assert len([r for r in service.client.get("/restore-points", params={"machine": m})
                if r["tier"] != "Vault"]) == 18
    fixed = json.loads(service.cli("doctor", m, "--fix", "--check", "restore_points.count",
                                   "--yes", "--json", check=False).stdout)
    [applied] = [a for a in fixed["applied"] if a["check"] == "restore_points.count"]
    assert "deleted 18 instant restore points" in applied["result"], applied
    assert "keep18" in applied["result"], applied
    assert service.backup(m)["status"] == "Completed"
    # The vault copies stay.
    tiers = [r["tier"] for r in service.client.get("/restore-points", params={"machine": m})]
    assert tiers.count("Vault") == 18, tiers
    service.client.delete(f"/machines/{m}")
