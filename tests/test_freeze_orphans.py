"""Freezes that must end although something went away: a mount that vanished while
frozen, and a machine whose every process died while its disks were frozen."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Service, needs_root, running_service

pytestmark = needs_root
FREEZE_S = 6


# The real freeze watchdog, run in a private mount namespace (its marker goes to a
# tmpfs there, nothing on the host changes): freeze two filesystems, make one vanish
# (lazily unmounted, its directory removed), ask for the thaw.
VANISH = textwrap.dedent(r"""
    import fcntl, json, os, subprocess, sys
    FITHAW = 0xC0045878
    tmp = sys.argv[1]
    os.makedirs("/var/lib/frostpoint-agent", exist_ok=True)  # as the sandbox makes it
    subprocess.run(["mount", "-t", "tmpfs", "fp-test", "/var/lib/frostpoint-agent"],
                   check=True)
    mnts = {}
    for name in ("a", "b"):
        img, mnt = f"{tmp}/{name}.img", f"{tmp}/{name}"
        os.makedirs(mnt)
        subprocess.run(["truncate", "-s", "32M", img], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", img], check=True)
        subprocess.run(["mount", "-o", "loop", img, mnt], check=True)
        mnts[name] = mnt
    # The test's own handle on b, to check b's state and to clean up whatever happens.
    b_fd = os.open(mnts["b"], os.O_RDONLY)
    w = subprocess.Popen([sys.executable, "-m", "frostpoint.extension.freezer",
                          "--limit", "30", mnts["a"], mnts["b"]],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    first = w.stdout.readline()
    subprocess.run(["umount", "-l", mnts["b"]], check=True)
    os.rmdir(mnts["b"])
    w.stdin.write("THAW\n"); w.stdin.flush()
    thawed = w.stdout.readline()
    w.wait(30)
    # A write to a frozen filesystem blocks unkillably: wait a bounded time, and let the
    # clean-up below release it if it is still blocked.
    probe = subprocess.Popen(["sh", "-c", f"echo x > {mnts['a']}/p && sync {mnts['a']}/p"])
    try:
        a_writable = probe.wait(3) == 0
    except subprocess.TimeoutExpired:
        a_writable = False
    try:
        fcntl.ioctl(b_fd, FITHAW, 0)
        b_was_frozen = True
    except OSError:
        b_was_frozen = False
    subprocess.run(["fsfreeze", "-u", mnts["a"]], capture_output=True)
    probe.wait()
    os.close(b_fd)
    subprocess.run(["umount", mnts["a"]], check=True)
    print(json.dumps({"first": first.strip(), "thawed": thawed.strip(), "rc": w.returncode,
                      "a_writable": a_writable, "b_was_frozen": b_was_frozen}))
""")


def test_thaw_all_thaws_the_others_when_one_mount_vanished(tmp_path: Path) -> None:
    script = tmp_path / "vanish.py"
    script.write_text(VANISH)
    p = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable,
                        str(script), str(tmp_path)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["first"].startswith("FROZEN"), out
    # The other filesystem is thawed, and so is the one that vanished.
    assert out["a_writable"], out
    assert not out["b_was_frozen"], out
    assert out["thawed"].startswith("THAWED") and out["rc"] == 0, (out, p.stderr)


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    # A short freeze limit, so that waiting it out keeps the test short.
    yield from running_service(FROSTPOINT_FREEZE_S=str(FREEZE_S))


def machine_pids(service: Service, machine: str) -> list[int]:
    from frostpoint.fabric.network import FabricNetwork
    from frostpoint.service.runtime import instance_id
    ns = FabricNetwork(instance_id(service.data_dir)).machine_ns(machine)
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def kill_every_process(service: Service, machine: str) -> list[int]:
    """kill -9 everything in the machine (init, agent, extension, freeze watchdog)."""
    killed: list[int] = []
    deadline = time.monotonic() + 10
    while pids := machine_pids(service, machine):
        assert time.monotonic() < deadline, f"processes of {machine} survive: {pids}"
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed += pids
        time.sleep(0.1)
    return killed


def test_a_freeze_nobody_is_left_to_end_is_thawed_by_the_host(service: Service) -> None:
    m = "orph"
    service.protected_machine(m, [{"name": "data", "size": "64M"},
                                  {"name": "logs", "size": "300M", "filesystem": "xfs"}])
    assert service.backup(m)["status"] == "Completed"  # the extension is installed
    cfg = service.hold_freeze(m, 60)
    job = service.client.post("/backups", {"machine": m})
    assert service.wait_frozen(m), "the freeze never started"
    frozen_at = time.monotonic()
    time.sleep(0.5)  # the marker comes before the first FIFREEZE: let both finish
    killed = kill_every_process(service, m)
    assert len(killed) >= 4, killed  # init, agent, extension, watchdog
    # A writer on the machine's disk (made after the kill): blocked while the disk is
    # frozen. Nothing can be started inside the machine any more (its PID namespace
    # died with its init): the writer works in the machine's mount namespace, which
    # the host keeps, so it writes to the very mount the guest had frozen.
    done: list[float] = []

    def write() -> None:
        service.in_mounts(m, "f = os.open('/mnt/data/probe', os.O_WRONLY | os.O_CREAT | "
                             "os.O_TRUNC); os.write(f, b'probe'); os.fsync(f)",
                          timeout=FREEZE_S + 30)
        done.append(time.monotonic())

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    writer.join(1)
    assert not done, "the disk was not frozen"
    writer.join(FREEZE_S + 10)
    assert done, f"still frozen {time.monotonic() - frozen_at:.0f} s after the freeze began"
    assert done[0] - frozen_at < FREEZE_S + 6, done[0] - frozen_at
    # The job fails with its code, in bounded time (heartbeat limit 12 s, freeze 6 s).
    finished = service.wait_job(job["id"], timeout=40)
    assert time.monotonic() - frozen_at < 40
    assert finished["status"] == "Failed", finished
    err = finished["error"]
    assert err["code"] == "UserErrorGuestAgentStatusUnavailable", err
    assert sorted(err["details"]["host_thawed"]) == ["data", "logs"], err
    assert "thawed" in err["message"]
    # The fix: start the machine again; the next backup succeeds.
    cfg.unlink()
    service.cli_json("vm", "start", m)
    service.wait_agent_ready(m)
    assert service.backup(m)["status"] == "Completed"
