"""Test fixtures: a real `frostpoint server` process on a temporary data directory.

Sandbox machines need root (namespaces, loop devices, mounts). CI on this kind of
machine runs as root; elsewhere those tests skip and say why.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from frostpoint.cli.client import ApiError, Client

ROOT_REASON = "needs root: sandbox machines use namespaces, loop devices and mounts"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason=ROOT_REASON)

# Short limits so that failure paths finish in seconds, in the documented order.
TEST_ENV = {
    "FROSTPOINT_HEARTBEAT_STALE_S": "12",
    "FROSTPOINT_EXTENSION_WAIT_S": "25",
    "FROSTPOINT_FREEZE_S": "20",
    "FROSTPOINT_HOST_CALL_S": "5",
    "FROSTPOINT_JOB_STALE_S": "6",
}

# Run by the host's python in a machine's mount namespace only (not its PID namespace,
# not restricted): test set-ups that need what the guest may not do (a device node, a
# bind mount), or a machine with no process left. Nothing is imported after setns:
# the namespace's root is the guest's, without the host's files.
IN_MOUNTS = """
import ctypes, os, stat, sys
libc = ctypes.CDLL(None, use_errno=True)
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 2, 4, 8, 32, 4096
def check(ret, what):
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, what + ": " + os.strerror(e))
def mount(src, target, flags):
    check(libc.mount(src.encode() if src else None, target.encode(), None, flags, None),
          "mount " + target)
def umount(target):
    check(libc.umount2(target.encode(), 0), "umount " + target)
