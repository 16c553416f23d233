"""The service's clock: what `utcnow()` (service/models.py) returns everywhere.

Retention, schedules and staleness all read this clock, so tests move time by moving
it, never by editing timestamps in the database. Two ways, both for tests only:

- in the same process (the in-memory tests): `use(Clock(...))` and `Clock.advance()`;
- in a running server: the environment variable FROSTPOINT_TEST_CLOCK_FILE names a file
  holding an offset in seconds that is added to the real time, read again whenever it
  changes (tests/conftest.py `Service.move_clock`).

It cannot be switched on by accident in production: without the variable the clock
is the real one; with it, the file must belong to the server's user and be writable by
no one else (or the server refuses to start), the offset can only move time forward
(a negative or unreadable offset counts as 0), and the server logs a warning at start
(docs/operations.md).
"""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

from frostpoint.errors.catalog import FrostpointError

TEST_CLOCK_ENV = "FROSTPOINT_TEST_CLOCK_FILE"


def real_utcnow() -> datetime:
    # Naive UTC everywhere: SQLite drops time zones, so one convention for all backends.
    return datetime.now(UTC).replace(tzinfo=None)


class Clock:
    """Real time plus an offset that only grows: in memory, or read from a file."""

    def __init__(self, offset_file: Path | None = None, offset_s: float = 0.0) -> None:
        self.offset_file = offset_file
        self._offset_s = offset_s
        self._seen: tuple[int, int] | None = None  # the file's (mtime_ns, size) last read

    def offset(self) -> timedelta:
        if self.offset_file is not None:
            self._reread()
        return timedelta(seconds=self._offset_s)

    def now(self) -> datetime:
        return real_utcnow() + self.offset()

    def advance(self, seconds: float) -> None:
        """Move time forward (in memory, or by rewriting the offset file)."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self.offset()
        self._offset_s += seconds
        if self.offset_file is not None:
            self.offset_file.write_text(f"{self._offset_s}\n")

    def _reread(self) -> None:
        assert self.offset_file is not None
        try:
            st = os.stat(self.offset_file)
        except FileNotFoundError:
            self._offset_s, self._seen = 0.0, None
            return
        key = (st.st_mtime_ns, st.st_size)
        if key == self._seen:
            return
        self._seen = key
        try:
            value = float(self.offset_file.read_text().strip() or 0)
        except (OSError, ValueError):
            value = 0.0
        self._offset_s = max(0.0, value)

    def check_offset_file(self) -> None:
        """Refuse a clock file others could write (at server start)."""
        if self.offset_file is None or not self.offset_file.exists():
            return
        st = os.stat(self.offset_file)
        if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise FrostpointError(
                "ServiceStartFailed", f"{TEST_CLOCK_ENV}={self.offset_file} must belong to "
                "the server's user and be writable by no one else; unset the variable "
                "outside tests", {"clock_file": str(self.offset_file)})


def from_env() -> Clock:
    path = os.environ.get(TEST_CLOCK_ENV)
    return Clock(Path(path)) if path else Clock()


_clock = from_env()


def clock() -> Clock:
    return _clock


def use(new: Clock) -> Clock:
    """Make new the process's clock (in-process tests); returns the one it replaces."""
    global _clock
    old, _clock = _clock, new
    return old


def utcnow() -> datetime:
    return _clock.now()
