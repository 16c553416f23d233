"""A real `frostpoint server` on a temporary data directory, driven over its REST API
the way tests/conftest.py does it, plus the memory probe the benchmark needs."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from frostpoint.cli.client import ApiError, Client

FINAL = ("Completed", "CompletedWithWarnings", "Failed", "Cancelled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = {**os.environ, "FROSTPOINT_DATA_DIR": str(data_dir),
                    "FROSTPOINT_URL": self.url}
        self._client: Client | None = None

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        log = open(self.data_dir / "server.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "frostpoint.cli.main", "server", "--data-dir",
             str(self.data_dir), "--listen", f"127.0.0.1:{self.port}"],
            env=self.env, stdout=log, stderr=log)
        log.close()
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

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self) -> str:
        p = self.data_dir / "server.log"
        return p.read_text(errors="replace")[-4000:] if p.exists() else ""

    def teardown(self) -> None:
        """Delete machines, stop the service, release the host, remove the data dir.
        Every step runs even when an earlier one fails."""
        try:
            if self.proc and self.proc.poll() is None:
                for m in self.client.get("/machines"):
                    try:
                        self.client.delete(f"/machines/{m['name']}")
                    except Exception:  # noqa: BLE001 - teardown goes on
                        pass
        except Exception:  # noqa: BLE001
            pass
        try:
            self.stop()
        except Exception:  # noqa: BLE001
            pass
        try:
            from frostpoint.fabric.teardown import teardown_host
            teardown_host(self.data_dir)
        except Exception as e:  # noqa: BLE001
            print(f"teardown_host: {e}", file=sys.stderr)
        shutil.rmtree(self.data_dir, ignore_errors=True)

    # -- API ---------------------------------------------------------------------
    @property
    def client(self) -> Client:
        if self._client is None:
            token = (self.data_dir / "api-token").read_text().strip()
            self._client = Client(self.url, token)
        return self._client

    def exec(self, machine: str, argv: list[str], timeout: float = 1800) -> str:
        r = self.client.post(f"/machines/{machine}/exec", {"argv": argv, "timeout": timeout})
        if r["returncode"] != 0:
            raise RuntimeError(f"in {machine}: {' '.join(argv)} -> {r['returncode']}\n"
                               f"{r['stderr'][-3000:]}")
        return str(r["stdout"])

    def wait_agent_ready(self, machine: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.client.get(f"/machines/{machine}")["agent"]["status"] == "Ready":
                return
            time.sleep(0.2)
        raise RuntimeError(f"the agent of {machine} never became Ready")

    def wait_job(self, job_id: str, timeout: float = 3600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            j = self.client.get(f"/jobs/{job_id}")
            if j["status"] in FINAL:
                return dict(j)
            time.sleep(0.1)
        raise RuntimeError(f"job {job_id} still {j['status']} after {timeout} s")


class MemoryProbe:
    """Peak resident memory of one process over a step.

    Resets the kernel's high-water mark (VmHWM, via /proc/PID/clear_refs = 5) at the
    start and reads it at the end: exact, nothing missed between samples. A thread also
    samples VmRSS every 50 ms, as a cross-check and for kernels without the reset.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[int] = []
        self.hwm_reset = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _status(self, key: str) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self._status("VmRSS"))
            except OSError:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> MemoryProbe:
        self.rss_before = self._status("VmRSS")
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.hwm = self._status("VmHWM")

    @property
    def peak(self) -> int:
        sampled = max(self.samples, default=0)
        return max(self.hwm, sampled) if self.hwm_reset else sampled

    def summary(self) -> dict[str, Any]:
        return {"rss_before": self.rss_before, "peak_rss": self.peak,
                "peak_rss_sampled": max(self.samples, default=0),
                "peak_growth": self.peak - self.rss_before, "hwm_reset": self.hwm_reset,
                "samples": len(self.samples)}
