"""The process that serves a vault's disk as a file read on demand (vault/lazyfile.py):
started for `rp browse` (for the listing) and `restore mount` (until the unmount) from
the vault, in a working folder of its own: WORK/lazy is its FUSE mount, WORK/lazy/disk.img
the disk, WORK/stats.json its read counts, WORK/reader.log its output."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from frostpoint.errors.catalog import FrostpointError
from frostpoint.vault.lazyfile import IMAGE

START_S = 60  # opening the vault (loading its index) in the reader's process
STOP_S = 10


def start(work: Path, config: dict[str, Any]) -> tuple[subprocess.Popen[bytes], Path]:
    """Start the reader for config (backend, location, key, restore point, disk); returns
    it and the disk's file once that is there. The key goes on stdin, never in argv. Its
    own session: it outlives a crash of the service, whose next start unmounts it."""
    lazy, log_path = work / "lazy", work / "reader.log"
    lazy.mkdir()
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "frostpoint.vault.lazyfile",
                                 str(lazy), str(work / "stats.json")],
                                stdin=subprocess.PIPE, stdout=out, stderr=out,
                                start_new_session=True)
    try:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(config).encode())
        proc.stdin.close()
        deadline = time.monotonic() + START_S
        while not (lazy / IMAGE).exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise FrostpointError("BackUpOperationFailed", "the vault's disk could not "
                                      "be opened for reading", {"log": log_path.read_text(
                                          errors="replace")[-2000:]})
            time.sleep(0.05)
    except BaseException:
        stop(work, proc)
        raise
    return proc, lazy / IMAGE


def stop(work: Path, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Unmount the reader's file (its loop then ends), and wait for it if it is ours."""
    subprocess.run(["umount", str(work / "lazy")], capture_output=True, check=False)
    if proc is None:
        return
    try:
        proc.wait(STOP_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def read_counts(work: Path) -> dict[str, Any]:
    """{"blocks_read", "blocks_total"} of the reader."""
    return dict(json.loads((work / "stats.json").read_text()))
