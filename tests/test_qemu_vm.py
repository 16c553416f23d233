"""QEMU guests (fabric/qemu.py): a real VM with its own kernel, under TCG here.

Few and bounded: one VM, booted with the test init (FROSTPOINT_VM_INIT=small, ~20 s
under TCG; systemd takes ~50 s, tested in test_qemu_systemd.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Service, running_service, sha256_file
from frostpoint.cli.client import ApiError

if os.geteuid() != 0:
    pytest.skip("needs root: QEMU guests use taps, the fabric namespace and the pool",
                allow_module_level=True)
if shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-img") is None:
    pytest.skip("needs qemu-system-x86 and qemu-utils: run scripts/install-system-packages",
                allow_module_level=True)

VM = "vm1"
FLOOD = """import subprocess, time
time.sleep(2)  # the exec that started this gets its answer first
subprocess.run(['pkill', '-f', 'frostpoint-channel'])
while True:  # take the port before the init restarts the channel service
    try:
        p = open('/dev/virtio-ports/org.frostpoint.channel.0', 'r+b', buffering=0)
        break
    except OSError:
        time.sleep(0.02)
while True:
    p.read(65536)
    p.write(b'{"id": "x", "ok": true}\\n' * 200 + b'\\xff' * 5000000)
"""


@pytest.fixture(scope="module")
def svc() -> Iterator[Service]:
    # A guest's python under TCG is slow: the extension's wait is widened (order kept).
    yield from running_service(FROSTPOINT_VM_INIT="small", FROSTPOINT_EXTENSION_WAIT_S="120")


@pytest.fixture(scope="module")
def vm(svc: Service) -> str:
    svc.cli("vm", "create", VM, "--kind", "qemu", "--disk", "data:64M", "--memory", "768M")
    return VM


def qemu_pids(svc: Service) -> list[int]:
    inst = svc.client.get("/health")["instance"]
    out = subprocess.run(["pgrep", "-f", f"/run/frostpoint/{inst}/"], capture_output=True,
                         text=True).stdout
    return [int(p) for p in out.split()]


def test_a_vm_boots_its_own_kernel_and_runs_programs(svc: Service, vm: str) -> None:
    show = svc.cli_json("vm", "show", vm)
    assert show["kind"] == "qemu" and show["power_state"] == "Running"
    assert show["accel"] in ("kvm", "tcg")
    if not os.access("/dev/kvm", os.W_OK):
        assert show["accel"] == "tcg"
    # its own kernel (the VM image's), not the host's
    assert svc.exec(vm, "uname -r").strip() != os.uname().release
    assert "/mnt/data" in svc.exec(vm, "cat /proc/mounts")
    assert svc.exec(vm, "cat /sys/block/vda/serial") == "data"
    r = svc.client.post(f"/machines/{vm}/exec", {"argv": ["sh", "-c", "echo out; echo err >&2;"
                                                          " exit 3"]})
    assert (r["returncode"], r["stdout"], r["stderr"]) == (3, "out\n", "err\n")
    console = svc.cli("vm", "console", vm).stdout
    assert "disk: /dev/vda at /mnt/data" in console
    svc.wait_agent_ready(vm, timeout=120)


def test_a_vm_cannot_spoof_its_fabric_port(svc: Service, vm: str) -> None:
    probe = "curl -s -o /dev/null -w '%{http_code}' -m 3 http://10.213.0.1/ || true"
    assert svc.exec(vm, probe) != "000"  # its own address and MAC get through
    own = svc.client.get(f"/machines/{vm}")["address"]
    other = own.rsplit(".", 1)[0] + ".99"
    # another address: its frames are dropped by the fabric's filter
    out = svc.exec(vm, f"ip addr add {other}/24 dev eth0; curl -s -o /dev/null -w "
                   f"'%{{http_code}}' -m 3 --interface {other} http://10.213.0.1/; "
                   f"ip addr del {other}/24 dev eth0", check=False)
    assert out == "000"
    # another MAC: dropped too
    out = svc.exec(vm, "m=$(cat /sys/class/net/eth0/address); ip link set eth0 address "
                   f"02:00:0a:d5:00:63; {probe}; ip link set eth0 address $m", check=False)
    assert out == "000"
    assert svc.exec(vm, probe) != "000"


def test_hostile_channel_output_is_bounded_and_refused(svc: Service, vm: str) -> None:
    # a program whose output is far over the limit: its end, at most 1 MiB, comes back
    r = svc.client.post(f"/machines/{vm}/exec", {"argv": ["sh", "-c",
                                                          "head -c 3000000 /dev/zero"]})
    assert r["returncode"] == 0 and len(r["stdout"]) == 1 << 20
    # the guest's channel service replaced by a guest program that floods the port with
    # replies to other requests and garbage: the host refuses, in bounded time, with the
    # catalog code
    svc.exec(vm, f"cat > /tmp/flood.py <<'EOF'\n{FLOOD}EOF\n"
             "nohup python3 /tmp/flood.py >/dev/null 2>&1 </dev/null &")
    time.sleep(6)
    t0 = time.monotonic()
    with pytest.raises(ApiError) as e:
        svc.client.post(f"/machines/{vm}/exec", {"argv": ["true"], "timeout": 5})
    assert e.value.error["code"] == "GuestChannelUnavailable"
    assert "garbage" in str(e.value) and time.monotonic() - t0 < 30
    # the VM is reset by a stop and start; its channel serves again
    svc.cli("vm", "stop", vm)
    svc.cli("vm", "start", vm)
    assert svc.exec(vm, "echo back") == "back\n"


def test_a_frozen_vm_whose_processes_all_died_is_thawed_by_the_host(svc: Service,
                                                                     vm: str) -> None:
    svc.cli("vault", "create", "v1")
    svc.cli("policy", "create", "p1")
    svc.cli("protect", "enable", vm, "--vault", "v1", "--policy", "p1")
    svc.wait_agent_ready(vm, timeout=120)
    svc.client.post(f"/machines/{vm}/exec", {"argv": ["sh", "-c", (
        "echo '{\"holdFrozenSeconds\": 15}' > /etc/frostpoint/vmbackup.json; "
        "chmod 600 /etc/frostpoint/vmbackup.json")]})
    job = svc.client.post("/backups", {"machine": vm})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "frozen" not in svc.exec(
            vm, "ls /var/lib/frostpoint-agent/"):
        time.sleep(0.5)
    # every process of the guest but its init: the agent, the extension, its freeze
    # watchdog and the channel service
    svc.exec(vm, "(sleep 1; kill -9 -1) >/dev/null 2>&1 </dev/null &")
    time.sleep(3)
    end = svc.wait_job(job["id"], timeout=180)
    assert end["status"] in ("Failed", "Completed", "CompletedWithWarnings")
    # the init restarted the channel; the host thawed through it: /mnt/data takes writes
    r = svc.client.post(f"/machines/{vm}/exec", {"argv": ["sh", "-c", (
        "(echo x > /mnt/data/after && sync /mnt/data/after && echo ok) & sleep 5; "
        "cat /proc/$!/status 2>/dev/null | head -1")], "timeout": 20})
    assert r["stdout"].startswith("ok"), (r, end)
    svc.exec(vm, "rm -f /etc/frostpoint/vmbackup.json")


def test_a_vm_powered_off_from_inside_is_noticed(svc: Service, vm: str) -> None:
    svc.exec(vm, "(sleep 1; echo o > /proc/sysrq-trigger) >/dev/null 2>&1 &")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and qemu_pids(svc):
        time.sleep(0.5)
    assert not qemu_pids(svc)
    found = {f["check"]: f for f in svc.cli_json("doctor", vm, check=False)["findings"]}
    assert found["machine.power"]["status"] == "fail"
    svc.cli("vm", "start", vm)
    assert svc.exec(vm, "cat /proc/uptime") and qemu_pids(svc)


def user_disk(path: Path, files: dict[str, str]) -> Path:
    """A disk image as a user makes one: mkfs.ext4 of a folder, on the whole disk."""
    tree = path.with_suffix(".d")
    tree.mkdir()
    for name, text in files.items():
        (tree / name).write_text(text)
    subprocess.run(["truncate", "-s", "32M", str(path)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-d", str(tree), str(path)], check=True)
    return path


def test_a_vm_imported_from_a_users_raw_and_qcow2_disks(svc: Service, vm: str,
                                                        tmp_path: Path) -> None:
    raw = user_disk(tmp_path / "mine.img", {"hello.txt": "from the user\n"})
    logs = user_disk(tmp_path / "logs.img", {"log.txt": "a qcow2 of mine\n"})
    qcow = tmp_path / "logs.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(logs), str(qcow)], check=True)
    before = sha256_file(raw)
    # Refused, with nothing made: a qcow2 whose header names another host file (a
    # backing file), and an image with no filesystem.
    backed = tmp_path / "backed.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(raw), "-F", "raw",
                    str(backed)], check=True)
    blank = tmp_path / "blank.img"
    subprocess.run(["truncate", "-s", "32M", str(blank)], check=True)
    for image, why in ((backed, "backing file"), (blank, "no filesystem")):
        r = svc.cli("vm", "import", "bad", "--disk", f"data={image}", "--json", check=False)
        assert r.returncode != 0 and "InvalidInput" in r.stdout + r.stderr, r
        assert why in r.stdout + r.stderr, r
    assert "bad" not in [m["name"] for m in svc.client.get("/machines")]
    show = svc.cli_json("vm", "import", "mine", "--kind", "qemu", "--disk", f"data={raw}",
                        "--disk", f"logs={qcow}", "--memory", "512M")
    assert show["kind"] == "qemu" and show["power_state"] == "Running", show
    assert {d["name"]: d["filesystem"] for d in show["disks"]} == {"data": "ext4",
                                                                   "logs": "ext4"}
    # The user's files, in the VM at /mnt/NAME; the originals untouched.
    assert svc.exec("mine", "cat /mnt/data/hello.txt") == "from the user\n"
    assert svc.exec("mine", "cat /mnt/logs/log.txt") == "a qcow2 of mine\n"
    assert sha256_file(raw) == before
    # No agent yet; `vm agent install` puts it in through the channel and it reports.
    assert svc.client.get("/machines/mine")["agent"]["status"] != "Ready"
    svc.cli_json("vm", "agent", "install", "mine")
    svc.wait_agent_ready("mine", timeout=180)
    svc.cli("vm", "delete", "mine")


def test_deallocate_and_delete_leave_nothing(svc: Service, vm: str) -> None:
    inst = svc.client.get("/health")["instance"]
    svc.cli("vm", "deallocate", vm)
    assert svc.cli_json("vm", "show", vm)["power_state"] == "Deallocated"
    assert not qemu_pids(svc)
    links = subprocess.run(["ip", "-n", f"fp{inst}-fabric", "-j", "link"], capture_output=True,
                           text=True).stdout
    assert f"fp{inst}t" not in links  # its tap went with the slot
    svc.cli("vm", "start", vm)
    assert f"fp{inst}t" in subprocess.run(["ip", "-n", f"fp{inst}-fabric", "-j", "link"],
                                          capture_output=True, text=True).stdout
    svc.cli("vm", "delete", vm)
    assert not qemu_pids(svc)
    assert not Path(f"/run/frostpoint/{inst}/{vm}").exists()
    assert not list((svc.data_dir / "pool" / "disks").glob(f"{vm}/*"))
    assert json.loads(subprocess.run(["ip", "-n", f"fp{inst}-fabric", "-j", "link"],
                                     capture_output=True, text=True).stdout or "[]")
    assert f"fp{inst}t" not in subprocess.run(["ip", "-n", f"fp{inst}-fabric", "-j", "link"],
                                              capture_output=True, text=True).stdout
