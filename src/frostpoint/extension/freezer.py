"""The freeze watchdog: a process whose only job is to freeze, hold, and always thaw.

Protocol on its pipes (the parent is the snapshot extension):
  parent starts:  python -m frostpoint.extension.freezer --limit S MOUNT...
  watchdog says:  "FROZEN <ms>"  or  "FAILED <mount> <reason>"
  parent says:    "THAW"
  watchdog says:  "THAWED <frozen-ms>"
It thaws on "THAW", on its own timer (--limit), on any catchable signal, on EOF of
stdin and when its parent dies (PR_SET_PDEATHSIG). It writes nothing to a frozen
filesystem: only to its pipe and to the marker under /var/lib/frostpoint-agent.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import os
import select
import signal
import sys
import threading
import time

from frostpoint.agent.frozen import FITHAW, remove_marker, thaw, write_marker

FIFREEZE = 0xC0045877
PR_SET_PDEATHSIG = 1


class Freezer:
    def __init__(self, mounts: list[str], limit: float, ioctl_limit: float) -> None:
        # Children first: /mnt/a/b freezes before /mnt/a; thaw is the reverse.
        self.mounts = sorted(mounts, key=lambda m: m.rstrip("/").count("/"), reverse=True)
        self.limit = limit
        self.ioctl_limit = ioctl_limit
        self.frozen: list[str] = []
        self.late: list[tuple[threading.Thread, str]] = []  # FIFREEZE still running
        # An open handle on each mount's root, kept from FIFREEZE to FITHAW: the thaw
        # goes through it, so a mount that vanished meanwhile (lazily unmounted, its
        # directory gone) is thawed all the same.
        self.fds: dict[str, int] = {}
        # Re-entrant: a signal (parent death) may arrive while thaw_all already runs in
        # the main thread; its handler must thaw too, never wait on itself.
        self.lock = threading.RLock()

    def _freeze_one(self, mount: str) -> str | None:
        """FIFREEZE with a time bound; returns an error text or None."""
        result: list[str | None] = []

        def work() -> None:
            try:
                fd = os.open(mount, os.O_RDONLY)
            except OSError as e:
                result.append(f"{e.strerror} (errno {e.errno})")
                return
            self.fds[mount] = fd
            try:
                fcntl.ioctl(fd, FIFREEZE, 0)
                result.append(None)
            except OSError as e:
                # Not frozen by us (EBUSY: someone else froze it): never thaw it.
                self.fds.pop(mount, None)
                os.close(fd)
                result.append(f"{e.strerror} (errno {e.errno})")

        t = threading.Thread(target=work, daemon=True)
        # Known before it starts: a signal that lands during the ioctl must wait for it
        # and thaw what it froze, or the filesystem would stay frozen with nobody left.
        self.late.append((t, mount))
        t.start()
        t.join(self.ioctl_limit)
        if t.is_alive():
            # The ioctl may still succeed later: thaw_all waits for it and thaws.
            return f"freeze did not finish within {self.ioctl_limit:.1f} s"
        if result[0] is None:
            self.frozen.append(mount)  # in `frozen` before it leaves `late`: never in neither
        self.late.remove((t, mount))
        return result[0]

    def freeze(self) -> tuple[str, str] | None:
        write_marker(os.getpid(), self.mounts, self.limit)
        for m in self.mounts:
            with self.lock:
                err = self._freeze_one(m)
            if err is not None:
                return m, err
        return None

    def _thaw_one(self, mount: str) -> None:
        """Thaw through the handle kept since the freeze; never raises, so that one
        mount that cannot be thawed (or vanished) does not keep the others frozen."""
        fd = self.fds.pop(mount, None)
        try:
            if fd is not None:
                with contextlib.suppress(OSError):  # EINVAL: no longer frozen
                    fcntl.ioctl(fd, FITHAW, 0)
                return
            thaw(mount)
        except OSError:
            pass  # no handle and the path is gone: nothing left to thaw through
        finally:
            if fd is not None:
                os.close(fd)

    def thaw_all(self) -> None:
        with self.lock:
            for m in reversed(self.frozen):
                self._thaw_one(m)
            self.frozen.clear()
            for t, m in self.late:
                if t.ident is not None:  # started: its FIFREEZE may land any moment
                    t.join(self.ioctl_limit * 3)
                self._thaw_one(m)
            self.late.clear()
        remove_marker()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=float, default=30.0, help="longest freeze, seconds")
    ap.add_argument("--ioctl-limit", type=float, default=10.0)
    ap.add_argument("mounts", nargs="+")
    args = ap.parse_args()
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    freezer = Freezer(args.mounts, args.limit, args.ioctl_limit)
    out = sys.stdout

    def on_signal(signum: int, _frame: object) -> None:
        freezer.thaw_all()
        os._exit(128 + signum)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
              signal.SIGUSR1, signal.SIGUSR2, signal.SIGPIPE, signal.SIGALRM):
        signal.signal(s, on_signal)
    if os.getppid() == 1:  # parent already gone before PDEATHSIG was armed
        return
    t0 = time.monotonic()
    failed = freezer.freeze()
    if failed:
        freezer.thaw_all()
        out.write(f"FAILED {failed[0]} {failed[1]}\n")
        out.flush()
        sys.exit(1)
    out.write(f"FROZEN {(time.monotonic() - t0) * 1000:.1f}\n")
    out.flush()
    frozen_at = time.monotonic()
    # Wait for THAW, EOF (parent died) or the timer, whichever comes first.
    reason = "timer"
    while True:
        remaining = args.limit - (time.monotonic() - frozen_at)
        if remaining <= 0:
            break
        ready, _, _ = select.select([sys.stdin], [], [], remaining)
        if ready:
            line = sys.stdin.readline()
            if not line:
                reason = "eof"
                break
            if line.strip() == "THAW":
                reason = "thaw"
                break
    freezer.thaw_all()
    try:
        out.write(f"THAWED {(time.monotonic() - frozen_at) * 1000:.1f} {reason}\n")
        out.flush()
    except BrokenPipeError:
        pass


if __name__ == "__main__":
    main()