check(libc.setns(os.open(sys.argv[1], os.O_RDONLY), 0x00020000), "setns")
os.chdir("/")
exec(sys.argv[2])
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """One running service with its data directory, and helpers to drive it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        # The service's clock reads its offset from this file (service/clock.py).
        self.clock_file = data_dir / "test-clock"
        self.env = {**os.environ, **TEST_ENV, "FROSTPOINT_DATA_DIR": str(data_dir),
                    "FROSTPOINT_URL": self.url, "FROSTPOINT_TEST_CLOCK_FILE": str(self.clock_file)}

    def move_clock(self, seconds: float) -> None:
        """Move the running service's clock forward (its offset file, service/clock.py)."""
        from frostpoint.service.clock import Clock
        Clock(self.clock_file).advance(seconds)

    def move_clock_to(self, hhmm: str, seconds_before: float = 15) -> None:
        """Move the service's clock forward to seconds_before the next HH:MM (UTC): a
        daily schedule at HH:MM comes due a little later, after the agents' next
        heartbeat (heartbeats before the move look old to the moved clock)."""
        from frostpoint.service.clock import Clock
        now = Clock(self.clock_file).now()
        hour, minute = (int(x) for x in hhmm.split(":"))
        target = now.replace(hour=hour, minute=minute, second=0, microsecond=0) \
            - timedelta(seconds=seconds_before)
        if target <= now:
            target += timedelta(days=1)
        self.move_clock((target - now).total_seconds())

    def let_days_pass(self, days: int) -> None:
        """Move the service's clock past `days` days, to 00:01 UTC of the day after, so
        that no daily schedule (HH:MM, 22:00 by default) comes due on the way."""
        from frostpoint.service.clock import Clock
        now = Clock(self.clock_file).now()
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        target = midnight + timedelta(days=days + 1, minutes=1)
        self.move_clock((target - now).total_seconds())

    def server_argv(self) -> list[str]:
        return [sys.executable, "-m", "frostpoint.cli.main", "server", "--data-dir",
                str(self.data_dir), "--listen", f"127.0.0.1:{self.port}"]

    def start(self) -> None:
        log = open(self.data_dir / "server.log", "ab")
        self.proc = subprocess.Popen(self.server_argv(), env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited:\n" + self.log_tail())
            try:
                Client(self.url, "x").get("/health")
                return
            except ApiError:
                time.sleep(0.2)
        raise RuntimeError("server did not start:\n" + self.log_tail())

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self) -> str:
        p = self.data_dir / "server.log"
        return p.read_text(errors="replace")[-4000:] if p.exists() else ""

    @property
    def client(self) -> Client:
        return Client(self.url, (self.data_dir / "api-token").read_text().strip())

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([sys.executable, "-m", "frostpoint.cli.main", *args], env=self.env,
                           capture_output=True, text=True, timeout=600)
        if check and p.returncode != 0:
            raise AssertionError(f"frostpoint {' '.join(args)} failed ({p.returncode}):\n"
                                 f"{p.stdout}\n{p.stderr}")
        return p

    def cli_json(self, *args: str, check: bool = True) -> Any:
        return json.loads(self.cli(*args, "--json", check=check).stdout)

    def exec(self, machine: str, script: str, check: bool = True) -> str:
        r = self.client.post(f"/machines/{machine}/exec", {"argv": ["sh", "-c", script]})
        if check and r["returncode"] != 0:
            raise AssertionError(f"in {machine}: {script}\n{r['stderr']}")
        return str(r["stdout"])

    def in_mounts(self, machine: str, code: str, timeout: float = 60) -> None:
        """Run python code as the host in machine's mount namespace (see IN_MOUNTS):
        os, stat, mount(src, target, flags), umount(target) and the MS_* flags."""
        subprocess.run([sys.executable, "-c", IN_MOUNTS,
                        str(self.data_dir / "run" / "mntns" / machine), code],
                       check=True, timeout=timeout)

    def guest_file(self, machine: str, sub: str) -> Path:
        """Host path of the machine's /etc/frostpoint (etc), /var/lib/.. (lib), /var/log/.."""
        return self.data_dir / "machines" / machine / sub

    def script_config(self, machine: str, text: str, mode: int = 0o600) -> Path:
        """Write the machine's /etc/frostpoint/vmbackup.json; returns its host path."""
        path = self.guest_file(machine, "etc") / "vmbackup.json"
        path.write_text(text)
        os.chmod(path, mode)
        return path

    def hold_freeze(self, machine: str, seconds: float) -> Path:
        """A guest script config that keeps the next freeze for that long (the widened
        window tests kill things in); returns the file, to delete afterwards."""
        return self.script_config(machine, json.dumps({"holdFrozenSeconds": seconds}))

    def wait_frozen(self, machine: str, timeout: float = 30) -> bool:
        """Wait until the freeze watchdog has written its marker (the freeze begins)."""
        marker = self.guest_file(machine, "lib") / "frozen.json"
        deadline = time.monotonic() + timeout
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return marker.exists()

    def snapshot_extension_pids(self, machine: str) -> list[int]:
        """The agent records the pid of the extension run it is waiting for (in the
        machine's PID namespace); returned as the host's pids of those processes."""
        from frostpoint.fabric.sandbox import host_pid
        guest = [int(p.read_text()) for p in self.guest_file(machine, "lib").glob(
            "Frostpoint.Backup.Snapshot-*/status/*.pid")]
        return [p for p in (host_pid(self.data_dir, machine, g) for g in guest) if p]

    def data_disk_writable(self, machine: str, seconds: float) -> bool:
        """A write to /mnt/data finishes within seconds (it blocks while frozen).

        The write runs in the background and is waited for: a writer blocked on a frozen
        filesystem cannot be killed (`timeout` would wait for it until the thaw), so the
        answer comes after `seconds` either way; a blocked writer finishes at the thaw."""
        ticks = max(1, round(seconds * 10))
        r = self.client.post(f"/machines/{machine}/exec", {"argv": ["sh", "-c", (
            "f=/tmp/probe-done.$$; (echo probe > /mnt/data/probe && "
            "sync /mnt/data/probe && touch $f) </dev/null >/dev/null 2>&1 & "
            f"i=0; while [ $i -lt {ticks} ]; do "
            "if [ -e $f ]; then rm -f $f; exit 0; fi; sleep 0.1; i=$((i+1)); done; exit 1")]})
        return r["returncode"] == 0

    def wait_agent_ready(self, machine: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.client.get(f"/machines/{machine}")["agent"]["status"] == "Ready":
                return
            time.sleep(0.2)
        raise AssertionError(f"agent of {machine} never Ready")

    def wait_job(self, job_id: str, timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            j = self.client.get(f"/jobs/{job_id}")
            if j["status"] in ("Completed", "CompletedWithWarnings", "Failed", "Cancelled"):
                return j
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} still {j['status']} after {timeout} s")

    def protected_machine(self, name: str, disks: list[dict[str, str]] | None = None) -> None:
        c = self.client
        c.post("/machines", {"name": name, "disks": disks or [{"name": "data",
                                                                "size": "128M"}]})
        if not any(v["name"] == "v1" for v in c.get("/vaults")):
            c.post("/vaults", {"name": "v1"})
            c.post("/policies", {"name": "p1"})
        c.post("/protection/enable", {"machine": name, "vault": "v1", "policy": "p1"})
        self.wait_agent_ready(name)

    def protected_vm(self, name: str) -> None:
        """A QEMU guest (64M data disk), protected to vault v1 with policy p1, its agent
        Ready (a TCG boot and a first agent start take a while)."""
        self.cli("vm", "create", name, "--kind", "qemu", "--disk", "data:64M",
                 "--memory", "768M")
        self.cli("vault", "create", "v1")
        self.cli("policy", "create", "p1")
        self.cli("protect", "enable", name, "--vault", "v1", "--policy", "p1")
        self.wait_agent_ready(name, timeout=180)

    def backup(self, machine: str, timeout: float = 180) -> dict[str, Any]:
        j = self.client.post("/backups", {"machine": machine})
        return self.wait_job(j["id"], timeout)

    def teardown(self) -> None:
        try:
            c = self.client
            for m in c.get("/machines"):
                c.delete(f"/machines/{m['name']}")
        except Exception:  # noqa: BLE001 - teardown must go on
            pass
        self.stop()
        from frostpoint.fabric.teardown import teardown_host
        teardown_host(self.data_dir)
        shutil.rmtree(self.data_dir, ignore_errors=True)


def running_service(**env: str) -> Iterator[Service]:
    """A real service on a fresh data dir, with env on top of TEST_ENV; torn down after."""
    if os.geteuid() != 0:
        pytest.skip(ROOT_REASON)
    for tool in ("mkfs.xfs", "mkfs.ext4", "ip", "bridge", "nft", "losetup", "nsenter",
                 "unshare"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: run `make setup` (installs xfsprogs, iproute2,"
                        " nftables)")
    from frostpoint.fabric.image import ensure_image
    ensure_image()  # once per host and agent code: a build takes ~30 s (docs/machines.md)
    svc = Service(Path(tempfile.mkdtemp(prefix="fp-test-")))
    svc.env.update(env)
    svc.start()
    try:
        yield svc
    finally:
        svc.teardown()


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    yield from running_service()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
