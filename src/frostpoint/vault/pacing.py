"""How often long vault operations ask to stop and report progress.

The service's callbacks are database queries and writes, too dear for every block (a
2 GiB disk has 2048 blocks). The check before a backup's manifest and the final
progress report are always made.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from frostpoint.vault.errors import Cancelled

Progress = Callable[[int, int], None]

# Read at call time, so a test may change them on this module.
CANCEL_CHECK_S = 0.05
PROGRESS_EVERY_S = 0.1


class Every:
    """Calling it says whether `seconds` have passed since it last said so (the first
    call says yes)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.next_at = float("-inf")

    def __call__(self) -> bool:
        now = time.monotonic()
        if now < self.next_at:
            return False
        self.next_at = now + self.seconds
        return True


def cancel_check(should_cancel: Callable[[], bool] | None,
                 cancelled: Callable[[], Cancelled]) -> Callable[[], None]:
    """Raises cancelled() when should_cancel says so, asking at most every
    CANCEL_CHECK_S seconds."""
    due = Every(CANCEL_CHECK_S)

    def check() -> None:
        if should_cancel is not None and due() and should_cancel():
            raise cancelled()
    return check


def throttled(progress: Progress | None) -> Progress | None:
    """progress, called at most every PROGRESS_EVERY_S seconds, and always at the end."""
    if progress is None:
        return None
    due = Every(PROGRESS_EVERY_S)

    def report(done: int, total: int) -> None:
        if done >= total or due():
            progress(done, total)
    return report
