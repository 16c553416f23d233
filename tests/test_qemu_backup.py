"""Backups and restores of a running QEMU guest (under TCG here): a small database
quiesced by pre/post scripts, the guest's FIFREEZE, restores as new VMs that boot, its
address and the fabric's by DHCP, and faults of the catalog on a VM (extensions
disabled, DHCP off) with their code, doctor finding, fix and next backup. One VM for
the module: a TCG boot is slow."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Service, running_service, sha256_file
from frostpoint.protocol import FABRIC_ADDRESS, GUEST_LEASE_FILE, GUEST_NETWORK_CONFIG

if os.geteuid() != 0:
    pytest.skip("needs root: QEMU guests use taps, the fabric namespace and the pool",
                allow_module_level=True)
if shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-img") is None:
    pytest.skip("needs qemu-system-x86 and qemu-utils: run scripts/install-system-packages",
                allow_module_level=True)

VM = "db"
# TCG runs a guest's python several times slower than a host: the extension's waits
# are widened (their order kept, service/runtime.py Timeouts).
VM_ENV = {"FROSTPOINT_VM_INIT": "small", "FROSTPOINT_EXTENSION_WAIT_S": "120",
          "FROSTPOINT_FREEZE_S": "60", "FROSTPOINT_HOST_CALL_S": "20",
          "FROSTPOINT_HEARTBEAT_STALE_S": "60"}
# The database: a writer inserting rows; the pre-script stops it (SIGSTOP) and takes the
# checksum of the quiesced file, the post-script lets it go on. Between the two the
# guest's filesystem is frozen, so the checksum is the one of the frozen disk.
WRITER = """import sqlite3, time
db = sqlite3.connect('/mnt/data/app.db', isolation_level=None)
db.execute('create table if not exists t (n integer, pad text)')
n = 0
while True:
    n += 1
    db.execute('insert into t values (?, ?)', (n, 'x' * 200))
    time.sleep(0.01)
