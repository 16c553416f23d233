"""frostpoint-agent doctor: the in-guest half of the troubleshooting guide.

Checks the agent's config, the fabric endpoint on each port, that the extension
folder can execute programs, that each disk's mount can be frozen, the pre/post
script config, and leftovers (a frozen marker, a supervisor that gave up). Prints
findings; `--json` for the backup service's doctor, which runs this inside the machine.
"""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from frostpoint.agent.config import AgentConfig, EndpointNotFound, installed_version
from frostpoint.agent.frozen import MARKER
from frostpoint.agent.lease import fabric_from_lease
from frostpoint.extension.scripts import ScriptConfig, ScriptError
from frostpoint.protocol import (
    AGENT_CONFIG,
    DISK_ROOT,
    FABRIC_ADDRESS,
    FABRIC_OPTION,
    GUEST_ETC,
    GUEST_INTERFACE,
    GUEST_LIB,
    GUEST_LOG,
    GUEST_NETWORK_CONFIG,
)

FREEZABLE = {"ext4", "xfs", "btrfs", "ext3"}


def finding(check: str, status: str, message: str, code: str | None = None,
            fix: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"check": check, "status": status, "message": message, "code": code,
            "fix": fix or [], **extra}


def _mounts(with_device: bool = False) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    with open("/proc/self/mounts") as f:
        for line in f:
            dev, mnt, fs, opts = line.split()[:4]
            m = (mnt.replace("\\040", " "), fs, opts)
            out.append(m + (dev,) if with_device else m)
    return out


def _mount_of(path: str) -> tuple[str, ...] | None:
    best: tuple[str, ...] | None = None
    for m in _mounts():
        if (path == m[0] or path.startswith(m[0].rstrip("/") + "/")) and (
                best is None or len(m[0]) >= len(best[0])):
            best = m
    return best


def check_config(cfg: AgentConfig) -> list[dict[str, Any]]:
    out = []
    if not Path(AGENT_CONFIG).exists():
        out.append(finding("agent.config", "warn", f"{AGENT_CONFIG} is missing; defaults used"))
    if cfg.flag("Extensions.Enabled"):
        out.append(finding("agent.extensions_enabled", "pass", "Extensions.Enabled=y"))
    else:
        out.append(finding("agent.extensions_enabled", "fail",
                           "Extensions.Enabled=n: the agent runs no extension, so no "
                           "snapshot can be taken", "GuestAgentSnapshotTaskStatusError",
                           [f"sed -i 's/^Extensions.Enabled=.*/Extensions.Enabled=y/' "
                            f"{AGENT_CONFIG}", "frostpoint-agent restart"], fixable="enable"))
    token = Path(cfg.values["Agent.TokenFile"])
    if not token.exists():
        out.append(finding("agent.token", "fail", f"{token} is missing",
                           "UserErrorGuestAgentStatusUnavailable"))
    elif stat.S_IMODE(token.stat().st_mode) & 0o077:
        out.append(finding("agent.token", "warn", f"{token} is readable by others"))
    return out


