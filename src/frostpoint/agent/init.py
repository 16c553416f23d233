"""Guest init: the machine's first process; keeps the guest agent running, as systemd
would (Restart=always). A machine runs as long as its init does.

An agent that keeps crashing is not restarted forever: after 5 crashes in 60 s the
supervisor stops and records why in /var/lib/frostpoint-agent/supervisor.json.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from frostpoint.agent.config import AgentConfig
from frostpoint.protocol import AGENT_INSTALLED, GUEST_LIB

STATE = Path(GUEST_LIB) / "supervisor.json"
# `frostpoint-agent restart` leaves this before it stops the agent: that exit is asked
# for, not a crash, and does not count toward giving up.
RESTART_REQUESTED = Path(GUEST_LIB) / "restart-requested"
INSTALLED = Path(AGENT_INSTALLED)  # the agent package is on this machine


def main() -> None:
    child: subprocess.Popen[bytes] | None = None

    def stop(signum: int, _frame: object) -> None:
        if child and child.poll() is None:
            child.terminate()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    crashes: list[float] = []
    while True:
        if not INSTALLED.exists():  # an image without the agent: wait for an install
            time.sleep(1)
            continue
        child = subprocess.Popen([sys.executable, "-m", "frostpoint.agent.main", "run"])
        code = child.wait()
        now = time.time()
        if RESTART_REQUESTED.exists():
            RESTART_REQUESTED.unlink(missing_ok=True)
            continue
        crashes = [t for t in crashes if now - t < 60] + [now]
        state: dict[str, object] = {"last_exit": code, "restarts_last_minute": len(crashes),
                                    "at": now}
        if not AgentConfig.load().flag("Agent.AutoRestart"):
            state["gave_up"] = "Agent.AutoRestart=n"
        elif len(crashes) >= 5:
            state["gave_up"] = "agent crashed 5 times in 60 s"
        STATE.write_text(json.dumps(state))
        if "gave_up" in state:
            # Stay alive (the machine keeps running) but leave the agent down.
            signal.pause()
        time.sleep(1)


if __name__ == "__main__":
    main()
