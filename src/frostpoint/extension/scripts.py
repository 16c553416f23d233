"""Pre/post scripts from the root-owned /etc/frostpoint/vmbackup.json.

Keys (as in the field's VMSnapshotScriptPluginConfig.json): preScriptLocation,
postScriptLocation, preScriptParams, postScriptParams, preScriptNoOfRetries,
postScriptNoOfRetries, timeoutInSeconds (<= 1800), continueBackupOnFailure,
fsFreezeEnabled, holdFrozenSeconds (diagnostics: widen the freeze window, < limit).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frostpoint.protocol import SCRIPT_CONFIG

MAX_TIMEOUT = 1800


class ScriptError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class ScriptConfig:
    pre: str | None = None
    post: str | None = None
    pre_params: list[str] = field(default_factory=list)
    post_params: list[str] = field(default_factory=list)
    pre_retries: int = 0
    post_retries: int = 0
    timeout: float = 60
    continue_on_failure: bool = False
    freeze: bool = True
    hold_frozen: float = 0.0

    @classmethod
    def load(cls, path: str = SCRIPT_CONFIG) -> ScriptConfig:
        p = Path(path)
        if not p.exists():
            return cls()
        st = p.stat()
        if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise ScriptError("IncorrectJSONConfigFile",
                              f"{path} must be owned by root and not writable by others")
        try:
            raw: dict[str, Any] = json.loads(p.read_text())
            timeout = float(raw.get("timeoutInSeconds", 60))
            if not 0 < timeout <= MAX_TIMEOUT:
                raise ValueError(f"timeoutInSeconds must be 1..{MAX_TIMEOUT}")
            return cls(
                pre=raw.get("preScriptLocation") or None,
                post=raw.get("postScriptLocation") or None,
                pre_params=[str(x) for x in raw.get("preScriptParams", [])],
                post_params=[str(x) for x in raw.get("postScriptParams", [])],
                pre_retries=int(raw.get("preScriptNoOfRetries", 0)),
                post_retries=int(raw.get("postScriptNoOfRetries", 0)),
                timeout=timeout,
                continue_on_failure=bool(raw.get("continueBackupOnFailure", False)),
                freeze=bool(raw.get("fsFreezeEnabled", True)),
                hold_frozen=float(raw.get("holdFrozenSeconds", 0)),
            )
        except (ValueError, TypeError, AttributeError) as e:
            raise ScriptError("IncorrectJSONConfigFile", f"{path}: {e}") from e


def run_script(kind: str, path: str, params: list[str], retries: int,
               timeout: float, deadline: float = float("inf")) -> str:
    """Run a pre ("Pre") or post ("Post") script; returns its output or raises.
    No attempt runs past deadline (time.monotonic()), whatever timeout says."""
    p = Path(path)
    if not p.exists():
        raise ScriptError(f"{kind}-ScriptNotFound", f"{path} does not exist")
    st = p.stat()
    if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or not os.access(
            path, os.X_OK):
        raise ScriptError(f"InsufficientPermissionfor{kind}-Script",
                          f"{path} must be root-owned, executable, not writable by others")
    last = ""
    for _attempt in range(retries + 1):
        limit = min(timeout, deadline - time.monotonic())
        if limit <= 0:
            code = f"{kind}-ScriptTimeout"
            last = last or "no time left before the backup's deadline"
            break
        try:
            proc = subprocess.run([path, *params], capture_output=True, timeout=limit,
                                  start_new_session=True)
        except subprocess.TimeoutExpired:
            last = f"timed out after {limit:.0f} s" + (
                "" if limit == timeout else " (the backup's deadline)")
            code = f"{kind}-ScriptTimeout"
            continue
        if proc.returncode == 0:
            return proc.stdout.decode(errors="replace")[-2000:]
        code = f"{kind}-ScriptExecutionFailed"
        last = (f"exit {proc.returncode}: "
                f"{proc.stderr.decode(errors='replace')[-1000:].strip()}")
    raise ScriptError(code, f"{path}: {last}")