def check_endpoint(cfg: AgentConfig) -> list[dict[str, Any]]:
    out = []
    try:
        addr = cfg.address
    except EndpointNotFound as e:
        # DHCP back on gives the lease again; naming the fabric's well-known address
        # works either way (the doctor's --fix).
        first = ([f"sed -i 's/inet static/inet dhcp/; /^ *address /d' {GUEST_NETWORK_CONFIG}",
                  f"ifdown --force {GUEST_INTERFACE}", f"ifup {GUEST_INTERFACE}"]
                 if e.dhcp_off else [f"ip route add default via {FABRIC_ADDRESS}"])
        return [finding("network.discovery", "fail", str(e),
                        "UserErrorGuestAgentStatusUnavailable",
                        [*first, f"sed -i 's/^Endpoint.Address=.*/Endpoint.Address="
                         f"{FABRIC_ADDRESS}/' {AGENT_CONFIG}"], fixable="set-endpoint",
                        dhcp_off=e.dhcp_off)]
    if cfg.discovery:
        how = (f"DHCP lease, option {FABRIC_OPTION}" if fabric_from_lease()
               else "default route")
        out.append(finding("network.discovery", "pass",
                           f"fabric endpoint {addr} found by discovery ({how})"))
    for name, port, code in (("wire", int(cfg.values["Endpoint.WirePort"]),
                              "UserErrorGuestAgentStatusUnavailable"),
                             ("host", int(cfg.values["Endpoint.HostPort"]),
                              "ExtensionSnapshotFailedNoNetwork")):
        t0 = time.monotonic()
        try:
            with socket.create_connection((addr, port), timeout=3):
                pass
            out.append(finding(f"network.{name}", "pass",
                               f"{name} endpoint {addr}:{port} answers "
                               f"({(time.monotonic() - t0) * 1000:.0f} ms)"))
        except OSError as e:
            out.append(finding(
                f"network.{name}", "fail",
                f"cannot reach the {name} endpoint {addr}:{port}: {e.strerror or e}", code,
                ["iptables -S OUTPUT", f"iptables -D OUTPUT -d {addr} -p tcp --dport {port} "
                 "-j DROP"], port=port))
    return out


def check_extension_dir() -> list[dict[str, Any]]:
    m = _mount_of(GUEST_LIB)
    if m and "noexec" in m[2].split(","):
        return [finding("extension.executable", "fail",
                        f"{GUEST_LIB} is on a noexec mount ({m[0]}): the snapshot extension "
                        "cannot run", "GuestAgentSnapshotTaskStatusError",
                        [f"mount -o remount,exec {m[0]}"], fixable="remount-exec",
                        mount=m[0])]
    # A noexec mount deeper down (over an extension's folder) stops it just the same.
    deeper = [mm for mm in _mounts() if mm[0].startswith(GUEST_LIB.rstrip("/") + "/")
              and "noexec" in mm[2].split(",")]
    if deeper:
        return [finding("extension.executable", "fail",
                        f"{deeper[-1][0]} is on a noexec mount: the extension there "
                        "cannot be executed", "GuestAgentSnapshotTaskStatusError",
                        [f"mount -o remount,exec {deeper[-1][0]}"], fixable="remount-exec",
                        mount=deeper[-1][0])]
    probe = Path(GUEST_LIB) / ".doctor-exec-probe"
    try:
        probe.write_text("#!/bin/sh\nexit 0\n")
        probe.chmod(0o700)
        subprocess.run([str(probe)], check=True, timeout=5)
        return [finding("extension.executable", "pass", f"{GUEST_LIB} can execute programs")]
    except (OSError, subprocess.SubprocessError) as e:
        return [finding("extension.executable", "fail",
                        f"a program in {GUEST_LIB} cannot run: {e}",
                        "GuestAgentSnapshotTaskStatusError",
                        [f"allow execution in {GUEST_LIB} (application control, "
                         "antivirus, mount options)"])]
    finally:
        probe.unlink(missing_ok=True)


