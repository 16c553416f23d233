"""Every wait has a deadline: a job whose transfer hangs on a stalled vault ends in
bounded time with a code, and the next backup succeeds once the storage is back."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Service, needs_root, running_service
from frostpoint.cli.client import ApiError

pytestmark = needs_root
JOB_S = 10


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    # Short limits, in the order the service insists on.
    yield from running_service(FROSTPOINT_HOST_CALL_S="2", FROSTPOINT_FREEZE_S="4",
                               FROSTPOINT_EXTENSION_WAIT_S="8", FROSTPOINT_JOB_S=str(JOB_S))


@pytest.fixture
def vault_fs(tmp_path: Path) -> Iterator[Path]:
    """A vault's own filesystem (ext4 on a loop device), which the test can freeze."""
    image, mnt = tmp_path / "vaultfs.img", tmp_path / "vaultfs"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", "256M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["fsfreeze", "-u", str(mnt)], capture_output=True)
        subprocess.run(["umount", "-d", str(mnt)], check=True)


def test_transfer_hung_on_a_stalled_vault_ends_at_the_job_deadline(
        service: Service, vault_fs: Path) -> None:
    c = service.client
    c.post("/vaults", {"name": "stall", "location": str(vault_fs / "vault")})
    c.post("/policies", {"name": "p1"})
    c.post("/machines", {"name": "dl", "disks": [{"name": "data", "size": "64M"}]})
    c.post("/protection/enable", {"machine": "dl", "vault": "stall", "policy": "p1"})
    service.wait_agent_ready("dl")
    assert service.backup("dl")["status"] == "Completed"
    service.exec("dl", "head -c 8000000 /dev/urandom > /mnt/data/new.bin")
    # The vault's storage stops answering writes (what a hung NFS or SAN does).
    subprocess.run(["fsfreeze", "-f", str(vault_fs)], check=True)
    try:
        t0 = time.monotonic()
        job = service.backup("dl", timeout=90)
        took = time.monotonic() - t0
        # Finished by its deadline, but its body is still blocked in the vault's I/O:
        # it keeps the machine, so a second backup cannot start beside it.
        with pytest.raises(ApiError) as refused:
            c.post("/backups", {"machine": "dl"})
        assert refused.value.error["code"] == "UserErrorBackupOperationInProgress"
        assert refused.value.error["details"]["running_job"] == job["id"]
    finally:
        subprocess.run(["fsfreeze", "-u", str(vault_fs)], check=True)
    # Deadline plus its grace (5 s) plus a poll: bounded, not forever.
    assert JOB_S <= took < JOB_S + 20, took
    # The snapshot was taken, so the instant restore point stands; the transfer failed.
    assert job["status"] == "CompletedWithWarnings", job
    [warning] = job["warnings"]
    assert warning["code"] == "BackUpOperationFailed"
    assert f"deadline of {JOB_S} s" in warning["message"] and warning["actions"]
    assert {t["name"]: t["status"] for t in job["subtasks"]} == {
        "Take Snapshot": "Completed", "Transfer data to vault": "Failed"}
    rp = job["details"]["restore_point"]
    [point] = [r for r in c.get("/restore-points", params={"machine": "dl"}) if r["id"] == rp]
    assert point["tier"] == "Snapshot"
    # Storage back: the blocked body returns and frees the machine; the next backup
    # succeeds and the vault checks clean.
    deadline = time.monotonic() + 60
    while True:
        try:
            started = c.post("/backups", {"machine": "dl"})
            break
        except ApiError as e:
            assert e.error["code"] == "UserErrorBackupOperationInProgress", e.error
            assert time.monotonic() < deadline, "the blocked body never freed the machine"
            time.sleep(0.5)
    done = service.wait_job(started["id"])
    assert done["status"] == "Completed", done
    assert service.cli_json("vault", "verify", "stall")["details"]["report"]["ok"]
    c.delete("/machines/dl")


def test_timeouts_out_of_order_are_refused_at_start(tmp_path: Path) -> None:
    svc = Service(tmp_path / "data")
    svc.data_dir.mkdir()
    svc.env.update(FROSTPOINT_FREEZE_S="400")  # longer than the extension wait
    p = subprocess.run(svc.server_argv(), env=svc.env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode != 0
    said = " ".join(p.stderr.split())  # Rich wraps long lines
    assert "InvalidInput" in said
    assert "FROSTPOINT_FREEZE_S=400 must be > 0 and less than FROSTPOINT_EXTENSION_WAIT_S" in said
