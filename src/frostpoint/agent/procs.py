"""Processes of this machine only.

A sandbox machine has its own PID namespace, so /proc shows only its processes; the
agent still matches by command line AND network namespace, so the same code is right
where a guest's /proc is shared (an agent run by hand on a host, older machines).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def _netns(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def find(pattern: str) -> list[int]:
    """PIDs in this machine whose command line contains pattern (never this process)."""
    mine = _netns("self")
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) in (os.getpid(), os.getppid()):
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if pattern in cmd and _netns(p.name) == mine:
            out.append(int(p.name))
    return out


def kill(pattern: str, sig: int = signal.SIGTERM) -> list[int]:
    pids = find(pattern)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return pids