"""
PRE = """#!/bin/sh
kill -STOP $(cat /root/writer.pid)
sync /mnt/data/app.db
sha256sum /mnt/data/app.db | cut -d' ' -f1 > /root/sums.last
"""
POST = """#!/bin/sh
kill -CONT $(cat /root/writer.pid)
"""
SCRIPTS = ('{"preScriptLocation": "/etc/frostpoint/pre.sh", '
           '"postScriptLocation": "/etc/frostpoint/post.sh"}')
CHECK = ("import sqlite3; d = sqlite3.connect('/mnt/data/app.db'); "
         "print(d.execute('pragma integrity_check').fetchone()[0], "
         "d.execute('select count(*) from t').fetchone()[0])")


def put(svc: Service, vm: str, path: str, text: str, mode: str) -> None:
    svc.exec(vm, f"cat > {path} <<'FPEOF'\n{text}FPEOF\nchmod {mode} {path}")


@pytest.fixture(scope="module")
def svc() -> Iterator[Service]:
    yield from running_service(**VM_ENV)


@pytest.fixture(scope="module")
def vm(svc: Service) -> str:
    svc.protected_vm(VM)
    put(svc, VM, "/root/writer.py", WRITER, "644")
    put(svc, VM, "/etc/frostpoint/pre.sh", PRE, "700")
    put(svc, VM, "/etc/frostpoint/post.sh", POST, "700")
    put(svc, VM, "/etc/frostpoint/vmbackup.json", SCRIPTS + "\n", "600")
    svc.exec(VM, "nohup python3 /root/writer.py >/dev/null 2>&1 </dev/null & "
             "echo $! > /root/writer.pid")
    time.sleep(2)
    return VM


def backup_ok(svc: Service, vm: str) -> dict[str, Any]:
    job = svc.backup(vm, timeout=300)
    assert job["status"] == "Completed", job.get("error")
    # the scripts ran and the guest froze its filesystem
    assert job["details"]["consistency"] == "ApplicationConsistent"
    assert job["details"]["snapshot"]["frozen"] is True
    return job


def rows_and_sum(svc: Service, vm: str) -> tuple[int, str]:
    digest = svc.exec(vm, "sha256sum /mnt/data/app.db | cut -d' ' -f1").strip()
    status, rows = svc.exec(vm, f'python3 -c "{CHECK}"').split()
    assert status == "ok"
    return int(rows), digest


def test_backups_of_a_running_database_restore_as_vms_that_boot(svc: Service, vm: str) -> None:
    first = backup_ok(svc, vm)
    sum1 = svc.exec(vm, "cat /root/sums.last").strip()
    assert first["details"]["freeze_ms"] < 60_000
    time.sleep(3)  # more rows
    second = backup_ok(svc, vm)
    sum2 = svc.exec(vm, "cat /root/sums.last").strip()
    assert sum1 != sum2
    restored = {}
    for name, job, source in (("r1", first, "vault"), ("r2", second, "instant")):
        r = svc.cli_json("restore", "vm", str(job["details"]["restore_point"]), "--name", name,
                         "--source", source)
        assert r["status"] == "Completed", r.get("error")
        show = svc.cli_json("vm", "show", name)
        assert show["kind"] == "qemu" and show["power_state"] == "Running"
        restored[name] = rows_and_sum(svc, name)
        svc.cli("vm", "delete", name)
    assert restored["r1"][1] == sum1 and restored["r2"][1] == sum2
    assert 0 < restored["r1"][0] < restored["r2"][0]


def test_a_vm_disk_restored_from_vault_and_pool_is_the_snapshot(svc: Service, vm: str) -> None:
    job = backup_ok(svc, vm)
    want = sha256_file(Path(job["details"]["snapshot"]["dir"]) / "data.img")
    for source in ("vault", "instant"):
        to = svc.data_dir / "restores" / source
        r = svc.cli_json("restore", "disks", str(job["details"]["restore_point"]), "--to",
                         str(to), "--source", source)
        assert r["status"] == "Completed", r.get("error")
        assert sha256_file(to / "data.img") == want


def test_extensions_disabled_in_a_vm_fault_finding_fix(svc: Service, vm: str) -> None:
    svc.exec(vm, "sed -i 's/^Extensions.Enabled=.*/Extensions.Enabled=n/' "
             "/etc/frostpoint/agent.conf; frostpoint-agent restart")
    time.sleep(15)  # the agent's next heartbeat says so
    job = svc.backup(vm, timeout=300)
    assert job["status"] == "Failed"
    assert job["error"]["code"] == "GuestAgentSnapshotTaskStatusError"
    found = svc.cli_json("doctor", vm, check=False)["findings"]
    bad = [f for f in found if f["status"] == "fail"]
    assert any(f["code"] == "GuestAgentSnapshotTaskStatusError" for f in bad), bad
    for f in bad:  # the doctor's fix: it edits the config through the VM's channel
        if f["remedy"]:
            svc.cli("doctor", vm, "--fix", "--check", f["check"], "--yes", check=False)
    assert "Extensions.Enabled=y" in svc.exec(vm, "cat /etc/frostpoint/agent.conf")
    svc.exec(vm, "frostpoint-agent restart")
    svc.wait_agent_ready(vm, timeout=120)
    time.sleep(10)
    backup_ok(svc, vm)


def discovery(svc: Service, vm: str) -> dict[str, Any]:
    return next(f for f in svc.cli_json("doctor", vm, check=False)["findings"]
                if f["check"] == "guest.network.discovery")


def eth0(svc: Service, vm: str) -> list[tuple[str, int]]:
    links = json.loads(svc.exec(vm, "ip -j -4 addr show dev eth0"))
    return [(a["local"], a["valid_life_time"]) for link in links for a in link["addr_info"]]


def test_a_vm_gets_its_address_by_dhcp_and_dhcp_off_gives_the_fault_finding_fix(
        svc: Service, vm: str) -> None:
    own = svc.client.get(f"/machines/{vm}")["address"]
    # The slot's address from the fabric's DHCP server, with a lease's finite lifetime,
    # the fabric address in option 245 of the lease, and nothing routed.
    got = eth0(svc, vm)
    assert [a for a, _ in got] == [own] and got[0][1] < 0xFFFFFFFF, got
    assert f"option fabric-address {FABRIC_ADDRESS};" in svc.exec(vm, f"cat {GUEST_LEASE_FILE}")
    assert "default" not in svc.exec(vm, "ip route")
    assert "Endpoint.Address=auto" in svc.exec(vm, "cat /etc/frostpoint/agent.conf")
    found = discovery(svc, vm)
    assert found["status"] == "pass" and "option 245" in found["message"], found
    # The earlier tests' backups went through that discovery. Now DHCP off, as a user
    # turns it off: a static address in the network config.
    svc.exec(vm, f"ifdown eth0; printf 'auto eth0\\niface eth0 inet static\\n"
             f"    address {own}/24\\n' > {GUEST_NETWORK_CONFIG}; ifup eth0")
    assert eth0(svc, vm) == [(own, 0xFFFFFFFF)]
    svc.cli_json("vm", "agent", "restart", vm)
    job = svc.backup(vm, timeout=300)
    assert job["status"] == "Failed", job
    assert job["error"]["code"] == "UserErrorGuestAgentStatusUnavailable", job["error"]
    found = discovery(svc, vm)
    assert found["status"] == "fail", found
    assert found["code"] == "UserErrorGuestAgentStatusUnavailable"
    assert "DHCP is off for eth0" in found["message"] and own in found["message"], found
    assert any("inet dhcp" in f for f in found["fix"]), found["fix"]
    svc.cli("doctor", vm, "--fix", "--check", "guest.network.discovery", "--yes", check=False)
    assert f"Endpoint.Address={FABRIC_ADDRESS}" in svc.exec(vm, "cat /etc/frostpoint/agent.conf")
    svc.wait_agent_ready(vm, timeout=120)
    backup_ok(svc, vm)


def test_a_stopped_vm_is_backed_up_crash_consistent(svc: Service, vm: str) -> None:
    svc.cli("vm", "stop", vm)
    job = svc.backup(vm, timeout=300)
    assert job["status"] in ("Completed", "CompletedWithWarnings"), job.get("error")
    assert job["details"]["consistency"] == "CrashConsistent"