def _writable_in_time(mount: str, seconds: float = 2.0) -> bool:
    # A write to a frozen filesystem blocks; run it in a child we can abandon.
    p = subprocess.Popen([sys.executable, "-c", "import os,sys; p=sys.argv[1]; "
                          "fd=os.open(p, os.O_WRONLY|os.O_CREAT); os.write(fd,b'x'); "
                          "os.fsync(fd); os.close(fd); os.unlink(p)",
                          os.path.join(mount, ".fp-doctor-probe")],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        return p.wait(seconds) == 0
    except subprocess.TimeoutExpired:
        return False  # left blocked; it ends when the filesystem thaws


def check_freeze() -> list[dict[str, Any]]:
    out = []
    if MARKER.exists():
        out.append(finding("freeze.marker", "warn",
                           f"{MARKER} exists: a freezer died while frozen; the agent thaws "
                           "it on its next heartbeat", "UserErrorFsFreezeFailed",
                           ["frostpoint-agent thaw"], fixable="thaw"))
    for mnt, fs, opts, dev in _mounts(with_device=True):
        # The machine's disks: block devices mounted at /mnt/NAME.
        if os.path.dirname(mnt) != DISK_ROOT or not dev.startswith("/dev/"):
            continue
        if fs not in FREEZABLE:
            out.append(finding(f"freeze.{mnt}", "fail", f"{mnt} is {fs}, which cannot be "
                               "frozen", "UserErrorFsFreezeFailed", mount=mnt))
        elif "ro" in opts.split(","):
            out.append(finding(f"freeze.{mnt}", "pass", f"{mnt} ({fs}) is read-only"))
        elif not _writable_in_time(mnt):
            out.append(finding(f"freeze.{mnt}", "fail",
                               f"{mnt} ({fs}) is frozen now (a write blocks): the next "
                               "freeze will fail", "UserErrorFsFreezeFailed",
                               [f"fsfreeze -u {mnt}"], fixable="thaw", mount=mnt))
        else:
            out.append(finding(f"freeze.{mnt}", "pass", f"{mnt} ({fs}) can be frozen"))
    return out


def check_scripts() -> list[dict[str, Any]]:
    try:
        cfg = ScriptConfig.load()
    except ScriptError as e:
        return [finding("scripts.config", "fail", e.message, e.code,
                        ["chown root:root /etc/frostpoint/vmbackup.json",
                         "chmod 600 /etc/frostpoint/vmbackup.json"])]
    out = [finding("scripts.config", "pass", "pre/post script config is valid"
                   if cfg.pre or cfg.post else "no pre/post scripts configured")]
    for kind, path in (("Pre", cfg.pre), ("Post", cfg.post)):
        if not path:
            continue
        p = Path(path)
        if not p.exists():
            out.append(finding(f"scripts.{kind.lower()}", "fail", f"{path} does not exist",
                               f"{kind}-ScriptNotFound"))
            continue
        st = p.stat()
        if st.st_uid != 0 or st.st_mode & 0o022 or not os.access(path, os.X_OK):
            out.append(finding(f"scripts.{kind.lower()}", "fail",
                               f"{path} must be root-owned, executable, not writable by "
                               "others", f"InsufficientPermissionfor{kind}-Script",
                               [f"chown root:root {path}", f"chmod 700 {path}"]))
        else:
            out.append(finding(f"scripts.{kind.lower()}", "pass", f"{path} is usable"))
    return out


def check_agent_state() -> list[dict[str, Any]]:
    sup = Path(GUEST_LIB) / "supervisor.json"
    if sup.exists():
        state = json.loads(sup.read_text())
        if "gave_up" in state:
            return [finding("agent.supervisor", "fail",
                            f"the agent is down: {state['gave_up']}",
                            "UserErrorGuestAgentStatusUnavailable",
                            ["frostpoint-agent restart"], restarts=state)]
    return [finding("agent.supervisor", "pass", "the agent is supervised")]


def check_os() -> list[dict[str, Any]]:
    out = []
    if Path("/var/run/reboot-required").exists():
        out.append(finding("os.reboot", "warn", "a reboot is pending (updates installed)"))
    out.append(finding("os.python", "pass", f"Python {sys.version.split()[0]}, agent "
                       f"{installed_version()}"))
    return out


def run_doctor() -> list[dict[str, Any]]:
    cfg = AgentConfig.load()
    return (check_config(cfg) + check_agent_state() + check_endpoint(cfg)
            + check_extension_dir() + check_freeze() + check_scripts() + check_os())


def collect_logs(target: str | None = None) -> str:
    """A tarball of agent and extension logs and the agent's state files."""
    out = target or f"/tmp/frostpoint-logs-{time.strftime('%Y%m%d-%H%M%S')}.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        for base in (GUEST_LOG, GUEST_LIB, GUEST_ETC):
            if not Path(base).exists():
                continue
            for p in Path(base).rglob("*"):
                if p.is_file() and p.name != "agent.token" and p.suffix != ".gz":
                    tar.add(p, arcname=str(p).lstrip("/"))
        info = json.dumps({"version": installed_version(), "doctor": run_doctor()},
                          indent=2).encode()
        ti = tarfile.TarInfo("doctor.json")
        ti.size = len(info)
        tar.addfile(ti, io.BytesIO(info))
    return out
