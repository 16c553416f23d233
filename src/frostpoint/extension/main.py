"""The snapshot extension: pre-scripts, freeze, host snapshot, thaw, post-scripts.

Run by the guest agent as `bin/frostpoint-snapshot enable` with its settings in
$FP_EXT_CONFIG_DIR/$FP_EXT_SEQUENCE.settings; writes $FP_EXT_STATUS_DIR/SEQ.status.
See docs/extension.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from frostpoint.extension.scripts import ScriptConfig, ScriptError, run_script
from frostpoint.protocol import Consistency, ExtEnv

RESERVE_S = 5.0  # of the service's wait, kept for the freeze, the report and slack


class Extension:
    def __init__(self) -> None:
        self.seq = os.environ[ExtEnv.SEQUENCE]
        self.settings: dict[str, Any] = json.loads(
            Path(os.environ[ExtEnv.CONFIG_DIR], f"{self.seq}.settings").read_text())
        self.status_path = Path(os.environ[ExtEnv.STATUS_DIR], f"{self.seq}.status")
        self.log_path = Path(os.environ[ExtEnv.LOG_DIR], "snapshot.log")
        self.lines: list[str] = []  # buffered: nothing is written while frozen
        self.warnings: list[dict[str, str]] = []
        self.t0 = time.monotonic()
        # The service waits deadlineSeconds for this run's status. Scripts get what is
        # left after a reserve for the snapshot call and the report, so a slow script
        # ends as a script timeout (its own code), not as a silent extension.
        reserve = float(self.settings.get("hostCallTimeoutSeconds", 10)) + RESERVE_S
        self.deadline = self.t0 + float(self.settings.get("deadlineSeconds", 1e9)) - reserve

    def log(self, msg: str) -> None:
        self.lines.append(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} [{self.seq}] {msg}")

    def flush_log(self) -> None:
        with open(self.log_path, "a") as f:
            f.write("\n".join(self.lines) + "\n")
        self.lines.clear()

    def status(self, status: str, code: str | None = None, message: str = "",
               **extra: Any) -> None:
        body = {"status": status, "code": code, "message": message,
                "warnings": self.warnings, "elapsedMs": (time.monotonic() - self.t0) * 1000,
                **extra}
        tmp = self.status_path.with_name(self.status_path.name + ".tmp")
        tmp.write_text(json.dumps(body))
        os.replace(tmp, self.status_path)

    def fail(self, code: str, message: str, **extra: Any) -> None:
        self.log(f"FAILED {code}: {message}")
        self.flush_log()
        self.status("error", code, message, **extra)
        sys.exit(1)

    def run_pre_script(self, cfg: ScriptConfig) -> bool:
        """True if a pre-script ran and succeeded; a failure fails the backup unless
        continueBackupOnFailure, then it is a warning (lower consistency)."""
        if not cfg.pre:
            return False
        try:
            out = run_script("Pre", cfg.pre, cfg.pre_params, cfg.pre_retries, cfg.timeout,
                             self.deadline)
            self.log(f"pre-script ok: {out.strip()[:200]}")
            return True
        except ScriptError as e:
            if not cfg.continue_on_failure:
                self.fail(e.code, e.message)
            self.log(f"pre-script failed, continuing: {e.code} {e.message}")
            self.warnings.append({"code": e.code, "message": e.message})
            return False

    def run_post_script(self, cfg: ScriptConfig) -> None:
        """After the snapshot, a failed post-script cannot unmake it: a warning."""
        if not cfg.post:
            return
        try:
            run_script("Post", cfg.post, cfg.post_params, cfg.post_retries, cfg.timeout,
                       self.deadline)
            self.log("post-script ok")
        except ScriptError as e:
            self.log(f"post-script failed: {e.code} {e.message}")
            self.warnings.append({"code": e.code, "message": e.message})

    def check_task_live(self, client: httpx.Client) -> None:
        """Ask the host whether this task is still live before freezing anything: a
        goal state run late (extensions enabled again, an agent back) may carry the
        task of a job that has already ended. See docs/protocol.md."""
        try:
            r = client.get(f"/snapshot/task/{self.settings['taskId']}")
        except httpx.HTTPError as e:
            self.fail("ExtensionSnapshotFailedNoNetwork",
                      f"the host endpoint cannot be reached: {type(e).__name__}: {e}")
        if r.status_code == 200:
            return
        refusal = _error_of(r) or {}
        self.fail(refusal.get("code") or "ExtensionOperationFailedForManagedDisks",
                  "the host refused the snapshot task, nothing was frozen: "
                  + str(refusal.get("message") or f"HTTP {r.status_code}"),
                  details=refusal.get("details", {}))

    def snapshot(self) -> None:
        self.status("transitioning", message="starting")
        try:
            cfg = ScriptConfig.load()
        except ScriptError as e:
            self.fail(e.code, e.message)
        pre_ok = self.run_pre_script(cfg)
        mounts = [d["mountpoint"] for d in self.settings.get("disks", [])]
        freeze_limit = float(self.settings.get("freezeLimitSeconds", 30))
        host_timeout = float(self.settings.get("hostCallTimeoutSeconds", 10))
        # Everything the frozen phase needs is made now: client, token, command line.
        token = Path(os.environ[ExtEnv.AGENT_TOKEN_FILE]).read_text().strip()
        client = httpx.Client(base_url=os.environ[ExtEnv.HOST_ENDPOINT], timeout=host_timeout,
                              headers={"Authorization": f"Bearer {token}"})
        freeze = cfg.freeze and bool(mounts)
        body = {"taskId": self.settings["taskId"], "frozen": freeze}
        self.check_task_live(client)
        freezer = None
        if freeze:
            # Said before the first FIFREEZE: if everything in this machine dies while
            # frozen, the host knows a freeze began and thaws once its limit is past.
            self.status("transitioning", message="freezing", phase="freezing",
                        mounts=mounts)
            freezer = subprocess.Popen(
                [sys.executable, "-m", "frostpoint.extension.freezer",
                 "--limit", str(freeze_limit), *mounts],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert freezer.stdout and freezer.stdin
            first = freezer.stdout.readline().split(" ", 2)
            if first[0] != "FROZEN":
                freezer.wait()
                self.fail("UserErrorFsFreezeFailed",
                          f"could not freeze {first[1] if len(first) > 1 else '?'}: "
                          f"{first[2].strip() if len(first) > 2 else 'watchdog failed'}")
            self.log(f"frozen {mounts} in {first[1].strip()} ms")
            if cfg.hold_frozen:
                time.sleep(min(cfg.hold_frozen, freeze_limit * 0.8))
        try:
            r = client.post("/snapshot", json=body)
            host_error = None if r.status_code == 200 else (r.status_code, r.text[:500])
            result = r.json() if r.status_code == 200 else {}
            refusal = _error_of(r) if r.status_code != 200 else None
        except httpx.HTTPError as e:
            host_error = (0, f"{type(e).__name__}: {e}")
            result, refusal = {}, None
        freeze_ms = None
        if freezer:
            assert freezer.stdin and freezer.stdout
            try:
                freezer.stdin.write("THAW\n")
                freezer.stdin.flush()
            except BrokenPipeError:
                pass
            thawed = freezer.stdout.readline().split()
            freezer.wait()
            if not thawed:
                # The watchdog died (SIGKILL) without thawing: thaw from its marker now.
                from frostpoint.agent.frozen import thaw_leftovers
                self.log(f"freeze watchdog died ({freezer.returncode}); thawed "
                         f"{thaw_leftovers()}")
                self.warnings.append({"code": "UserErrorFsFreezeFailed",
                                      "message": "the freeze watchdog died; the extension "
                                                 "thawed the mounts itself"})
            if thawed and thawed[0] == "THAWED":
                freeze_ms = float(thawed[1])
                if thawed[2] == "timer":
                    self.fail("UserErrorFsFreezeFailed",
                              f"the freeze outlasted its limit of {freeze_limit} s; "
                              "the watchdog thawed")
            self.log(f"thawed after {freeze_ms} ms")
        if refusal and refusal.get("code"):
            # The platform said why (e.g. a disk is gone): pass its code and details on.
            self.fail(refusal["code"], refusal.get("message", ""),
                      details=refusal.get("details", {}))
        if host_error:
            code = ("ExtensionSnapshotFailedNoNetwork" if host_error[0] == 0
                    else "ExtensionOperationFailedForManagedDisks")
            self.fail(code, f"host snapshot request failed: {host_error[1]}")
        self.run_post_script(cfg)
        consistency = Consistency.FILE_SYSTEM if freeze else Consistency.CRASH
        if cfg.pre and pre_ok:
            consistency = Consistency.APPLICATION
        self.log(f"snapshot {result.get('snapshotId')} done, {consistency}")
        self.flush_log()
        self.status("success", None, "snapshot taken", consistency=consistency,
                    freezeMs=freeze_ms, snapshot=result)


def _error_of(r: httpx.Response) -> dict[str, Any] | None:
    try:
        body = r.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) and "code" in body else None


def main() -> None:
    op = sys.argv[1] if len(sys.argv) > 1 else "enable"
    if op in ("install", "uninstall", "disable"):
        return
    if op != "enable":
        print(f"unknown operation {op}", file=sys.stderr)
        sys.exit(2)
    Extension().snapshot()


if __name__ == "__main__":
    main()
