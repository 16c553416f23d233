"""Every catalog code from its real fault: make the fault on a sandbox machine, see the
code on the failed job and in the doctor's findings, apply the recommended action,
and see the next backup succeed. No fault is faked by a flag or a patched function."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import pytest

from conftest import Service, needs_root

pytestmark = needs_root
M = "flt"


def doctor(service: Service, *args: str) -> dict[str, Any]:
    p = service.cli("doctor", M, "--json", *args, check=False)
    return json.loads(p.stdout)


def codes_found(report: dict[str, Any]) -> set[str]:
    return {f["code"] for f in report["findings"] if f["status"] == "fail" and f["code"]}


def failed_with(service: Service, code: str) -> dict[str, Any]:
    job = service.backup(M, timeout=120)
    assert job["status"] == "Failed", job
    err = job["error"]
    assert err["code"] == code, err
    assert err["message"] and err["causes"] and err["actions"], err
    return job


def succeeds(service: Service) -> None:
    service.wait_agent_ready(M, timeout=40)
    job = service.backup(M)
    assert job["status"] in ("Completed", "CompletedWithWarnings"), job.get("error")


@pytest.fixture(scope="module", autouse=True)
def machine(service: Service) -> None:
    service.protected_machine(M)
    succeeds(service)  # the snapshot extension is installed by the first backup


def guest_config(service: Service, key: str, value: str) -> None:
    service.exec(M, f"sed -i 's/^{key}=.*/{key}={value}/' /etc/frostpoint/agent.conf")


def test_agent_down_gives_guest_agent_status_unavailable(service: Service) -> None:
    guest_config(service, "Agent.AutoRestart", "n")
    service.exec(M, "$PY -m frostpoint.agent.main stop".replace("$PY", sys.executable))
    time.sleep(13)  # past the heartbeat limit
    failed_with(service, "UserErrorGuestAgentStatusUnavailable")
    report = doctor(service)
    assert "UserErrorGuestAgentStatusUnavailable" in codes_found(report)
    assert any(f["check"] == "guest.agent.supervisor" and f["status"] == "fail"
               for f in report["findings"]), "the doctor names the supervisor that gave up"
    guest_config(service, "Agent.AutoRestart", "y")
    fixed = doctor(service, "--fix")  # agent restart is a safe fix
    assert any(a["check"] == "agent.heartbeat" for a in fixed["applied"])
    succeeds(service)


def test_extensions_disabled_gives_snapshot_task_status_error(service: Service) -> None:
    guest_config(service, "Extensions.Enabled", "n")
    service.cli_json("vm", "agent", "restart", M)
    service.wait_agent_ready(M)
    t0 = time.monotonic()
    failed_with(service, "GuestAgentSnapshotTaskStatusError")
    assert time.monotonic() - t0 < 60, "bounded by the extension wait, not forever"
    report = doctor(service)
    assert "GuestAgentSnapshotTaskStatusError" in codes_found(report)
    # The fix changes the guest's config: risky, applied only with --yes.
    assert any(a["result"] == "skipped (risky)" for a in doctor(service, "--fix")["applied"])
    doctor(service, "--fix", "--yes")
    assert "Extensions.Enabled=y" in service.exec(M, "cat /etc/frostpoint/agent.conf")
    succeeds(service)


def test_noexec_extension_dir_gives_snapshot_task_status_error(service: Service) -> None:
    service.exec(M, "mount -o remount,bind,noexec /var/lib/frostpoint-agent")
    job = failed_with(service, "GuestAgentSnapshotTaskStatusError")
    assert "cannot execute" in job["error"]["message"]
    report = doctor(service)
    exe = next(f for f in report["findings"] if f["check"] == "guest.extension.executable")
    assert exe["status"] == "fail" and "noexec" in exe["message"]
    doctor(service, "--fix", "--yes")
    succeeds(service)


def test_host_port_blocked_gives_no_network(service: Service) -> None:
    service.exec(M, "iptables -A OUTPUT -d 10.213.0.1 -p tcp --dport 32526 -j DROP")
    failed_with(service, "ExtensionSnapshotFailedNoNetwork")
    report = doctor(service)
    assert "ExtensionSnapshotFailedNoNetwork" in codes_found(report)
    assert _writable(service), "the failed snapshot left the disk frozen"
    doctor(service, "--fix", "--yes")
    assert "32526" not in service.exec(M, "iptables -S OUTPUT")
    succeeds(service)


def _writable(service: Service) -> bool:
    r = service.client.post(f"/machines/{M}/exec", {"argv": [
        "timeout", "2", "sh", "-c", "echo x > /mnt/data/w && sync /mnt/data/w"]})
    return r["returncode"] == 0


def test_filesystem_frozen_by_someone_else_gives_fs_freeze_failed(service: Service) -> None:
    service.exec(M, "fsfreeze -f /mnt/data")
    try:
        failed_with(service, "UserErrorFsFreezeFailed")
        report = doctor(service)
        assert "UserErrorFsFreezeFailed" in codes_found(report)
        doctor(service, "--fix")  # thawing is safe
        assert _writable(service)
    finally:
        service.exec(M, "fsfreeze -u /mnt/data 2>/dev/null; true")
    succeeds(service)


def test_failed_custom_extension_gives_provisioning_state_failed(service: Service) -> None:
    service.cli_json("vm", "extension", "set", M, "Frostpoint.CustomScript",
                     "--command", "echo installing; exit 3")
    deadline = time.monotonic() + 30
    while service.cli_json("vm", "show", M)["provisioning_state"] != "Failed":
        assert time.monotonic() < deadline, "the failed extension did not fail the machine"
        time.sleep(0.3)
    failed_with(service, "UserErrorVmProvisioningStateFailed")
    report = doctor(service)
    assert "UserErrorVmProvisioningStateFailed" in codes_found(report)
    service.cli_json("vm", "extension", "remove", M, "Frostpoint.CustomScript")
    assert service.cli_json("vm", "show", M)["provisioning_state"] == "Succeeded"
    succeeds(service)


def test_extension_killed_from_outside_is_named_by_the_doctor(service: Service) -> None:
    cfg = service.guest_file(M, "etc") / "vmbackup.json"
    cfg.write_text('{"holdFrozenSeconds": 15}')
    os.chmod(cfg, 0o600)
    job = service.client.post("/backups", {"machine": M})
    marker = service.guest_file(M, "lib") / "frozen.json"
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for pid_file in service.guest_file(M, "lib").glob("Frostpoint.Backup.Snapshot-*/status/*.pid"):
        os.kill(int(pid_file.read_text()), 9)  # what security software does
    done = service.wait_job(job["id"], timeout=60)
    assert done["error"]["code"] == "ExtensionOperationFailedForManagedDisks"
    ext = next(f for f in doctor(service)["findings"]
               if f["check"] == "extension.Frostpoint.Backup.Snapshot")
    assert ext["status"] == "fail" and "security software" in ext["message"]
    cfg.unlink()
    succeeds(service)  # an on-demand backup reinstalls/re-runs the snapshot extension


@pytest.mark.parametrize("config,code", [
    ('{"preScriptLocation": "/etc/frostpoint/none.sh"}', "Pre-ScriptNotFound"),
    ('{"preScriptLocation": "/etc/frostpoint/loose.sh"}',
     "InsufficientPermissionforPre-Script"),
    ('{"preScriptLocation": "/etc/frostpoint/slow.sh", "timeoutInSeconds": 1}',
     "Pre-ScriptTimeout"),
    ('{"preScriptLocation": "/etc/frostpoint/fail.sh"}', "Pre-ScriptExecutionFailed"),
    ('{"preScriptLocation": ', "IncorrectJSONConfigFile"),
])
def test_script_faults(service: Service, config: str, code: str) -> None:
    service.exec(M, "printf '#!/bin/sh\\nexit 0\\n' > /etc/frostpoint/loose.sh; "
                    "chmod 777 /etc/frostpoint/loose.sh; "
                    "printf '#!/bin/sh\\nsleep 5\\n' > /etc/frostpoint/slow.sh; "
                    "printf '#!/bin/sh\\necho broken >&2; exit 2\\n' > /etc/frostpoint/fail.sh; "
                    "chmod 700 /etc/frostpoint/slow.sh /etc/frostpoint/fail.sh")
    cfg = service.guest_file(M, "etc") / "vmbackup.json"
    cfg.write_text(config)
    os.chmod(cfg, 0o600)
    try:
        failed_with(service, code)
        if code in ("Pre-ScriptNotFound", "InsufficientPermissionforPre-Script",
                    "IncorrectJSONConfigFile"):
            assert code in codes_found(doctor(service))
    finally:
        cfg.unlink()
    succeeds(service)


def test_loose_script_config_is_refused(service: Service) -> None:
    cfg = service.guest_file(M, "etc") / "vmbackup.json"
    cfg.write_text("{}")
    os.chmod(cfg, 0o666)
    try:
        failed_with(service, "IncorrectJSONConfigFile")
    finally:
        cfg.unlink()


def test_eighteen_restore_points_and_a_lock_give_collection_limit(service: Service) -> None:
    c = service.client
    rg = c.get("/resource-groups")[0]["name"]
    service.cli_json("lock", "create", "hold", "--resource-group", rg)
    have = len([r for r in c.get("/restore-points", params={"machine": M})
                if r["tier"] != "Vault"])
    for _ in range(18 - have):
        succeeds(service)
    job = failed_with(service, "UserErrorRpCollectionLimitReached")
    assert "hold" in job["error"]["message"]
    report = doctor(service)
    assert "UserErrorRpCollectionLimitReached" in codes_found(report)
    # With the lock on, the collection cannot be deleted either.
    p = service.cli("rp", "delete-collection", M, "--json", check=False)
    assert json.loads(p.stdout)["error"]["code"] == "BackUpOperationFailedV2"
    # The fix: remove the lock, delete the collection; the next backup works.
    service.cli_json("lock", "delete", "hold")
    first = c.get("/restore-points", params={"machine": M})[0]["id"]
    assert service.cli_json("rp", "delete-collection", M)["deleted"] == 18
    assert service.cli_json("rp", "delete-collection", M)["deleted"] == 0  # idempotent
    succeeds(service)
    # The deleted snapshots are gone for instant restore; the vault copy remains.
    p = service.cli("restore", "disks", first, "--to", "/tmp/fp-none", "--source",
                    "instant", "--json", check=False)
    assert json.loads(p.stdout)["error"]["code"] == "UserErrorInstantRpNotFound"
