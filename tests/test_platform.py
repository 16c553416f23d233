"""Machines, identity, the scheduler and the CLI's contract, on a real service."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time

import httpx
import pytest

from conftest import Service, needs_root

pytestmark = needs_root


def _host_state() -> str:
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    mounts = open("/proc/self/mountinfo").read()
    nets = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return loops + mounts + nets


def test_machine_lifecycle_leaves_nothing_behind(service: Service) -> None:
    m = "life"
    before = _host_state()
    service.cli_json("vm", "create", m, "--disk", "data:64M:ext4", "--disk", "db:320M:xfs")
    shown = service.cli_json("vm", "show", m)
    assert shown["provisioning_state"] == "Succeeded" and shown["power_state"] == "Running"
    # The guest sees its disks as real filesystems and has its own network.
    mounts = service.exec(m, "grep ' /mnt/' /proc/mounts")
    assert " /mnt/data ext4 " in mounts and " /mnt/db xfs " in mounts
    assert shown["address"] in service.exec(m, "ip -4 addr show eth0")
    service.wait_agent_ready(m)
    assert service.cli_json("vm", "show", m)["agent"]["version"]

    stopped = service.cli_json("vm", "stop", m)
    assert stopped["power_state"] == "Stopped"
    assert f"fp{_instance(service)}-m-{m}" in _host_state()  # network kept while stopped
    p = service.cli("vm", "exec", m, "--", "true", check=False)
    assert p.returncode == 1 and "UserErrorVmNotInDesirableState" in p.stderr
    assert service.cli_json("vm", "deallocate", m)["power_state"] == "Deallocated"
    assert service.cli_json("vm", "start", m)["power_state"] == "Running"
    # Its two disks, and nothing of the host's (a host mount under /mnt used to show).
    mounts = service.exec(m, "grep ' /mnt/' /proc/mounts")
    assert len(mounts.splitlines()) == 2 and " /mnt/data " in mounts and " /mnt/db " in mounts
    service.cli_json("vm", "delete", m)
    after = _host_state()
    assert f"disks/{m}/" not in after and f"-m-{m}" not in after
    assert set(after.split("\n")) - set(before.split("\n")) == set(), "something leaked"


def _instance(service: Service) -> str:
    from frostpoint.service.runtime import instance_id
    return instance_id(service.data_dir)


def test_identity_tokens(service: Service) -> None:
    token_file = service.data_dir / "api-token"
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    r = httpx.get(f"{service.url}/machines")
    assert r.status_code == 401 and r.json()["error"]["code"] == "Unauthorized"
    for name in ("ida", "idb"):
        service.client.post("/machines", {"name": name, "disks": [{"name": "data",
                                                                    "size": "32M"}]})
    # Inside machine ida: its own token reads its own goal state; no token, or
    # another's guess, is refused.
    wire = "http://10.213.0.1:80/machine/goalstate"
    own = service.exec("ida", f"curl -s -H \"Authorization: Bearer $(cat "
                              f"/etc/frostpoint/agent.token)\" {wire}")
    assert json.loads(own)["machine"] == "ida"
    code = service.exec("ida", f"curl -s -o /dev/null -w '%{{http_code}}' {wire}")
    assert code == "401"
    code = service.exec("ida", "curl -s -o /dev/null -w '%{http_code}' "
                               f"-H 'Authorization: Bearer guessed' {wire}")
    assert code == "401"
    other = (service.guest_file("idb", "etc") / "agent.token").read_text()
    assert other not in service.exec("ida", "cat /etc/frostpoint/agent.token")
    assert stat.S_IMODE(os.stat(service.guest_file("ida", "etc") / "agent.token")
                        .st_mode) == 0o600
    # The management API is not reachable from a machine: it stays on loopback.
    code = service.exec("ida", f"curl -s -m 2 -o /dev/null -w '%{{http_code}}' "
                               f"http://127.0.0.1:{service.port}/health", check=False)
    assert code == "000"
    for name in ("ida", "idb"):
        service.client.delete(f"/machines/{name}")


SCHEDULE = "23:58"  # the daily policy's time; the test moves the clock there


@pytest.fixture(scope="module")
def sched(service: Service) -> str:
    """A protected machine on a daily policy, made once for the tests that use it (each
    of them also runs alone)."""
    m = "sched"
    c = service.client
    c.post("/machines", {"name": m, "disks": [{"name": "data", "size": "32M"}]})
    c.post("/vaults", {"name": "vs"})
    c.post("/policies", {"name": "daily", "schedule_time": SCHEDULE})
    c.post("/protection/enable", {"machine": m, "vault": "vs", "policy": "daily"})
    service.wait_agent_ready(m)
    return m


def test_scheduled_backup_runs_at_the_policy_time(service: Service, sched: str) -> None:
    m = sched
    c = service.client
    service.move_clock_to(SCHEDULE)  # days pass by the service's clock (service/clock.py)
    service.wait_agent_ready(m)
    deadline = time.monotonic() + 40
    jobs: list[dict] = []
    while time.monotonic() < deadline and not jobs:
        jobs = [j for j in c.get("/jobs", params={"machine": m}) if j["trigger"] == "Scheduled"]
        time.sleep(1)
    assert jobs, "the scheduler did not start the daily backup"
    assert service.wait_job(jobs[0]["id"])["status"] == "Completed"
    # Once a day: no second scheduled job on the same day.
    time.sleep(16)
    assert len([j for j in c.get("/jobs", params={"machine": m})
                if j["trigger"] == "Scheduled"]) == 1
    assert c.get(f"/protection/{m}")["protection_state"] == "Protected"


def test_stopped_machine_is_backed_up_crash_consistent(service: Service, sched: str) -> None:
    m = sched
    service.exec(m, "echo before-stop > /mnt/data/f.txt")
    service.cli_json("vm", "stop", m)
    job = service.backup(m)
    assert job["status"] == "Completed", job
    assert job["details"]["consistency"] == "CrashConsistent"
    service.cli_json("vm", "start", m)


def test_protection_stop_and_resume(service: Service, sched: str) -> None:
    m = sched
    assert service.cli_json("protect", "stop", m)["protection_state"] == "ProtectionStopped"
    p = service.cli("backup", "now", m, "--json", check=False)
    assert p.returncode == 1
    assert json.loads(p.stdout)["error"]["code"] == "UserErrorBcmDatasourceNotPresent"
    assert service.cli_json("protect", "resume", m)["protection_state"] == "Protected"
    service.wait_agent_ready(m)
    out = service.cli_json("backup", "now", m, "--wait")
    assert out["status"] == "Completed"


def test_every_listed_command_answers_json(service: Service) -> None:
    for args in (["vm", "list"], ["vault", "list"], ["policy", "list"], ["job", "list"],
                 ["rp", "list"], ["lock", "list"], ["errors"]):
        data = service.cli_json(*args)
        assert isinstance(data, list), args
    bad = service.cli("vm", "show", "nope", "--json", check=False)
    assert bad.returncode == 1
    err = json.loads(bad.stdout)["error"]
    assert err["code"] == "NotFound" and err["actions"]
    # Human output names the code and the fix.
    human = service.cli("vm", "show", "nope", check=False)
    assert "NotFound" in human.stderr and "fix:" in human.stderr


def test_locks_on_the_restore_point_resource_group(service: Service, sched: str) -> None:
    # The resource group is made when a machine (sched) is first protected.
    rgs = service.client.get("/resource-groups")
    assert [rg["name"] for rg in rgs] == ["FrostpointRG_local_1"]
    service.cli_json("lock", "create", "keep", "--resource-group", "FrostpointRG_local_1")
    assert service.cli_json("lock", "list")[0]["kind"] == "CanNotDelete"
    bad = service.cli("lock", "create", "x", "--resource-group", "FrostpointRG_local_1",
                      "--kind", "Bogus", "--json", check=False)
    assert json.loads(bad.stdout)["error"]["code"] == "InvalidInput"
    service.cli_json("lock", "delete", "keep")
    assert service.cli_json("lock", "list") == []


def test_agent_doctor_and_collect_logs_in_the_guest(service: Service) -> None:
    import tarfile
    m = "guest"
    service.client.post("/machines", {"name": m, "disks": [{"name": "data", "size": "32M"}]})
    service.wait_agent_ready(m)
    out = json.loads(service.exec(m, "frostpoint-agent doctor --json"))  # on the guest's PATH
    checks = {f["check"]: f["status"] for f in out}
    assert checks["network.wire"] == "pass" and checks["network.host"] == "pass"
    assert checks["freeze./mnt/data"] == "pass" and checks["extension.executable"] == "pass"
    # Verbose logging is one switch.
    service.exec(m, "sed -i 's/^Logs.Verbose=.*/Logs.Verbose=y/' /etc/frostpoint/agent.conf")
    service.cli_json("vm", "agent", "restart", m)
    time.sleep(7)
    assert "DEBUG" in (service.guest_file(m, "log") / "agent.log").read_text()
    # The guest writes only its own folders: the tarball is read from its log folder.
    service.exec(m, "frostpoint-agent collect-logs /var/log/frostpoint/logs.tar.gz")
    target = service.guest_file(m, "log") / "logs.tar.gz"
    with tarfile.open(target) as tar:
        names = tar.getnames()
    assert "var/log/frostpoint/agent.log" in names and "doctor.json" in names
    assert not any(n.endswith("agent.token") for n in names), "secrets stay out"
    service.client.delete(f"/machines/{m}")
