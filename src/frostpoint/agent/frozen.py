"""The "frozen" marker: what a freezer froze, so that a restarted agent can thaw it.

The freezer writes the marker before the first FIFREEZE and removes it after the last
thaw. The marker lives under /var/lib/frostpoint-agent, never on a frozen filesystem.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import time
from pathlib import Path

from frostpoint.protocol import GUEST_LIB

MARKER = Path(GUEST_LIB) / "frozen.json"
FITHAW = 0xC0045878
log = logging.getLogger("frostpoint.agent")


def _start_time(pid: int) -> str | None:
    """A process's start time (clock ticks since boot): pid plus this names it uniquely.

    Read from /proc/PID/stat, which never waits on the process's memory, unlike
    /proc/PID/cmdline (that read can stall or come back empty during a freeze)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def write_marker(pid: int, mounts: list[str], limit: float = 60.0) -> None:
    tmp = MARKER.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": pid, "start": _start_time(pid), "mounts": mounts,
                               "at": time.time(), "limit": limit}))
    os.replace(tmp, MARKER)


def remove_marker() -> None:
    MARKER.unlink(missing_ok=True)


def thaw(mount: str) -> bool:
    """Thaw one mount; True if it was frozen. A mount that is gone is not frozen here,
    and must not stop the caller from thawing the others."""
    try:
        fd = os.open(mount, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.ioctl(fd, FITHAW, 0)
        return True
    except OSError:
        return False  # EINVAL: not frozen
    finally:
        os.close(fd)


def _alive(pid: int, start: str | None) -> bool:
    return start is not None and _start_time(pid) == start


def thaw_leftovers() -> list[str]:
    """Thaw mounts left frozen by a freezer that is gone."""
    if not MARKER.exists():
        return []
    try:
        data = json.loads(MARKER.read_text())
    except (OSError, ValueError):
        remove_marker()
        return []
    overdue = time.time() > float(data.get("at", 0)) + float(data.get("limit", 60)) + 10
    alive = _alive(int(data.get("pid", 0)), data.get("start"))
    if alive and not overdue:
        return []
    if alive:  # a watchdog that outlived its own limit is stuck: stop it, then thaw
        log.error("freeze watchdog %s is past its limit: thawing without it", data.get("pid"))
        with contextlib.suppress(OSError):
            os.kill(int(data.get("pid", 0)), signal.SIGKILL)
    thawed = [m for m in reversed(data.get("mounts", [])) if thaw(m)]
    if thawed:
        log.warning("thawed mounts left frozen by a dead freezer: %s", thawed)
    remove_marker()
    return thawed
