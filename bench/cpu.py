"""How busy the machine is: waiting for quiet before a timed step, and measuring how
much CPU other processes took during it (a shared 2-core machine makes wall times noisy;
this says how noisy)."""

from __future__ import annotations

import os
import time
from typing import Any

HZ = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


def system_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all CPUs.
    Busy counts user, nice, system, irq, softirq and steal; iowait is idle."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = v
    busy = user + nice + system + irq + softirq + steal
    return busy / HZ, (busy + idle + iowait) / HZ


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of one process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def wait_quiet(max_wait: float, busy_below: float = 0.2, window: float = 0.5,
               windows: int = 2) -> dict[str, Any]:
    """Wait until the machine's CPUs are less than busy_below busy for `windows`
    consecutive windows, or max_wait seconds. Returns how long it waited and how busy
    the last window was."""
    t0 = time.monotonic()
    quiet = 0
    frac = 0.0
    while True:
        b0, a0 = system_cpu()
        time.sleep(window)
        b1, a1 = system_cpu()
        frac = (b1 - b0) / max(a1 - a0, 1e-9)
        quiet = quiet + 1 if frac < busy_below else 0
        waited = time.monotonic() - t0
        if quiet >= windows or waited >= max_wait:
            return {"waited_s": round(waited, 2), "busy_frac": round(frac, 3),
                    "quiet": quiet >= windows}


class Contention:
    """Around one timed step: wall time, the machine's busy CPU seconds, and the part
    of them not spent by the measured process (`pid`, or a child's rusage given at the
    end) or by this harness: what other processes took."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid

    def __enter__(self) -> Contention:
        self.w0 = time.monotonic()
        self.b0, self.a0 = system_cpu()
        self.s0 = self_cpu()
        self.p0 = process_cpu(self.pid) if self.pid else 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.monotonic() - self.w0
        b1, a1 = system_cpu()
        self.busy, self.total = b1 - self.b0, a1 - self.a0
        self.harness = self_cpu() - self.s0
        self.measured = (process_cpu(self.pid) - self.p0) if self.pid else 0.0

    def result(self, child_cpu: float | None = None) -> dict[str, Any]:
        own = self.measured if child_cpu is None else child_cpu
        other = max(0.0, self.busy - own - self.harness)
        return {"cpu_s": round(own, 3), "other_cpu_s": round(other, 3),
                "other_cpu_frac": round(other / max(self.total, 1e-9), 3)}
