"""Pre/post scripts around the freeze, the freeze watchdog, and one backup at a time."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from conftest import Service, needs_root

pytestmark = needs_root

SCRIPTS = r"""
mkdir -p /etc/frostpoint/scripts
cat > /etc/frostpoint/scripts/pre.sh <<'EOF'
#!/bin/sh
date +%s.%N > /mnt/data/pre-ran
exit ${PRE_EXIT:-0}
EOF
cat > /etc/frostpoint/scripts/post.sh <<'EOF'
#!/bin/sh
date +%s.%N > /mnt/data/post-ran
EOF
chmod 700 /etc/frostpoint/scripts/*.sh
"""


def script_config(service: Service, machine: str, **cfg: object) -> None:
    import json
    body = {"preScriptLocation": "/etc/frostpoint/scripts/pre.sh",
            "postScriptLocation": "/etc/frostpoint/scripts/post.sh",
            "timeoutInSeconds": 30, **cfg}
    service.script_config(machine, json.dumps(body))


def files_in_snapshot(service: Service, rp_id: str, tmp: Path) -> set[str]:
    out = tmp / rp_id
    j = service.cli_json("restore", "disks", rp_id, "--to", str(out), "--source", "instant")
    assert j["status"] == "Completed", j
    mnt = Path(tempfile.mkdtemp(prefix="fp-snap-"))
    subprocess.run(["mount", "-o", "loop,ro,noload", str(out / "data.img"), str(mnt)],
                   check=True)
    try:
        return {p.name for p in mnt.iterdir()}
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
        mnt.rmdir()


def test_scripts_run_around_the_freeze(service: Service, tmp_path: Path) -> None:
    m = "scr"
    service.protected_machine(m)
    service.exec(m, SCRIPTS)
    script_config(service, m)
    job = service.backup(m)
    assert job["status"] == "Completed", job
    assert job["details"]["consistency"] == "ApplicationConsistent"
    names = files_in_snapshot(service, job["details"]["restore_point"], tmp_path)
    # The pre-script ran before the snapshot, the post-script only after it.
    assert "pre-ran" in names and "post-ran" not in names
    assert service.exec(m, "cat /mnt/data/post-ran").strip()


def test_failing_pre_script_with_continue_gives_file_system_consistency(
        service: Service) -> None:
    m = "scr"
    service.exec(m, "sed -i 's/PRE_EXIT:-0/PRE_EXIT:-3/' /etc/frostpoint/scripts/pre.sh")
    script_config(service, m, continueBackupOnFailure=True)
    job = service.backup(m)
    assert job["status"] == "CompletedWithWarnings", job
    assert job["details"]["consistency"] == "FileSystemConsistent"
    assert [w["code"] for w in job["warnings"]] == ["Pre-ScriptExecutionFailed"]
    rp = service.client.get("/restore-points", params={"machine": m})[-1]
    assert rp["consistency"] == "FileSystemConsistent"


def test_failing_pre_script_without_continue_fails_the_backup(service: Service) -> None:
    m = "scr"
    script_config(service, m, continueBackupOnFailure=False)
    job = service.backup(m)
    assert job["status"] == "Failed"
    assert job["error"]["code"] == "Pre-ScriptExecutionFailed"
    assert job["error"]["actions"], "a failed job names the commands that fix it"
    # Fix the script: the next backup succeeds.
    service.exec(m, "sed -i 's/PRE_EXIT:-3/PRE_EXIT:-0/' /etc/frostpoint/scripts/pre.sh")
    assert service.backup(m)["status"] == "Completed"


def test_kill_9_extension_while_frozen_thaws_and_fails_the_job(service: Service) -> None:
    m = "frz"
    service.protected_machine(m)
    cfg = service.hold_freeze(m, 20)
    job = service.client.post("/backups", {"machine": m})
    assert service.wait_frozen(m), "the freeze never started"
    marker = service.guest_file(m, "lib") / "frozen.json"
    time.sleep(0.3)
    assert not service.data_disk_writable(m, 1), "the data disk should be frozen now"
    ext = service.snapshot_extension_pids(m)
    assert ext, "the snapshot extension is not running"
    killed_at = time.monotonic()
    for pid in ext:
        os.kill(pid, signal.SIGKILL)
    while not service.data_disk_writable(m, 1):
        assert time.monotonic() - killed_at < 10, "still frozen after the watchdog limit"
        time.sleep(0.1)
    thawed_in = time.monotonic() - killed_at
    assert thawed_in < 5
    done = service.wait_job(job["id"], timeout=90)
    assert done["status"] == "Failed"
    assert done["error"]["code"] == "ExtensionOperationFailedForManagedDisks"
    assert "signal 9" in done["error"]["message"]
    assert not marker.exists()
    # The fix: retry; the next backup succeeds.
    cfg.unlink()
    assert service.backup(m)["status"] == "Completed"


def test_two_backups_at_once_one_runs_the_other_is_refused(service: Service) -> None:
    m = "frz"
    results: list[object] = []

    def start() -> None:
        p = service.cli("backup", "now", m, "--json", check=False)
        results.append((p.returncode, p.stdout))

    threads = [threading.Thread(target=start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(rc for rc, _ in results)  # type: ignore[misc]
    assert codes == [0, 1], results
    refused = next(out for rc, out in results if rc == 1)  # type: ignore[misc]
    assert "UserErrorBackupOperationInProgress" in refused
    jobs = service.client.get("/jobs", params={"machine": m})
    running = [j for j in jobs if j["status"] in ("InProgress", "Completed")
               and j["started_at"] > jobs[-1]["started_at"]]
    assert running
    service.wait_job(jobs[0]["id"])


def test_service_restart_during_a_backup_leaves_no_job_in_progress(service: Service) -> None:
    m = "frz"
    cfg = service.hold_freeze(m, 6)
    job = service.client.post("/backups", {"machine": m})
    time.sleep(1.5)
    service.stop(signal.SIGKILL)  # a crash: no chance to tidy up
    service.start()
    deadline = time.monotonic() + 60
    while True:
        j = service.client.get(f"/jobs/{job['id']}")
        if j["status"] not in ("InProgress", "Cancelling"):
            break
        assert time.monotonic() < deadline, "job stayed InProgress after the restart"
        time.sleep(0.5)
    assert j["status"] == "Failed"
    assert j["error"]["code"] == "BackUpOperationFailed"
    # The machine is not left frozen and the next backup works.
    deadline = time.monotonic() + 30
    while not service.data_disk_writable(m, 1):
        assert time.monotonic() < deadline, "left frozen after the service crash"
        time.sleep(0.2)
    cfg.unlink()
    service.wait_agent_ready(m)
    assert service.backup(m)["status"] == "Completed"
