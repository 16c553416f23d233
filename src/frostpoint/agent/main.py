"""frostpoint-agent: the guest agent daemon.

Heartbeats to the wire endpoint, long-polls the goal state (ETag), runs extensions
as the goal state says and uploads their status. See docs/protocol.md.
"""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from frostpoint.agent.config import AgentConfig, EndpointNotFound, installed_version
from frostpoint.agent.extensions import ExtensionHandler
from frostpoint.agent.frozen import thaw_leftovers
from frostpoint.agent.init import RESTART_REQUESTED
from frostpoint.protocol import GUEST_LIB, GUEST_LOG, HeartbeatBody

log = logging.getLogger("frostpoint.agent")


def setup_logging(cfg: AgentConfig) -> None:
    Path(GUEST_LOG).mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        filename=f"{GUEST_LOG}/agent.log",
        level=logging.DEBUG if cfg.flag("Logs.Verbose") else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def guest_facts() -> dict[str, Any]:
    os_release = {}
    p = Path("/etc/os-release")
    if p.exists():
        for line in p.read_text().splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                os_release[k] = v.strip('"')
    return {
        "os": os_release.get("PRETTY_NAME", platform.system()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "reboot_required": Path("/var/run/reboot-required").exists(),
    }


def heartbeat_body(cfg: AgentConfig) -> HeartbeatBody:
    """What the agent tells the wire endpoint every few seconds."""
    facts = guest_facts()
    return {"version": installed_version(), "status": "Ready",
            "extensions_enabled": cfg.flag("Extensions.Enabled"), "os": facts["os"],
            "kernel": facts["kernel"], "python": facts["python"],
            "reboot_required": facts["reboot_required"]}


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.headers = {"Authorization": f"Bearer {cfg.token}"}
        self.wire = httpx.Client(base_url=cfg.wire_url, headers=self.headers, timeout=10)
        self.handler = ExtensionHandler(cfg, self.report_status)
        self.stop = threading.Event()
        self.state_file = Path(GUEST_LIB) / "agent-state.json"

    def heartbeat_loop(self) -> None:
        while not self.stop.is_set():
            try:
                thaw_leftovers()  # a freezer that died hard leaves a marker
            except Exception:  # noqa: BLE001
                log.exception("thawing leftovers")
            body = heartbeat_body(self.cfg)
            try:
                self.wire.post("/machine/heartbeat", json=body).raise_for_status()
                log.debug("heartbeat sent")
            except Exception as e:  # noqa: BLE001 - the heartbeat must never stop
                log.warning("heartbeat failed: %s", e)
            self.stop.wait(self.cfg.heartbeat_seconds)

    def report_status(self, statuses: list[dict[str, Any]]) -> None:
        for attempt in range(5):
            try:
                self.wire.post("/machine/status", json={"extensions": statuses}).raise_for_status()
                return
            except httpx.HTTPError as e:
                log.warning("status upload failed (%s), attempt %d", e, attempt + 1)
                time.sleep(1)

    def goal_state_loop(self) -> None:
        etag = ""
        while not self.stop.is_set():
            try:
                r = self.wire.get("/machine/goalstate", params={"wait": 20},
                                  headers={"If-None-Match": etag}, timeout=30)
            except httpx.HTTPError as e:
                log.warning("goal state poll failed: %s", e)
                self.stop.wait(2)
                continue
            if r.status_code == 304:
                continue
            if r.status_code != 200:
                log.warning("goal state: HTTP %s %s", r.status_code, r.text[:200])
                self.stop.wait(2)
                continue
            etag = r.headers.get("ETag", "")
            goal = r.json()
            self.state_file.write_text(json.dumps(goal))
            log.info("goal state incarnation %s", goal.get("incarnation"))
            if not self.cfg.flag("Extensions.Enabled"):
                log.warning("Extensions.Enabled=n: ignoring %d extensions",
                            len(goal.get("extensions", [])))
                continue
            self.handler.apply(goal.get("extensions", []))

    def run(self) -> None:
        log.info("frostpoint-agent %s starting, fabric %s", installed_version(),
                 self.cfg.wire_url)
        threading.Thread(target=self.heartbeat_loop, daemon=True).start()
        self.goal_state_loop()


USAGE = ("usage: frostpoint-agent run|version|doctor [--json]|collect-logs [FILE]|restart|"
         "stop|thaw")


def _restart() -> None:
    """Stop the running agent; the supervisor starts a new one (it may have given up or
    be gone: then start a new supervisor)."""
    from frostpoint.agent import procs
    if Path("/run/systemd/system").is_dir():  # a VM with systemd: its unit supervises
        subprocess.run(["systemctl", "restart", "frostpoint-agent"], check=True)
        print("agent restarted")
        return
    sup = Path(GUEST_LIB) / "supervisor.json"
    gave_up = sup.exists() and "gave_up" in json.loads(sup.read_text())
    if gave_up:
        procs.kill("frostpoint.agent.init")
    elif procs.find("frostpoint.agent.main run"):
        RESTART_REQUESTED.touch()  # the supervisor restarts it without counting a crash
    procs.kill("frostpoint.agent.main run")
    if gave_up or not procs.find("frostpoint.agent.init"):
        sup.unlink(missing_ok=True)
        log = open(Path(GUEST_LOG) / "init.log", "ab")
        subprocess.Popen([sys.executable, "-m", "frostpoint.agent.init"], stdout=log,
                         stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    print("agent restarted")


def main() -> None:
    args = sys.argv[1:] or ["run"]
    cfg = AgentConfig.load()
    if args[0] == "run":
        setup_logging(cfg)
        while True:
            try:
                cfg = cfg.resolved()
                break
            except EndpointNotFound as e:  # no heartbeat until the fabric is found
                log.error("%s; retrying in 5 s", e)
                time.sleep(5)
        Agent(cfg).run()
    elif args[0] == "version":
        print(installed_version())
    elif args[0] == "doctor":
        from frostpoint.agent.doctor import run_doctor
        findings = run_doctor()
        if "--json" in args:
            print(json.dumps(findings, indent=2))
        else:
            for f in findings:
                print(f"[{f['status']:>4}] {f['check']}: {f['message']}"
                      + (f"  ({f['code']})" if f["code"] else ""))
                for fix in f["fix"]:
                    print(f"         fix: {fix}")
        sys.exit(1 if any(f["status"] == "fail" for f in findings) else 0)
    elif args[0] == "collect-logs":
        from frostpoint.agent.doctor import collect_logs
        print(collect_logs(args[1] if len(args) > 1 else None))
    elif args[0] == "restart":
        _restart()
    elif args[0] == "stop":  # what a crash or `systemctl kill` would do
        from frostpoint.agent import procs
        print("stopped:", procs.kill("frostpoint.agent.main run", 9))
    elif args[0] == "thaw":
        print("thawed:", thaw_leftovers() or "nothing")
    else:
        print(f"{USAGE} (got {args[0]!r})", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
