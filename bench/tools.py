"""borg and restic: installing them, and timing one command with its peak memory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PACKAGES = {"borg": "borgbackup", "restic": "restic"}


def ensure_installed() -> dict[str, str]:
    """apt-get install what is missing; `apt-get update` only if the install needs it."""
    missing = [pkg for tool, pkg in PACKAGES.items() if shutil.which(tool) is None]
    if missing:
        print(f"installing {' '.join(missing)} with apt-get", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
        if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return versions()


def versions() -> dict[str, str]:
    out = {}
    for tool in PACKAGES:
        p = subprocess.run([tool, "version" if tool == "restic" else "--version"],
                           capture_output=True, text=True)
        out[tool] = p.stdout.strip().splitlines()[0] if p.stdout else "?"
    return out


@dataclass
class Timed:
    seconds: float
    max_rss: int  # bytes, of the command (ru_maxrss of its process)
    cpu_s: float  # user + system CPU seconds of the command
    stdout: str
    stderr: str


def timed(argv: list[str], env: dict[str, str], log: Path) -> Timed:
    """Run argv, wall time with time.monotonic(), peak RSS from wait4's rusage."""
    out_path, err_path = log.with_suffix(".out"), log.with_suffix(".err")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.monotonic()
        p = subprocess.Popen(argv, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, ru = os.wait4(p.pid, 0)
        seconds = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    stdout = out_path.read_text(errors="replace")
    stderr = err_path.read_text(errors="replace")
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({p.returncode}):\n{stderr[-3000:]}")
    return Timed(seconds, ru.ru_maxrss * 1024, ru.ru_utime + ru.ru_stime, stdout, stderr)
