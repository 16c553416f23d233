"""Starting and ending machines' freeze brokers (fabric/freezebroker.py), the host
processes that do a guest's FIFREEZE and FITHAW on its own disks only. Their socket,
pid and log are in DATA/run/broker/, the host's: never in a guest folder."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from frostpoint.fabric.system import freeze_broker, stop_process

START_S = 10.0


class FreezeBrokers:
    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir

    def socket(self, machine: str) -> Path:
        return self.dir / f"{machine}.sock"

    def start(self, machine: str, disks_dir: Path) -> None:
        """A new broker for machine (an old one is ended first), serving once this
        returns."""
        sock = self.socket(machine)
        self.stop(machine)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        disks_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.dir / f"{machine}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(freeze_broker(sock, disks_dir), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log, start_new_session=True)
        (self.dir / f"{machine}.pid").write_text(str(proc.pid))
        deadline = time.monotonic() + START_S
        while not sock.exists():  # the broker renames its socket into place once bound
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the freeze broker of {machine} did not start; see "
                                   f"{log_path}")
            time.sleep(0.01)

    def stop(self, machine: str) -> None:
        stop_process(self.dir / f"{machine}.pid", str(self.socket(machine)))
        self.socket(machine).unlink(missing_ok=True)

    def stop_all(self) -> None:
        for pid_file in self.dir.glob("*.pid") if self.dir.exists() else []:
            self.stop(pid_file.stem)
