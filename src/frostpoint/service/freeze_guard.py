"""The host's side of a freeze during a backup: whether one began, and a thaw from the
host when nobody in the machine is left to end it (docs/extension.md)."""

from __future__ import annotations

import logging
import time
from typing import Any

from frostpoint.protocol import SNAPSHOT_EXTENSION
from frostpoint.service.models import Machine, utcnow
from frostpoint.service.runtime import Runtime
from frostpoint.service.specs import machine_spec

HOST_THAW_GRACE_S = 2.0  # past the freeze limit, before the host thaws a machine
log = logging.getLogger("frostpoint.service")


class FreezeGuard:
    """Knows, from the snapshot task's status, whether a freeze of the machine began,
    and thaws its disks from the host once the freeze limit has passed with nobody
    having reported the end of it (every process of the machine may be dead)."""

    def __init__(self, rt: Runtime, machine_id: str, freeze_limit: float,
                 seq: int) -> None:
        self.rt = rt
        self.machine_id = machine_id
        self.seq = seq
        self.limit = freeze_limit
        self.freeze_seen: float | None = None  # monotonic time the freeze was announced
        self.last_alive: float = time.monotonic()
        self.thawed: list[str] | None = None
        self.final = False  # the extension reported its end: it thawed, or its agent did
        # Any status of this task seen: the agent began it (it reports before it runs
        # the extension), so a freeze may have begun. Without one, none can have.
        self.task_seen = False

    def observe(self, status: dict[str, Any], beat: Any) -> None:
        if beat is not None:
            self.last_alive = max(self.last_alive, time.monotonic()
                                  - (utcnow() - beat).total_seconds())
        self.task_seen = self.task_seen or bool(status)
        if status.get("status") in ("success", "error"):
            self.final = True
        if status.get("phase") == "freezing" and self.freeze_seen is None:
            self.freeze_seen = time.monotonic()
        if (self.freeze_seen is not None and self.thawed is None
                and time.monotonic() > self.freeze_seen + self.limit + HOST_THAW_GRACE_S):
            self.thawed = self._thaw()  # the extension is alive but silent past the limit

    def after_abnormal_end(self, machine_silent: bool) -> list[str]:
        if self.final:
            return []
        since = self.freeze_seen
        if since is None and machine_silent and self.task_seen:
            since = self.last_alive  # a freeze may have begun up to its last sign of life
        if since is None or self.thawed is not None:
            return self.thawed or []
        # Until the limit has passed, a final status (the extension ended, so thawed,
        # e.g. after a cancel) makes the host thaw unneeded.
        while time.monotonic() < since + self.limit + HOST_THAW_GRACE_S:
            if self._final_status():
                return []
            time.sleep(0.2)
        self.thawed = self._thaw()
        return self.thawed

    def _final_status(self) -> bool:
        with self.rt.sessions() as s:
            m = s.get(Machine, self.machine_id)
            ext = next((e for e in m.extensions if e.name == SNAPSHOT_EXTENSION),
                       None) if m else None
            return bool(ext and ext.sequence == self.seq
                        and (ext.status or {}).get("status") in ("success", "error"))

    def _thaw(self) -> list[str]:
        rt = self.rt
        with rt.sessions() as s:
            m = s.get(Machine, self.machine_id)
            if m is None:
                return []
            name = m.name
            disks = machine_spec(m).disks
        thawed = rt.platform.thaw(name, disks)
        if thawed:
            log.warning("machine %s: thawed %s from the host, frozen past the limit",
                        name, thawed)
        return thawed
