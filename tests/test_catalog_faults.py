"""Every catalog code from its real fault: make the fault on a sandbox machine, see the
code on the failed job and in the doctor's findings, apply the recommended action,
and see the next backup succeed. No fault is faked by a flag or a patched function."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import Service, needs_root

pytestmark = needs_root
M = "flt"


def doctor(service: Service, *args: str) -> dict[str, Any]:
    p = service.cli("doctor", M, "--json", *args, check=False)
    return json.loads(p.stdout)


def fix_risky(service: Service, report: dict[str, Any]) -> None:
    """Apply each failing risky fix of the report, one --check at a time (--yes alone
    applies none of them)."""
    risky = [f["check"] for f in report["findings"]
             if f["status"] == "fail" and f["risky"] and f["remedy"]]
    assert risky, report
    for check in risky:
        doctor(service, "--fix", "--check", check, "--yes")


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
    service.exec(M, "frostpoint-agent stop")
    time.sleep(13)  # past the heartbeat limit
    failed_with(service, "UserErrorGuestAgentStatusUnavailable")
    report = doctor(service)
    assert "UserErrorGuestAgentStatusUnavailable" in codes_found(report)
    assert any(f["check"] == "guest.agent.supervisor" and f["status"] == "fail"
               for f in report["findings"]), "the doctor names the supervisor that gave up"
    guest_config(service, "Agent.AutoRestart", "y")
    fixed = doctor(service, "--fix")  # agent restart is a safe fix
    assert any(a["check"] == "agent.heartbeat" for a in fixed["applied"])
    # The doctor waited for the restarted agent's heartbeat before it looked again.
    heartbeat = next(f for f in fixed["findings"] if f["check"] == "agent.heartbeat")
    assert heartbeat["status"] == "pass", heartbeat
    succeeds(service)


def test_no_lease_to_discover_the_fabric_gives_guest_agent_status_unavailable(
        service: Service) -> None:
    # The agent finds the fabric from the machine's lease (its default route); a
    # machine without one leaves a restarted agent unable to find the endpoint.
    service.exec(M, "ip route del default")
    service.cli_json("vm", "agent", "restart", M)
    time.sleep(13)  # past the heartbeat limit
    failed_with(service, "UserErrorGuestAgentStatusUnavailable")
    log = (service.guest_file(M, "log") / "agent.log").read_text()
    assert "no default route" in log
    report = doctor(service)
    disc = next(f for f in report["findings"] if f["check"] == "guest.network.discovery")
    assert disc["status"] == "fail" and disc["code"] == "UserErrorGuestAgentStatusUnavailable"
    assert "no default route" in disc["message"] and not disc["risky"]
    doctor(service, "--fix")  # names the fabric's well-known address: safe
    assert "Endpoint.Address=10.213.0.1" in service.exec(M, "cat /etc/frostpoint/agent.conf")
    succeeds(service)
    # Back to discovery, lease restored, for the tests after this one.
    service.exec(M, "ip route add default via 10.213.0.1")
    guest_config(service, "Endpoint.Address", "auto")
    service.cli_json("vm", "agent", "restart", M)
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
    fix_risky(service, report)
    assert "Extensions.Enabled=y" in service.exec(M, "cat /etc/frostpoint/agent.conf")
    succeeds(service)


def test_noexec_extension_dir_gives_snapshot_task_status_error(service: Service) -> None:
    # The guest cannot mount (seccomp): the host remounts it, as an admin's fstab would.
    from frostpoint.fabric.system import guest_helper
    subprocess.run(guest_helper("remount", "--mntns", str(service.data_dir / "run" / "mntns" / M),
                                "/var/lib/frostpoint-agent", "noexec"), check=True)
    job = failed_with(service, "GuestAgentSnapshotTaskStatusError")
    assert "cannot execute" in job["error"]["message"]
    report = doctor(service)
    exe = next(f for f in report["findings"] if f["check"] == "guest.extension.executable")
    assert exe["status"] == "fail" and "noexec" in exe["message"]
    fix_risky(service, report)
    succeeds(service)


def test_host_port_blocked_gives_no_network(service: Service) -> None:
    service.exec(M, "iptables -A OUTPUT -d 10.213.0.1 -p tcp --dport 32526 -j DROP")
    failed_with(service, "ExtensionSnapshotFailedNoNetwork")
    report = doctor(service)
    assert "ExtensionSnapshotFailedNoNetwork" in codes_found(report)
    assert service.data_disk_writable(M, 2), "the failed snapshot left the disk frozen"
    fix_risky(service, report)
    assert "32526" not in service.exec(M, "iptables -S OUTPUT")
    succeeds(service)


def test_filesystem_frozen_by_someone_else_gives_fs_freeze_failed(service: Service) -> None:
    service.exec(M, "fsfreeze -f /mnt/data")
    try:
        failed_with(service, "UserErrorFsFreezeFailed")
        report = doctor(service)
        assert "UserErrorFsFreezeFailed" in codes_found(report)
        doctor(service, "--fix")  # thawing is safe
        assert service.data_disk_writable(M, 2)
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
    cfg = service.hold_freeze(M, 15)
    job = service.client.post("/backups", {"machine": M})
    assert service.wait_frozen(M)
    for pid in service.snapshot_extension_pids(M):
        os.kill(pid, 9)  # what security software does
    done = service.wait_job(job["id"], timeout=60)
    assert done["error"]["code"] == "ExtensionOperationFailedForManagedDisks"
    ext = next(f for f in doctor(service)["findings"]
               if f["check"] == "extension.Frostpoint.Backup.Snapshot")
    assert ext["status"] == "fail" and "security software" in ext["message"]
    cfg.unlink()
    succeeds(service)  # an on-demand backup reinstalls/re-runs the snapshot extension


def install_fault_scripts(service: Service) -> None:
    """A script others may write (loose.sh), a slow one, and a failing one that counts
    its runs in /tmp/script-runs."""
    service.exec(M, "printf '#!/bin/sh\\nexit 0\\n' > /etc/frostpoint/loose.sh; "
                    "chmod 777 /etc/frostpoint/loose.sh; "
                    "printf '#!/bin/sh\\nsleep 5\\n' > /etc/frostpoint/slow.sh; "
                    "printf '#!/bin/sh\\necho n >> /tmp/script-runs; echo broken >&2; "
                    "exit 2\\n' > /etc/frostpoint/fail.sh; rm -f /tmp/script-runs; "
                    "chmod 700 /etc/frostpoint/slow.sh /etc/frostpoint/fail.sh")


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
    install_fault_scripts(service)
    cfg = service.script_config(M, config)
    try:
        failed_with(service, code)
        if code in ("Pre-ScriptNotFound", "InsufficientPermissionforPre-Script",
                    "IncorrectJSONConfigFile"):
            assert code in codes_found(doctor(service))
    finally:
        cfg.unlink()
    succeeds(service)


@pytest.mark.parametrize("config,code", [
    ('{"postScriptLocation": "/etc/frostpoint/none.sh"}', "Post-ScriptNotFound"),
    ('{"postScriptLocation": "/etc/frostpoint/loose.sh"}',
     "InsufficientPermissionforPost-Script"),
    ('{"postScriptLocation": "/etc/frostpoint/slow.sh", "timeoutInSeconds": 1}',
     "Post-ScriptTimeout"),
    ('{"postScriptLocation": "/etc/frostpoint/fail.sh", "postScriptNoOfRetries": 1}',
     "Post-ScriptExecutionFailed"),
])
def test_post_script_faults_are_warnings_on_a_kept_restore_point(
        service: Service, config: str, code: str) -> None:
    # After the snapshot a failed post-script cannot unmake it: the restore point stands
    # and the job completes with the script's code as a warning.
    service.cli_json("rp", "delete-collection", M)  # this module's backups stay under 18
    install_fault_scripts(service)
    cfg = service.script_config(M, config)
    try:
        job = service.backup(M)
        assert job["status"] == "CompletedWithWarnings", job
        assert [w["code"] for w in job["warnings"]] == [code]
        assert job["warnings"][0]["actions"], "a warning names its fix too"
        assert job["details"]["consistency"] == "FileSystemConsistent"
        rp = job["details"]["restore_point"]
        assert any(r["id"] == rp for r in service.client.get(
            "/restore-points", params={"machine": M}))
        if code == "Post-ScriptExecutionFailed":  # retried once as configured
            assert service.exec(M, "cat /tmp/script-runs").split() == ["n", "n"]
        if code in ("Post-ScriptNotFound", "InsufficientPermissionforPost-Script"):
            assert code in codes_found(doctor(service))
    finally:
        cfg.unlink()
    job = service.backup(M)
    assert job["status"] == "Completed" and not job["warnings"], (job["error"], job["warnings"])


def test_a_script_longer_than_the_backup_may_wait_ends_as_a_script_timeout(
        service: Service) -> None:
    # timeoutInSeconds allows 30 min, but the service waits 25 s for the extension: the
    # script is stopped within that wait and named, not left to make the extension silent.
    service.exec(M, "printf '#!/bin/sh\\nexec sleep 300\\n' > /etc/frostpoint/long.sh; "
                    "chmod 700 /etc/frostpoint/long.sh")
    cfg = service.script_config(M, '{"preScriptLocation": "/etc/frostpoint/long.sh", '
                                   '"timeoutInSeconds": 1800}')
    try:
        t0 = time.monotonic()
        job = failed_with(service, "Pre-ScriptTimeout")
        assert time.monotonic() - t0 < 25, "within the service's extension wait"
        assert "the backup's deadline" in job["error"]["message"]
    finally:
        cfg.unlink()
    succeeds(service)


def test_loose_script_config_is_refused(service: Service) -> None:
    cfg = service.script_config(M, "{}", 0o666)
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


def test_disk_over_the_size_limit_gives_unsupported_disk_size(service: Service) -> None:
    service.client.post("/machines", {"name": "big", "disks": [
        {"name": "data", "size": "64M"}, {"name": "huge", "size": "33T",
                                          "filesystem": "xfs"}]})
    vault = service.client.get("/vaults")[0]["name"]
    policy = service.client.get("/policies")[0]["name"]
    service.client.post("/protection/enable", {"machine": "big", "vault": vault,
                                               "policy": policy})
    job = service.backup("big")
    assert job["status"] == "Failed" and job["error"]["code"] == "UserErrorUnsupportedDiskSize"
    report = json.loads(service.cli("doctor", "big", "--json", check=False).stdout)
    assert "UserErrorUnsupportedDiskSize" in codes_found(report)
    service.cli_json("vm", "disk", "delete", "big", "huge")  # split: the data moves away
    service.wait_agent_ready("big")
    assert service.backup("big")["status"] == "Completed"
    service.client.delete("/machines/big")


def test_disk_gone_from_the_platform_gives_crp_reported_user_error(service: Service) -> None:
    name = "extra"
    # A second disk, then its image vanishes from the pool (detached out of band).
    c = service.client
    c.post("/machines", {"name": "crp", "disks": [{"name": "data", "size": "32M"},
                                                  {"name": name, "size": "32M"}]})
    c.post("/protection/enable", {"machine": "crp", "vault": c.get("/vaults")[0]["name"],
                                  "policy": c.get("/policies")[0]["name"]})
    service.wait_agent_ready("crp")
    image = service.data_dir / "pool" / "disks" / "crp" / f"{name}.img"
    image.unlink()
    job = service.backup("crp")
    assert job["status"] == "Failed", job
    err = job["error"]
    assert err["code"] == "UserErrorCrpReportedUserError"
    assert err["details"]["inner_error"]["code"] == "DiskNotFound"
    report = json.loads(service.cli("doctor", "crp", "--json", check=False).stdout)
    assert "UserErrorCrpReportedUserError" in codes_found(report)
    service.cli_json("vm", "disk", "delete", "crp", name)  # what the inner error says
    assert service.backup("crp")["status"] == "Completed"
    c.delete("/machines/crp")


def test_vault_storage_fault_gives_backup_operation_failed(service: Service) -> None:
    vault = Path(service.client.get("/vaults")[0]["location"])
    service.exec(M, "head -c 3000000 /dev/urandom > /mnt/data/new-data.bin")
    subprocess.run(["chattr", "-R", "+i", str(vault)], check=True)
    try:
        job = service.backup(M)
        # The snapshot stands (an instant restore point); the transfer failed.
        assert job["status"] == "CompletedWithWarnings", job
        assert [w["code"] for w in job["warnings"]] == ["BackUpOperationFailed"]
        report = doctor(service)
        assert "BackUpOperationFailed" in codes_found(report)
    finally:
        subprocess.run(["chattr", "-R", "-i", str(vault)], check=True)
    assert service.backup(M)["status"] == "Completed"
    name = service.client.get("/vaults")[0]["name"]
    assert service.cli_json("vault", "verify", name)["details"]["report"]["ok"]


def test_machine_without_agent_needs_an_install(service: Service) -> None:
    c = service.client
    service.cli_json("vm", "create", "noagent", "--disk", "data:32M", "--no-agent")
    c.post("/protection/enable", {"machine": "noagent", "vault": c.get("/vaults")[0]["name"],
                                  "policy": c.get("/policies")[0]["name"]})
    job = service.backup("noagent")
    assert job["error"]["code"] == "UserErrorGuestAgentStatusUnavailable"
    report = json.loads(service.cli("doctor", "noagent", "--json", check=False).stdout)
    found = next(f for f in report["findings"] if f["check"] == "agent.installed")
    assert found["status"] == "fail" and "agent install" in found["fix"][0]
    service.cli("doctor", "noagent", "--fix", "--json", check=False)  # installs it
    service.wait_agent_ready("noagent")
    assert service.backup("noagent")["status"] == "Completed"
    c.delete("/machines/noagent")


def test_machine_powered_off_from_inside_is_noticed(service: Service) -> None:
    from frostpoint.fabric.network import FabricNetwork
    from frostpoint.service.runtime import instance_id
    net = FabricNetwork(instance_id(service.data_dir))
    for pid in net.pids_in(net.machine_ns(M)):  # what `poweroff` in the guest does
        os.kill(pid, 9)
    assert service.cli_json("vm", "show", M)["power_state"] == "Running"  # looks Running
    report = doctor(service)
    power = next(f for f in report["findings"] if f["check"] == "machine.power")
    assert power["status"] == "fail" and "powered off from inside" in power["message"]
    time.sleep(13)
    failed_with(service, "UserErrorGuestAgentStatusUnavailable")
    doctor(service, "--fix")  # starting the machine is safe
    succeeds(service)


def test_restarts_asked_for_are_not_crashes(service: Service) -> None:
    # The supervisor gives up after 5 crashes in 60 s; restarts an operator (or the
    # doctor) asks for must not count toward that.
    for _ in range(6):
        service.cli_json("vm", "agent", "restart", M)
    sup = service.guest_file(M, "lib") / "supervisor.json"
    assert not (sup.exists() and "gave_up" in sup.read_text()), sup.read_text()
    succeeds(service)


def test_crash_looping_agent_is_reported(service: Service) -> None:
    guest_config(service, "Agent.TokenFile", "\\/etc\\/frostpoint\\/missing.token")
    service.cli_json("vm", "agent", "restart", M)
    sup = service.guest_file(M, "lib") / "supervisor.json"
    deadline = time.monotonic() + 40
    while not (sup.exists() and "gave_up" in sup.read_text()):
        assert time.monotonic() < deadline, "the supervisor never gave up"
        time.sleep(0.5)
    time.sleep(13)
    failed_with(service, "UserErrorGuestAgentStatusUnavailable")
    report = doctor(service)
    sv = next(f for f in report["findings"] if f["check"] == "guest.agent.supervisor")
    assert sv["status"] == "fail" and "crashed 5 times" in sv["message"]
    guest_config(service, "Agent.TokenFile", "\\/etc\\/frostpoint\\/agent.token")
    service.cli_json("vm", "agent", "restart", M)
    succeeds(service)


def test_backup_during_a_power_off_gives_vm_not_in_desirable_state(service: Service) -> None:
    # A guest process that takes its time to shut down (as a database flushing does):
    # it ignores SIGTERM, so the power-off waits out the guest's grace with the machine
    # in provisioning Updating.
    service.exec(M, "setsid sh -c 'trap \"\" TERM; exec sleep 120' "
                    "</dev/null >/dev/null 2>&1 &")
    stopping = threading.Thread(target=service.cli_json, args=("vm", "stop", M))
    stopping.start()
    try:
        deadline = time.monotonic() + 5
        while service.cli_json("vm", "show", M)["provisioning_state"] != "Updating":
            assert time.monotonic() < deadline, "the stop never showed Updating"
            time.sleep(0.05)
        job = failed_with(service, "UserErrorVmNotInDesirableState")
        assert job["error"]["details"]["provisioning_state"] == "Updating"
        found = service.client.get(f"/machines/{M}/doctor")
        assert any(f["code"] == "UserErrorVmNotInDesirableState" and f["status"] == "fail"
                   for f in found), found
    finally:
        stopping.join(timeout=60)
    # The action: wait for the operation to end, then back up again.
    shown = service.cli_json("vm", "show", M)
    assert (shown["provisioning_state"], shown["power_state"]) == ("Succeeded", "Stopped")
    job = service.backup(M)
    assert job["status"] == "Completed" and job["details"]["consistency"] == "CrashConsistent"
    service.cli_json("vm", "start", M)
    succeeds(service)


def test_agent_below_the_minimum_version_gives_snapshot_task_status_error(
        service: Service) -> None:
    c = service.client
    # A machine from an image that carries an old agent release.
    service.cli_json("vm", "create", "oldagent", "--disk", "data:32M",
                     "--agent-version", "0.0.9")
    c.post("/protection/enable", {"machine": "oldagent", "vault": c.get("/vaults")[0]["name"],
                                  "policy": c.get("/policies")[0]["name"]})
    service.wait_agent_ready("oldagent")
    assert service.cli_json("vm", "show", "oldagent")["agent"]["version"] == "0.0.9"
    t0 = time.monotonic()
    job = service.backup("oldagent")
    assert job["status"] == "Failed"
    assert job["error"]["code"] == "GuestAgentSnapshotTaskStatusError"
    assert job["error"]["details"]["agent_version"] == "0.0.9"
    assert time.monotonic() - t0 < 20, "known at once, not after the extension wait"
    report = json.loads(service.cli("doctor", "oldagent", "--json", check=False).stdout)
    found = next(f for f in report["findings"] if f["check"] == "agent.version")
    assert found["status"] == "fail" and found["code"] == "GuestAgentSnapshotTaskStatusError"
    assert "agent install oldagent" in found["fix"][0]
    service.cli("doctor", "oldagent", "--fix", "--json", check=False)  # updates the agent
    from frostpoint import __version__
    assert service.cli_json("vm", "show", "oldagent")["agent"]["version"] == __version__
    assert service.backup("oldagent")["status"] == "Completed"
    c.delete("/machines/oldagent")


def test_protection_stopped_gives_bcm_datasource_not_present(service: Service) -> None:
    service.cli_json("protect", "stop", M)
    p = service.cli("backup", "now", M, "--json", check=False)
    err = json.loads(p.stdout)["error"]
    assert p.returncode == 1 and err["code"] == "UserErrorBcmDatasourceNotPresent"
    assert err["details"]["protection_state"] == "ProtectionStopped" and err["actions"]
    report = doctor(service)
    assert "UserErrorBcmDatasourceNotPresent" in codes_found(report)
    fixed = doctor(service, "--fix")  # protect resume is safe
    assert any(a["check"] == "protection" for a in fixed["applied"])
    succeeds(service)


def test_a_second_backup_while_one_runs_gives_backup_operation_in_progress(
        service: Service) -> None:
    cfg = service.hold_freeze(M, 15)
    first = service.client.post("/backups", {"machine": M})
    try:
        assert service.wait_frozen(M)
        p = service.cli("backup", "now", M, "--json", check=False)
        err = json.loads(p.stdout)["error"]
        assert err["code"] == "UserErrorBackupOperationInProgress"
        assert err["details"]["running_job"] == first["id"]
        jobs = [f for f in doctor(service)["findings"] if f["check"] == "jobs"]
        assert [f["code"] for f in jobs] == ["UserErrorBackupOperationInProgress"]
        assert jobs[0]["fix"] == [f"frostpoint job cancel {first['id']}"]
        service.cli_json("job", "cancel", first["id"])  # the recommended action
        done = service.wait_job(first["id"], timeout=60)
        assert done["status"] == "Cancelled", done
    finally:
        cfg.unlink()
    succeeds(service)
