"""frostpoint doctor: walks the troubleshooting guide for one machine by itself.

Machine health, guest agent health, extension health, snapshot extension health (via
`frostpoint-agent doctor` run inside the machine: network to both ports, executable
extension folder, freezable mounts, script config), restore point count and locks,
jobs in progress. Each finding: pass / warn / fail, the code it leads to, the fix.
Fixes are either safe (applied by --fix) or risky (applied only when confirmed).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from frostpoint.enums import (
    AgentStatus,
    JobStatus,
    PowerState,
    ProtectionState,
    ProvisioningState,
    RestorePointTier,
)
from frostpoint.errors.catalog import FrostpointError
from frostpoint.protocol import (
    FABRIC_ADDRESS,
    GUEST_ETC,
    MIN_AGENT_VERSION,
    SNAPSHOT_EXTENSION,
    version_tuple,
)
from frostpoint.service.backup import MAX_DISK, MAX_ENCRYPTED_DISK, MAX_INSTANT_RPS
from frostpoint.service.jobs import ACTIVE
from frostpoint.service.keyvault import BACKUP_PRINCIPAL
from frostpoint.service.machines import Machines
from frostpoint.service.models import (
    Job,
    Lock,
    ProtectedItem,
    RestorePoint,
    RestorePointCollection,
    utcnow,
)
from frostpoint.service.models import Vault as VaultRow
from frostpoint.service.services import Services
from frostpoint.service.specs import machine_spec


@dataclass
class Finding:
    check: str
    status: str  # pass | warn | fail
    message: str
    code: str | None = None
    fix: list[str] = field(default_factory=list)  # the commands, for a person
    remedy: str | None = None  # what --fix can apply: see Doctor.apply
    risky: bool = False
    args: dict[str, Any] = field(default_factory=dict)


# Remedies that (re)start the agent: the fix has taken effect once it heartbeats again.
AGENT_REMEDIES = ("start", "agent-restart", "agent-install", "enable-extensions",
                  "set-endpoint")


class Doctor:
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.rt = svc.rt

    def examine(self, name: str) -> list[Finding]:
        with self.rt.sessions() as s:
            m = Machines.get(s, name)
            info = self.svc.machines.describe(m)
            mid = m.id
        out: list[Finding] = []
        out += self._machine(name, info)
        running = info["power_state"] == PowerState.RUNNING and self.rt.platform.is_running(name)
        if running:
            out += self._agent(name, info)
        out += self._extensions(name, info)
        if running and info["agent"]["installed"]:
            out += self._in_guest(name)
        out += self._disks(name, info)
        out += self._restore_points(name, mid)
        out += self._vault(mid)
        out += self._jobs(name, mid)
        return out

    # -- machine ---------------------------------------------------------------------
    def _machine(self, name: str, info: dict[str, Any]) -> list[Finding]:
        out = []
        prov, power = info["provisioning_state"], info["power_state"]
        if prov in (ProvisioningState.CREATING, ProvisioningState.DELETING,
                    ProvisioningState.UPDATING):
            out.append(Finding("machine.provisioning", "fail", f"machine is {prov}",
                               "UserErrorVmNotInDesirableState",
                               [f"frostpoint vm show {name}"]))
        elif prov == ProvisioningState.FAILED and not [
                e for e in info["extensions"] if e["provisioning_state"] == ProvisioningState.FAILED
                and e["name"] != SNAPSHOT_EXTENSION]:
            # Only the snapshot extension's last run failed: that is the failed backup
            # (its own finding says why); the next backup runs it again, and backups
            # are not refused for it. Nothing to remove.
            out.append(Finding("machine.provisioning", "pass",
                               "provisioning follows the failed last snapshot run; the "
                               "next backup runs the snapshot extension again"))
        elif prov == ProvisioningState.FAILED:
            failed = [e["name"] for e in info["extensions"]
                      if e["provisioning_state"] == ProvisioningState.FAILED]
            out.append(Finding("machine.provisioning", "fail",
                               f"provisioning Failed; failed extensions: {failed or 'none'}",
                               "UserErrorVmProvisioningStateFailed",
                               [f"frostpoint vm extension remove {name} {e}" for e in failed],
                               "remove-failed-extensions"))
        else:
            out.append(Finding("machine.provisioning", "pass", f"provisioning {prov}"))
        if power == PowerState.RUNNING and not self.rt.platform.is_running(name):
            out.append(Finding("machine.power", "fail",
                               "the platform says Running but nothing runs in the machine: "
                               "it was powered off from inside the guest",
                               "UserErrorGuestAgentStatusUnavailable",
                               [f"frostpoint vm start {name}"], "start"))
        elif power != PowerState.RUNNING:
            out.append(Finding("machine.power", "warn",
                               f"machine is {power}: backups are crash-consistent, without "
                               "the agent", None, [f"frostpoint vm start {name}"]))
        else:
            out.append(Finding("machine.power", "pass", "machine is Running"))
        return out

    # -- agent -----------------------------------------------------------------------
    def _agent(self, name: str, info: dict[str, Any]) -> list[Finding]:
        a = info["agent"]
        if not a["installed"]:
            return [Finding("agent.installed", "fail", "the machine has no guest agent "
                            "(made from an image without it)",
                            "UserErrorGuestAgentStatusUnavailable",
                            [f"frostpoint vm agent install {name}"], "agent-install")]
        out = []
        age = a.get("last_heartbeat_age_s")
        if age is None or age > self.rt.timeouts.heartbeat_stale:
            out.append(Finding("agent.heartbeat", "fail",
                               "no heartbeat from the agent" + (f" for {age:.0f} s" if age
                                                                 else " ever"),
                               "UserErrorGuestAgentStatusUnavailable",
                               [f"frostpoint vm agent restart {name}"], "agent-restart"))
        elif a["status"] != AgentStatus.READY:
            out.append(Finding("agent.heartbeat", "fail", f"agent reports {a['status']}",
                               "UserErrorGuestAgentStatusUnavailable",
                               [f"frostpoint vm agent restart {name}"], "agent-restart"))
        else:
            out.append(Finding("agent.heartbeat", "pass",
                               f"agent {a['version']} Ready, heartbeat {age:.0f} s ago"))
        if a.get("version") and version_tuple(a["version"]) < version_tuple(
                MIN_AGENT_VERSION):
            out.append(Finding("agent.version", "fail",
                               f"agent {a['version']} is older than {MIN_AGENT_VERSION}",
                               "GuestAgentSnapshotTaskStatusError",
                               [f"frostpoint vm agent install {name}"], "agent-install"))
        if a.get("reboot_required"):
            out.append(Finding("os.reboot", "warn", "the guest has a reboot pending"))
        return out

    def _extensions(self, name: str, info: dict[str, Any]) -> list[Finding]:
        out = []
        for e in info["extensions"]:
            st = e.get("status") or {}
            why: dict[str, Any] = st["details"] if isinstance(st.get("details"), dict) else {}
            if (e["provisioning_state"] == ProvisioningState.FAILED
                    and why.get("cause") == "extension cannot be executed"):
                # Reinstalling does not help: what stops it is in the guest. Say where.
                out.append(Finding(
                    f"extension.{e['name']}", "fail",
                    f"extension {e['name']} could not be executed: {why.get('path')}: "
                    f"{why.get('reason', '')}", "GuestAgentSnapshotTaskStatusError",
                    [f"allow execution of {why.get('path')} in {name} (mount options, "
                     "file mode, application control or security software)",
                     f"frostpoint backup now {name} --wait"]))
            elif e["provisioning_state"] == ProvisioningState.FAILED:
                code = ("ExtensionOperationFailedForManagedDisks"
                        if e["name"] == SNAPSHOT_EXTENSION
                        else "UserErrorVmProvisioningStateFailed")
                msg = f"extension {e['name']} Failed: {st.get('message', '')}"
                if st.get("signal"):
                    msg += (f" — killed by signal {st['signal']} that Frostpoint did not send:"
                            " security software? exclude /var/lib/frostpoint-agent and "
                            "/var/log/frostpoint from it")
                out.append(Finding(f"extension.{e['name']}", "fail", msg, code,
                                   [f"frostpoint vm extension remove {name} {e['name']}",
                                    f"frostpoint backup now {name} --wait"],
                                   "remove-extension", args={"extension": e["name"]}))
            else:
                out.append(Finding(f"extension.{e['name']}", "pass",
                                   f"extension {e['name']} {e['provisioning_state']}"))
        return out

    def _in_guest(self, name: str) -> list[Finding]:
        r = self.rt.platform.exec(name, ["frostpoint-agent", "doctor", "--json"], timeout=60)
        try:
            items = json.loads(r.stdout)
        except ValueError:
            return [Finding("guest.doctor", "fail", "frostpoint-agent doctor did not run: "
                            + r.stderr.decode(errors="replace")[-300:],
                            "UserErrorGuestAgentStatusUnavailable")]
        out = []
        remedies = {"enable": "enable-extensions", "remount-exec": "remount-exec",
                    "thaw": "thaw", "set-endpoint": "set-endpoint"}
        for f in items:
            remedy = remedies.get(f.get("fixable", ""))
            check = f["check"]
            if remedy is None and check.startswith("network.") and f["status"] == "fail":
                remedy = "open-port"
            out.append(Finding(f"guest.{check}", f["status"], f["message"], f.get("code"),
                               [f"frostpoint vm exec {name} -- {c}" for c in f["fix"]],
                               remedy, risky=remedy in ("enable-extensions", "remount-exec",
                                                        "open-port"),
                               args={k: f[k] for k in ("mount", "port") if k in f}))
        return out

    def _disks(self, name: str, info: dict[str, Any]) -> list[Finding]:
        out = []
        with self.rt.sessions() as s:
            spec_disks = {d.name: d for d in machine_spec(Machines.get(s, name)).disks}
        for d in info["disks"]:
            limit = MAX_ENCRYPTED_DISK if d["encrypted"] else MAX_DISK
            if d["size_bytes"] > limit:
                out.append(Finding(f"disk.{d['name']}", "fail",
                                   f"disk {d['name']} is {d['size_bytes'] / 2**40:.1f} TiB, "
                                   f"above the {limit / 2**40:.0f} TiB limit",
                                   "UserErrorUnsupportedDiskSize",
                                   ["split the data over smaller disks",
                                    f"frostpoint vm disk delete {name} {d['name']}"]))
            elif not self.rt.platform.disk_exists(spec_disks[d["name"]]):
                out.append(Finding(f"disk.{d['name']}", "fail",
                                   f"disk {d['name']}'s image is gone from the pool",
                                   "UserErrorCrpReportedUserError",
                                   [f"frostpoint vm disk delete {name} {d['name']}"]))
            if d.get("encryption_key"):
                out.append(self._key_access(d["name"], d["encryption_key"]))
        return out or [Finding("disks", "pass", f"{len(info['disks'])} disk(s) within limits")]

    def _key_access(self, disk: str, key_ref: str) -> Finding:
        check, vault = f"disk.{disk}.key", key_ref.partition("/")[0]
        try:
            missing = self.svc.machines.keyvaults.missing_access(key_ref, BACKUP_PRINCIPAL)
        except FrostpointError as e:
            return Finding(check, "fail",
                           f"key {key_ref} of disk {disk}: {e.detail or e.spec.message}",
                           "UserErrorKeyvaultPermissionsNotConfigured")
        if not missing:
            return Finding(check, "pass", f"the backup service may use key {key_ref}")
        return Finding(check, "fail", f"disk {disk} is encrypted with key {key_ref}, and key "
                       f"vault {vault} does not grant {BACKUP_PRINCIPAL} "
                       f"{' and '.join(missing)}", "UserErrorKeyvaultPermissionsNotConfigured",
                       [f"frostpoint keyvault grant {vault} --principal {BACKUP_PRINCIPAL}"],
                       "keyvault-grant", risky=True, args={"keyvault": vault})

    def _vault(self, mid: str) -> list[Finding]:
        with self.rt.sessions() as s:
            item = s.scalar(select(ProtectedItem).where(ProtectedItem.machine_id == mid))
            vault = s.get(VaultRow, item.vault_id) if item else None
            if vault is None:
                return []
            vid, vname = vault.id, vault.name
        try:
            store = self.svc.protection.store(vid)
            store.backend.put("probe/doctor", b"probe")
            store.backend.delete("probe/doctor")
            return [Finding("vault", "pass", f"vault {vname} is writable")]
        except Exception as e:  # noqa: BLE001 - any storage fault is the finding
            return [Finding("vault", "fail", f"vault {vname} cannot be written: {e}",
                            "BackUpOperationFailed",
                            [f"fix the vault's storage, then frostpoint vault verify {vname}"])]

    # -- restore points, locks, jobs ---------------------------------------------------
    def _restore_points(self, name: str, mid: str) -> list[Finding]:
        with self.rt.sessions() as s:
            item = s.scalar(select(ProtectedItem).where(ProtectedItem.machine_id == mid))
            if item is not None and item.protection_state == ProtectionState.SOFT_DELETED:
                # Undelete first; no automatic fix: the user chose to delete its data.
                return [Finding("protection", "fail", "machine is SoftDeleted: its data is "
                                "purged after the vault's soft-delete period",
                                "UserErrorBcmDatasourceNotPresent",
                                [f"frostpoint protect undelete {name}",
                                 f"frostpoint protect resume {name}"])]
            if item is None or item.protection_state in (ProtectionState.PROTECTION_STOPPED,
                                                         ProtectionState.PROTECTION_PAUSED):
                state = item.protection_state if item else ProtectionState.NOT_PROTECTED
                return [Finding("protection", "fail", f"machine is {state}",
                                "UserErrorBcmDatasourceNotPresent",
                                [f"frostpoint protect resume {name}"
                                 if item else f"frostpoint protect enable {name} --vault V "
                                 "--policy P"], "protect-resume" if item else None)]
            rpc = s.scalar(select(RestorePointCollection)
                           .where(RestorePointCollection.machine_id == mid))
            instant = list(s.scalars(select(RestorePoint.id).where(
                RestorePoint.machine_id == mid,
                RestorePoint.tier.in_((RestorePointTier.SNAPSHOT,
                                       RestorePointTier.SNAPSHOT_AND_VAULT)))
                .order_by(RestorePoint.created_at)))
            count = len(instant)
            locks = [lk.name for lk in s.scalars(select(Lock).where(
                Lock.resource_group_id == rpc.resource_group_id))] if rpc else []
        out = [Finding("protection", "pass", f"protection {item.protection_state}")]
        if count >= MAX_INSTANT_RPS:
            # The guide's remedy: remove the lock and delete the restore point
            # collection (removing the lock alone frees nothing when none has
            # expired). Risky, so it says exactly what goes.
            out.append(Finding("restore_points.count", "fail",
                               f"{count} instant restore points (limit {MAX_INSTANT_RPS})"
                               + (f"; lock(s) {', '.join(locks)} stop the cleanup"
                                  if locks else "")
                               + "; the fix "
                               + (f"removes lock(s) {', '.join(locks)} and " if locks else "")
                               + f"deletes these {count} instant restore points (their "
                               f"vault copies stay): {', '.join(instant)}",
                               "UserErrorRpCollectionLimitReached",
                               [f"frostpoint lock delete {lk}" for lk in locks]
                               + [f"frostpoint rp delete-collection {name}",
                                  f"frostpoint backup now {name} --wait"],
                               "free-restore-points", risky=True,
                               args={"locks": locks, "restore_points": instant}))
        else:
            out.append(Finding("restore_points.count", "pass",
                               f"{count} of {MAX_INSTANT_RPS} instant restore points"))
        if locks and count < MAX_INSTANT_RPS:  # else the count's fix removes them
            out.append(Finding("restore_points.locks", "warn",
                               f"lock(s) {', '.join(locks)} on the restore points' resource "
                               "group stop the cleanup of expired restore points",
                               "BackUpOperationFailedV2",
                               [f"frostpoint lock delete {lk}" for lk in locks],
                               "delete-locks", risky=True, args={"locks": locks}))
        return out

    def _jobs(self, name: str, mid: str) -> list[Finding]:
        old = utcnow() - timedelta(hours=1)
        with self.rt.sessions() as s:
            jobs = list(s.scalars(select(Job).where(Job.machine_id == mid,
                                                    Job.status.in_(ACTIVE))))
        if not jobs:
            return [Finding("jobs", "pass", "no job in progress")]
        out = []
        for j in jobs:
            stuck = j.started_at < old
            out.append(Finding("jobs", "warn" if stuck else "pass",
                               f"job {j.id} {j.operation} {j.status} since "
                               f"{j.started_at.isoformat()}Z",
                               "UserErrorBackupOperationInProgress",
                               [f"frostpoint job cancel {j.id}"],
                               "cancel-job" if stuck else None, risky=True,
                               args={"job": j.id}))
        return out

    # -- remedies ---------------------------------------------------------------------
    def apply(self, name: str, finding: Finding) -> str:
        t0 = time.monotonic()
        result = self._apply(name, finding)
        if finding.remedy in AGENT_REMEDIES:
            result += self._wait_heartbeat(name, t0)
        return result

    def _wait_heartbeat(self, name: str, since: float) -> str:
        """Wait for the restarted agent's first heartbeat, so that the doctor's next
        look sees the fix and not the agent that was still starting."""
        limit = self.rt.timeouts.heartbeat_stale
        while time.monotonic() - since < limit:
            agent = self.svc.machines.show(name)["agent"]
            if not agent["installed"]:
                return ""
            age = agent.get("last_heartbeat_age_s")
            if agent["status"] == "Ready" and age is not None and \
                    age < time.monotonic() - since:
                return f"; the agent heartbeats again after {time.monotonic() - since:.1f} s"
            time.sleep(0.3)
        return f"; no heartbeat from the agent within {limit:.0f} s"

    def _apply(self, name: str, finding: Finding) -> str:
        m = self.svc.machines
        r, a = finding.remedy, finding.args
        if r == "start":
            m.start(name)
        elif r == "agent-restart":
            m.agent_restart(name)
        elif r == "agent-install":
            m.agent_install(name)
        elif r == "keyvault-grant":  # risky: it lets the service read the disk's data
            m.keyvaults.grant(a["keyvault"], BACKUP_PRINCIPAL)
        elif r in ("remove-failed-extensions", "remove-extension"):
            exts = [a["extension"]] if "extension" in a else [
                e["name"] for e in m.show(name)["extensions"]
                if e["provisioning_state"] == ProvisioningState.FAILED]
            for e in exts:
                m.remove_extension(name, e)
        elif r == "enable-extensions":
            self._set_agent_conf(name, "Extensions.Enabled", "y")
            m.agent_restart(name)
        elif r == "remount-exec":
            self.rt.platform.remount(name, a["mount"], "exec")  # the guest cannot mount
        elif r == "thaw":
            mount = a.get("mount")
            self._guest(name, ["fsfreeze", "-u", str(mount)] if mount else
                        ["frostpoint-agent", "thaw"])
        elif r == "set-endpoint":  # discovery found nothing: name the well-known address
            self._set_agent_conf(name, "Endpoint.Address", FABRIC_ADDRESS)
            m.agent_restart(name)
        elif r == "open-port":
            # Delete every OUTPUT rule that drops or rejects the port.
            rules = self._guest(name, ["iptables", "-S", "OUTPUT"]).decode(errors="replace")
            for rule in rules.splitlines():
                words = rule.split()
                if (words[:1] == ["-A"] and f"--dport {a['port']} " in rule + " "
                        and re.search(r"-j (DROP|REJECT)\b", rule)):
                    self._guest(name, ["iptables", "-D", *words[1:]])
        elif r == "delete-locks":
            for lk in a["locks"]:
                self.svc.protection.delete_lock(lk)
        elif r == "free-restore-points":
            for lk in a["locks"]:
                self.svc.protection.delete_lock(lk)
            done = self.svc.backups.delete_collection(name)
            return (f"applied {r} for {finding.check}: "
                    + (f"removed lock(s) {', '.join(a['locks'])}; " if a["locks"] else "")
                    + f"deleted {done['deleted']} instant restore points (vault copies "
                    f"kept): {', '.join(a['restore_points'])}")
        elif r == "cancel-job":
            with self.rt.sessions.begin() as s:
                j = s.get(Job, a["job"])
                if j and j.status in ACTIVE:
                    j.cancel_requested, j.status = True, JobStatus.CANCELLING
        elif r == "protect-resume":
            self.svc.protection.set_state(name, "resume")
        else:
            raise FrostpointError("InvalidInput", f"no remedy for {finding.check}")
        return f"applied {r} for {finding.check}"

    def _guest(self, name: str, argv: list[str]) -> bytes:
        """Run one program in the machine (an argv, no shell); its output."""
        r = self.rt.platform.exec(name, argv, timeout=60)
        if r.returncode != 0:
            raise FrostpointError("InvalidInput", f"remedy failed in {name}: "
                                  + r.stderr.decode(errors="replace")[-300:])
        return r.stdout

    def _set_agent_conf(self, name: str, key: str, value: str) -> None:
        """Set one key of the guest's /etc/frostpoint/agent.conf (through the platform,
        which never follows a link the guest planted)."""
        path = f"{GUEST_ETC}/agent.conf"
        old = (self.rt.platform.read_guest_file(name, path) or b"").decode(errors="replace")
        lines = [f"{key}={value}" if ln.startswith(f"{key}=") else ln
                 for ln in old.splitlines()]
        if f"{key}={value}" not in lines:
            lines.append(f"{key}={value}")
        self.rt.platform.write_guest_file(name, path, "".join(f"{ln}\n" for ln in lines)
                                          .encode())


def as_dicts(findings: list[Finding]) -> list[dict[str, Any]]:
    return [asdict(f) for f in findings]
