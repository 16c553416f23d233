"""A QEMU guest as the product boots it: systemd, the agent as its service (~50 s to
boot under TCG here). The guide's faults of the agent's service and of the guest's
firewall, each with its code, doctor finding, fix and a next backup that succeeds."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import Service, running_service

if os.geteuid() != 0:
    pytest.skip("needs root: QEMU guests use taps, the fabric namespace and the pool",
                allow_module_level=True)
if shutil.which("qemu-system-x86_64") is None:
    pytest.skip("needs qemu-system-x86: run scripts/install-system-packages",
                allow_module_level=True)

VM = "sd"
# Under TCG the guest's python is slow: the extension's waits widened (order kept).
VM_ENV = {"FROSTPOINT_EXTENSION_WAIT_S": "120", "FROSTPOINT_FREEZE_S": "60",
          "FROSTPOINT_HOST_CALL_S": "20"}
# The guide's rule (iptables is nftables underneath in the guest's Debian)
FIREWALL = "iptables -A OUTPUT -d 10.213.0.1 -p tcp --dport 32526 -j DROP"


@pytest.fixture(scope="module")
def svc() -> Iterator[Service]:
    yield from running_service(**VM_ENV)


@pytest.fixture(scope="module")
def vm(svc: Service) -> str:
    svc.protected_vm(VM)
    return VM


def failing_codes(svc: Service, vm: str) -> set[str]:
    return {f["code"] for f in svc.cli_json("doctor", vm, check=False)["findings"]
            if f["status"] == "fail"}


def doctor_fix(svc: Service, vm: str) -> None:
    for f in svc.cli_json("doctor", vm, check=False)["findings"]:
        if f["status"] == "fail" and f["remedy"]:
            svc.cli("doctor", vm, "--fix", "--check", f["check"], "--yes", check=False)


def backup(svc: Service, vm: str) -> dict[str, Any]:
    return svc.backup(vm, timeout=300)


def test_the_agent_is_a_systemd_service(svc: Service, vm: str) -> None:
    assert svc.exec(vm, "systemctl is-active frostpoint-agent").strip() == "active"
    assert "Restart=on-failure" in svc.exec(vm, "systemctl cat frostpoint-agent")
    assert "frostpoint-agent" in svc.exec(vm, "ps -e -o args")
    first = backup(svc, vm)
    assert first["status"] == "Completed", first.get("error")
    assert first["details"]["consistency"] == "FileSystemConsistent"


def test_agent_service_stopped(svc: Service, vm: str) -> None:
    svc.exec(vm, "systemctl stop frostpoint-agent")
    time.sleep(14)  # past the heartbeat limit (FROSTPOINT_HEARTBEAT_STALE_S=12)
    job = backup(svc, vm)
    assert job["status"] == "Failed"
    assert job["error"]["code"] == "UserErrorGuestAgentStatusUnavailable"
    assert "UserErrorGuestAgentStatusUnavailable" in failing_codes(svc, vm)
    svc.exec(vm, "service frostpoint-agent start")  # the guide's fix
    svc.wait_agent_ready(vm, timeout=120)
    job = backup(svc, vm)
    assert job["status"] == "Completed", job.get("error")


def test_host_port_dropped_by_the_guest_firewall(svc: Service, vm: str) -> None:
    svc.exec(vm, FIREWALL)
    job = backup(svc, vm)
    assert job["status"] == "Failed"
    code = job["error"]["code"]
    assert code == "ExtensionSnapshotFailedNoNetwork", job["error"]
    assert code in failing_codes(svc, vm)
    doctor_fix(svc, vm)  # through the VM's channel
    assert "32526" not in svc.exec(vm, "iptables -S OUTPUT")
    job = backup(svc, vm)
    assert job["status"] == "Completed", job.get("error")
