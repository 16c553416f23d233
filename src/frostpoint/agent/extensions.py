"""Extension handling in the guest: download, verify, unpack, configure, run, report.

Layout under /var/lib/frostpoint-agent/NAME-VERSION/:
  HandlerManifest.json   commands and timeout, from the package
  config/SEQ.settings    the settings for sequence number SEQ, from the goal state
  status/SEQ.status      written (atomically) by the extension
Each command runs in its own process group; a command still running at its timeout
is killed with its group. While it runs, its status file is forwarded as it changes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from frostpoint.agent.config import AgentConfig
from frostpoint.protocol import GUEST_LIB, GUEST_LOG, ExtEnv

log = logging.getLogger("frostpoint.agent.extensions")
StatusSink = Callable[[list[dict[str, Any]]], None]


class HostUnreachable(Exception):
    """The host endpoint could not be reached to download a package: the network."""


class CannotExecute(Exception):
    """The kernel refused to run a program of the extension (mount, mode, policy)."""

    def __init__(self, program: Path, err: OSError) -> None:
        self.program = program
        self.errno = err.errno
        self.reason = why_cannot_execute(program, err)
        super().__init__(f"the extension cannot be executed: {program}: {self.reason}")

    def status_extra(self) -> dict[str, Any]:
        return {"errno": self.errno, "path": str(self.program),
                "details": {"cause": "extension cannot be executed",
                            "path": str(self.program), "reason": self.reason}}


def why_cannot_execute(program: Path, err: OSError) -> str:
    """Where and why: a noexec mount (at whatever depth), a missing execute
    permission, on the program or its interpreter, or a refusal by the kernel itself
    (application control, security software, a file that is no program)."""
    from frostpoint.agent.doctor import _mount_of
    candidates = [program]
    with contextlib.suppress(OSError, ValueError):
        first = program.read_bytes()[:256].split(b"\n", 1)[0]
        if first.startswith(b"#!") and first[2:].split():
            candidates.append(Path(first[2:].split()[0].decode()))
    for p in candidates:
        m = _mount_of(str(p))
        if m and "noexec" in m[2].split(","):
            return f"{m[0]} is mounted noexec (programs there cannot execute)"
        with contextlib.suppress(OSError):
            mode = p.stat().st_mode
            if not mode & 0o111:
                return f"{p} has no execute permission (mode {stat.S_IMODE(mode):04o})"
    return (f"the kernel refused to execute it ({err.strerror}): application control, "
            "security software, or a damaged file")


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


class ExtensionHandler:
    def __init__(self, cfg: AgentConfig, report: StatusSink) -> None:
        self.cfg = cfg
        self.report = report
        self.root = Path(GUEST_LIB)
        self.busy: dict[str, threading.Thread] = {}
        self.latest: dict[str, dict[str, Any]] = {}  # newest goal per extension
        self.lock = threading.Lock()

    def ext_dir(self, name: str, version: str) -> Path:
        return self.root / f"{name}-{version}"

    def apply(self, extensions: list[dict[str, Any]]) -> None:
        wanted = {e["name"] for e in extensions}
        for ext in extensions:
            with self.lock:
                self.latest[ext["name"]] = ext
                t = self.busy.get(ext["name"])
                if t and t.is_alive():
                    continue  # the running worker takes the newest goal when it is done
                t = threading.Thread(target=self._worker, args=(ext["name"],), daemon=True)
                self.busy[ext["name"]] = t
            t.start()
        for d in self.root.glob("*-*"):
            manifest = d / "HandlerManifest.json"
            if manifest.exists():
                name = json.loads(manifest.read_text()).get("name")
                if name and name not in wanted and not self._running(name):
                    log.info("extension %s removed from goal state: uninstalling", name)
                    self.latest.pop(name, None)
                    shutil.rmtree(d, ignore_errors=True)

    def _running(self, name: str) -> bool:
        t = self.busy.get(name)
        return bool(t and t.is_alive())

    def _worker(self, name: str) -> None:
        """Handle the newest goal of one extension until no newer one is waiting."""
        done: int | None = None
        while True:
            with self.lock:
                ext = self.latest.get(name)
                if ext is None or ext["sequence"] == done:
                    self.busy.pop(name, None)
                    return
            self._handle_safely(ext)
            done = ext["sequence"]

    def _handle_safely(self, ext: dict[str, Any]) -> None:
        try:
            self._handle(ext)
        except CannotExecute as e:
            log.error("extension %s: %s", ext.get("name"), e)
            self.report([self._status(ext, "error", "GuestAgentSnapshotTaskStatusError",
                                      str(e), **e.status_extra())])
        except HostUnreachable as e:
            # The cause is the network, whether or not the extension was installed
            # before: the same code as the installed extension gives for it.
            log.warning("extension %s: %s", ext.get("name"), e)
            self.report([self._status(ext, "error", "ExtensionSnapshotFailedNoNetwork",
                                      str(e))])
        except Exception as e:
            log.exception("extension %s failed", ext.get("name"))
            self.report([self._status(ext, "error", "ExtensionOperationFailedForManagedDisks",
                                      f"agent could not run the extension: {e}")])

    @staticmethod
    def _status(ext: dict[str, Any], status: str, code: str | None, message: str,
                **extra: Any) -> dict[str, Any]:
        return {"name": ext["name"], "version": ext["version"], "sequence": ext["sequence"],
                "status": status, "code": code, "message": message, **extra}

    def _handle(self, ext: dict[str, Any]) -> None:
        d = self.ext_dir(ext["name"], ext["version"])
        seq = int(ext["sequence"])
        done_file = d / "last_sequence"
        if not (d / "HandlerManifest.json").exists():
            self._install(ext, d)
        if done_file.exists() and int(done_file.read_text() or -1) >= seq:
            return  # already ran this sequence number
        if ext.get("state", "enabled") != "enabled":
            # The service withdrew this task (its job ended): never run it, not even
            # when it comes back in a later goal state with the same sequence.
            log.info("extension %s sequence %s is %s: not run", ext["name"], seq,
                     ext.get("state"))
            done_file.write_text(str(seq))
            return
        (d / "config").mkdir(exist_ok=True)
        (d / "status").mkdir(exist_ok=True)
        write_json_atomic(d / "config" / f"{seq}.settings", ext.get("settings", {}))
        done_file.write_text(str(seq))
        self.report([self._status(ext, "transitioning", None, "enable started")])
        final = self._run_command(ext, d, "enable")
        self.report([final])

    def _install(self, ext: dict[str, Any], d: Path) -> None:
        log.info("downloading %s %s", ext["name"], ext["version"])
        # Connecting is given a fraction of what the service waits for this run, so a
        # blocked port is reported as such before the service gives up waiting.
        wait = float((ext.get("settings") or {}).get("deadlineSeconds", 300))
        timeout = httpx.Timeout(30, connect=max(1.0, min(10.0, wait / 3)))
        url = self.cfg.host_url + ext["package_path"]
        try:
            r = httpx.get(url, timeout=timeout,
                          headers={"Authorization": f"Bearer {self.cfg.token}"})
        except httpx.TransportError as e:
            raise HostUnreachable(f"the host endpoint cannot be reached to download the "
                                  f"extension ({url}): {type(e).__name__}: {e}") from e
        r.raise_for_status()
        digest = hashlib.sha256(r.content).hexdigest()
        if digest != ext["sha256"]:
            raise RuntimeError(f"package checksum mismatch: {digest} != {ext['sha256']}")
        tmp = d.with_name(d.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
            tar.extractall(tmp, filter="data")
        shutil.rmtree(d, ignore_errors=True)
        os.replace(tmp, d)
        manifest = json.loads((d / "HandlerManifest.json").read_text())
        if manifest.get("install"):
            limit = float(manifest.get("timeoutSeconds", 300))
            proc = self._exec(manifest["install"], d, self._env({**ext, "sequence": 0}, d),
                              limit)
            try:
                rc = proc.wait(limit)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise RuntimeError(f"install did not finish in {limit:.0f} s") from None
            if rc != 0:
                raise RuntimeError(f"install exited with {rc}")

    def _env(self, ext: dict[str, Any], d: Path) -> dict[str, str]:
        log_dir = Path(GUEST_LOG) / ext["name"]
        log_dir.mkdir(parents=True, exist_ok=True)
        return {
            ExtEnv.SEQUENCE: str(ext["sequence"]),
            ExtEnv.CONFIG_DIR: str(d / "config"),
            ExtEnv.STATUS_DIR: str(d / "status"),
            ExtEnv.LOG_DIR: str(log_dir),
            ExtEnv.HOST_ENDPOINT: self.cfg.host_url,
            ExtEnv.AGENT_TOKEN_FILE: self.cfg.values["Agent.TokenFile"],
            ExtEnv.LOG_VERBOSE: "1" if self.cfg.flag("Logs.Verbose") else "0",
        }

    def _exec(self, command: str, d: Path, env: dict[str, str],
              timeout: float) -> subprocess.Popen[bytes]:
        argv = command.split()
        argv[0] = str(d / argv[0])
        try:
            return subprocess.Popen(argv, cwd=d, env={**os.environ, **env},
                                    start_new_session=True, stdin=subprocess.DEVNULL)
        except (PermissionError, OSError) as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.ENOEXEC, errno.ENOENT):
                raise CannotExecute(Path(argv[0]), e) from e
            raise

    def _run_command(self, ext: dict[str, Any], d: Path, which: str) -> dict[str, Any]:
        manifest = json.loads((d / "HandlerManifest.json").read_text())
        timeout = float(manifest.get("timeoutSeconds", 600))
        status_file = d / "status" / f"{ext['sequence']}.status"
        try:
            proc = self._exec(manifest[which], d, self._env(ext, d), timeout)
        except CannotExecute as e:
            # EACCES from a noexec mount or a missing x bit, ENOEXEC, a policy's EPERM:
            # the kernel refused it. Say where, whatever the depth.
            return self._status(ext, "error", "GuestAgentSnapshotTaskStatusError",
                                str(e), **e.status_extra())
        # Which process runs which sequence: for the doctor, collect-logs and operators.
        pid_file = d / "status" / f"{ext['sequence']}.pid"
        pid_file.write_text(str(proc.pid))
        try:
            return self._wait(ext, which, proc, status_file, timeout)
        finally:
            pid_file.unlink(missing_ok=True)

    def _wait(self, ext: dict[str, Any], which: str, proc: subprocess.Popen[bytes],
              status_file: Path, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last_seen = None
        while proc.poll() is None:
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return self._status(ext, "error", "ExtensionOperationFailedForManagedDisks",
                                    f"extension {which} timed out after {timeout:.0f} s")
            # Long operations are reported as in progress, not killed.
            if status_file.exists():
                cur = status_file.read_text()
                if cur != last_seen:
                    last_seen = cur
                    try:
                        self.report([{**self._status(ext, "transitioning", None, ""),
                                      **json.loads(cur), "status": "transitioning"}])
                    except ValueError:
                        pass
            time.sleep(0.1)
        rc = proc.returncode
        try:
            reported = json.loads(status_file.read_text())
        except (OSError, ValueError):
            reported = None
        if rc < 0:
            return self._status(ext, "error", "ExtensionOperationFailedForManagedDisks",
                                f"extension was killed by signal {-rc}", signal=-rc,
                                **({"last_status": reported} if reported else {}))
        if reported is None:
            return self._status(ext, "error", "GuestAgentSnapshotTaskStatusError",
                                f"extension exited with {rc} and wrote no status")
        if reported.get("status") == "transitioning":
            reported["status"] = "error"
            reported.setdefault("code", "ExtensionOperationFailedForManagedDisks")
            reported["message"] = f"extension exited with {rc} while still in progress"
        return {**self._status(ext, reported.get("status", "error"), reported.get("code"),
                               reported.get("message", "")), **reported}
