"""The CLI as a new user meets it: each test is something a user tried and tripped on
(issue 11), run as they would, `frostpoint ...` against a real service."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import Service, needs_root, running_service

pytestmark = needs_root
M = "ux"  # protected, agent, backed up once by the fixture


@pytest.fixture(scope="module", autouse=True)
def machine(service: Service) -> None:
    service.protected_machine(M)
    job = service.backup(M)
    assert job["status"] == "Completed", job


def cli(service: Service, *args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    """frostpoint ARGS as a person runs it: human output, a terminal COLUMNS wide."""
    return subprocess.run([sys.executable, "-m", "frostpoint.cli.main", *args],
                          env={**service.env, "COLUMNS": str(columns)},
                          capture_output=True, text=True, timeout=300)


def fixes(stderr: str) -> list[str]:
    return [line.split("fix:", 1)[1].strip() for line in stderr.splitlines()
            if line.lstrip().startswith("fix:")]


def last_rp(service: Service, machine: str = M) -> dict[str, Any]:
    return service.client.get("/restore-points", params={"machine": machine})[-1]


# -- IDs ----------------------------------------------------------------------------
def test_ids_are_whole_at_80_columns_and_backup_wait_prints_the_restore_point(
        service: Service) -> None:
    p = cli(service, "backup", "now", M, "--wait")
    assert p.returncode == 0, p.stderr
    rp = last_rp(service)
    assert f"restore point: {rp['id']}" in p.stdout, p.stdout
    listed = cli(service, "rp", "list")
    assert rp["id"] in listed.stdout, listed.stdout
    jobs = cli(service, "job", "list")
    assert rp["job"] in jobs.stdout, jobs.stdout


# -- hints --------------------------------------------------------------------------
def test_a_busy_machine_names_the_running_job_and_the_machine(service: Service) -> None:
    cfg = service.hold_freeze(M, 8)
    try:
        running = service.client.post("/backups", {"machine": M})
        p = cli(service, "backup", "now", M, columns=200)
        assert p.returncode == 1 and "UserErrorBackupOperationInProgress" in p.stderr
        hints = fixes(p.stderr)
        assert f"frostpoint job cancel {running['id']}" in hints, hints
        assert f"frostpoint job list --machine {M}" in hints, hints
        assert not any("MACHINE" in h or "JOB" in h for h in hints), hints
        assert service.wait_job(running["id"])["status"] == "Completed"
    finally:
        cfg.unlink()


@pytest.mark.parametrize("args,hint", [
    (["restore", "files", "nosuchrp", "--path", "a", "--to", "/tmp/fp-ux-none"],
     "frostpoint rp list"),
    (["vault", "delete", "nosuchvault", "--yes"], "frostpoint vault list"),
    (["lock", "create", "l1", "--resource-group", "NoSuchRG"], "frostpoint rg list"),
    (["keyvault", "show", "nosuchkv"], "frostpoint keyvault list"),
    (["job", "show", "nosuchjob"], "frostpoint job list"),
    (["errors", "NoSuchCode"], "frostpoint errors"),
])
def test_not_found_points_at_the_list_of_that_kind(service: Service, args: list[str],
                                                   hint: str) -> None:
    p = cli(service, *args)
    assert p.returncode == 1 and "NotFound" in p.stderr, p.stderr
    assert fixes(p.stderr) == [hint], p.stderr


def test_a_missing_path_says_paths_are_relative_to_the_disk(service: Service,
                                                           tmp_path: Path) -> None:
    p = cli(service, "restore", "files", last_rp(service)["id"], "--path", "/mnt/data/x",
            "--to", str(tmp_path), columns=200)
    assert p.returncode == 1 and "NotFound" in p.stdout + p.stderr
    assert any("relative to the root of the disk" in h for h in fixes(p.stdout + p.stderr))


def test_a_failing_pre_script_points_at_the_script_and_continue_on_failure(
        service: Service) -> None:
    service.exec(M, "printf '#!/bin/sh\\necho broken >&2; exit 2\\n' > /etc/frostpoint/ux.sh;"
                    " chmod 700 /etc/frostpoint/ux.sh")
    cfg = service.script_config(M, json.dumps({"preScriptLocation": "/etc/frostpoint/ux.sh"}))
    try:
        p = cli(service, "backup", "now", M, "--wait", columns=300)
        assert p.returncode == 1 and "Pre-ScriptExecutionFailed" in p.stderr, p.stderr
        hints = fixes(p.stderr)
        assert any(h.startswith(f"frostpoint vm exec {M} -- /etc/frostpoint/ux.sh")
                   for h in hints), hints
        assert any("continueBackupOnFailure" in h for h in hints), hints
        assert any(h.startswith("frostpoint job show ") and "JOB" not in h
                   for h in hints), hints
    finally:
        cfg.unlink()


def test_exec_on_a_stopped_machine_says_vm_start(service: Service) -> None:
    service.client.post("/machines", {"name": "uxstop", "disks": [{"name": "data",
                                                                    "size": "64M"}]})
    try:
        service.cli_json("vm", "stop", "uxstop")
        p = cli(service, "vm", "exec", "uxstop", "--", "true")
        assert p.returncode == 1 and "UserErrorVmNotInDesirableState" in p.stderr
        assert "frostpoint vm start uxstop" in fixes(p.stderr), p.stderr
        service.cli_json("vm", "start", "uxstop")
        service.wait_agent_ready("uxstop")
        # An agent that stopped and stays down: the doctor's fix restarts it and waits
        # for its heartbeat, so the findings after the fix show the fix's effect.
        service.exec("uxstop", "sed -i 's/^Agent.AutoRestart=.*/Agent.AutoRestart=n/' "
                               "/etc/frostpoint/agent.conf; "
                               f"{sys.executable} -m frostpoint.agent.main stop")
        time.sleep(13)  # past the heartbeat limit
        service.exec("uxstop", "sed -i 's/^Agent.AutoRestart=.*/Agent.AutoRestart=y/' "
                               "/etc/frostpoint/agent.conf")
        fixed = json.loads(cli(service, "doctor", "uxstop", "--fix", "--json").stdout)
        assert any(a["check"] == "agent.heartbeat" and "heartbeats again" in a["result"]
                   for a in fixed["applied"]), fixed["applied"]
        heartbeat = next(f for f in fixed["findings"] if f["check"] == "agent.heartbeat")
        assert heartbeat["status"] == "pass", heartbeat
    finally:
        service.client.delete("/machines/uxstop")


# -- the doctor ---------------------------------------------------------------------
def test_doctor_yes_alone_deletes_no_lock_and_check_applies_one_fix(
        service: Service) -> None:
    rg = service.client.get(f"/machines/{M}")["resource_group"]
    service.cli_json("lock", "create", "uxkeep", "--resource-group", rg)
    try:
        out = json.loads(cli(service, "doctor", M, "--fix", "--yes", "--json").stdout)
        [skipped] = [a for a in out["applied"] if a["check"] == "restore_points.locks"]
        assert skipped["result"] == "skipped (risky)", skipped
        assert skipped["apply_with"] == (f"frostpoint doctor {M} --fix --check "
                                         "restore_points.locks --yes")
        assert [lk["name"] for lk in service.client.get("/locks")] == ["uxkeep"]
        # The human output prints that command whole on one line, at any width.
        p = cli(service, "doctor", M, "--fix", columns=40)
        assert skipped["apply_with"] in p.stdout, p.stdout
        assert "fix: frostpoint lock delete uxkeep" in p.stdout, p.stdout
        p = cli(service, "doctor", M, "--fix", "--check", "nosuchcheck")
        assert p.returncode == 1 and "NotFound" in p.stderr and "restore_points.locks" in \
            p.stderr
        one = json.loads(cli(service, "doctor", M, "--fix", "--check", "machine.provisioning",
                             "--json").stdout)
        assert one["applied"] == [{"check": "machine.provisioning",
                                   "result": "nothing to apply: it passes"}], one["applied"]
        cli(service, "doctor", M, "--fix", "--check", "restore_points.locks", "--yes")
        assert service.client.get("/locks") == []
    finally:
        if service.client.get("/locks"):
            service.client.delete("/locks/uxkeep")


# -- output and errors --------------------------------------------------------------
def test_errors_prints_the_catalog_on_stdout(service: Service) -> None:
    p = cli(service, "errors")
    assert p.returncode == 0
    assert "UserErrorFsFreezeFailed" in p.stdout and p.stderr == ""


def _answer_at_prompt(service: Service, answer: str, *args: str) -> tuple[int, str]:
    """Run frostpoint on a terminal and answer its prompt."""
    parent, child = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "frostpoint.cli.main", *args],
                         env={**service.env, "COLUMNS": "120"}, stdin=child, stdout=child,
                         stderr=child, close_fds=True)
    os.close(child)
    out = b""
    deadline = time.monotonic() + 60
    while b"?" not in out and time.monotonic() < deadline:
        if select.select([parent], [], [], 0.5)[0]:
            out += os.read(parent, 4096)
    os.write(parent, answer.encode() + b"\n")
    rc = p.wait(60)
    while select.select([parent], [], [], 0.2)[0]:
        try:
            chunk = os.read(parent, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(parent)
    return rc, out.decode(errors="replace")


def test_a_stopped_machine_can_be_unprotected_and_its_vault_deleted(
        service: Service) -> None:
    c = service.client
    c.post("/machines", {"name": "uxdel", "disks": [{"name": "data", "size": "64M"}]})
    service.cli_json("vault", "create", "uxvault")
    try:
        service.cli_json("protect", "enable", "uxdel", "--vault", "uxvault", "--policy", "p1")
        p = cli(service, "protect", "disable", "uxdel")
        assert p.returncode == 1 and "Conflict" in p.stderr  # stop it first
        assert "frostpoint protect stop uxdel" in p.stderr
        service.cli_json("protect", "stop", "uxdel")
        p = cli(service, "vault", "delete", "uxvault", "--yes")
        assert p.returncode == 1 and "protect disable" in p.stderr, p.stderr
        assert service.cli_json("protect", "disable", "uxdel")["protection_state"] == \
            "NotProtected"
        # "n" at the prompt keeps the vault, and is no error.
        rc, out = _answer_at_prompt(service, "n", "vault", "delete", "uxvault")
        assert rc == 0 and "vault uxvault kept" in out, out
        assert "uxvault" in [v["name"] for v in c.get("/vaults")]
        assert service.cli_json("vault", "delete", "uxvault", "--yes")["deleted"]
    finally:
        c.delete("/machines/uxdel")
        if "uxvault" in [v["name"] for v in c.get("/vaults")]:
            c.delete("/vaults/uxvault")


def test_restore_files_keeps_an_existing_file_without_overwrite(service: Service,
                                                               tmp_path: Path) -> None:
    service.exec(M, "echo first > /mnt/data/keep.txt && sync")
    service.backup(M)
    rp = last_rp(service)["id"]
    (tmp_path / "keep.txt").write_text("mine\n")
    p = cli(service, "restore", "files", rp, "--path", "keep.txt", "--to", str(tmp_path))
    assert p.returncode == 1 and "Conflict" in p.stderr and "--overwrite" in p.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine\n"
    p = cli(service, "restore", "files", rp, "--path", "keep.txt", "--to", str(tmp_path),
            "--overwrite")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "keep.txt").read_text() == "first\n"


def test_restore_vm_checks_the_name_before_it_makes_a_job(service: Service) -> None:
    before = len(service.client.get("/jobs", params={"machine": M}))
    rp = last_rp(service)["id"]
    for bad, code in (("Bad_Name", "InvalidInput"), (M, "Conflict")):
        p = cli(service, "restore", "vm", rp, "--name", bad)
        assert p.returncode == 1 and code in p.stderr, p.stderr
    assert len(service.client.get("/jobs", params={"machine": M})) == before


def test_a_restore_says_which_source_auto_picked_and_images_get_one_mode(
        service: Service, tmp_path: Path) -> None:
    rp = last_rp(service)
    assert rp["tier"] == "Snapshot and Vault", rp
    p = cli(service, "restore", "disks", rp["id"], "--to", str(tmp_path / "auto"))
    assert p.returncode == 0, p.stderr
    assert "source: instant (picked by --source auto)" in p.stdout, p.stdout
    j = service.cli_json("restore", "disks", rp["id"], "--to", str(tmp_path / "vault"),
                         "--source", "vault")
    assert j["details"]["source"] == "vault" and j["details"]["source_requested"] == "vault"
    modes = {tier: stat.S_IMODE(os.stat(tmp_path / tier / "data.img").st_mode)
             for tier in ("auto", "vault")}
    assert modes == {"auto": 0o600, "vault": 0o600}, modes


# -- docs and help ------------------------------------------------------------------
def test_a_too_small_disk_says_the_minimum(service: Service) -> None:
    p = cli(service, "vm", "create", "uxtiny", "--disk", "data:8M", columns=200)
    assert p.returncode == 1 and "16 MiB" in p.stderr, p.stderr


# -- stopping -----------------------------------------------------------------------
def test_server_stops_within_seconds_of_sigterm_and_says_so() -> None:
    gen = running_service()
    svc = next(gen)
    try:
        svc.protected_machine("uxsig")  # an agent polling the wire endpoint
        time.sleep(2)
        assert svc.proc is not None
        t0 = time.monotonic()
        svc.proc.send_signal(signal.SIGTERM)
        svc.proc.wait(20)
        took = time.monotonic() - t0
        assert took < 3, f"took {took:.1f} s"
        assert "frostpoint server stopped" in svc.log_tail()
        svc.start()  # for the teardown to delete the machine
    finally:
        gen.close()
