"""Machines as the service sees them: lifecycle, goal state, agent reports, snapshots."""

from __future__ import annotations

import contextlib
import re
import secrets
import time
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, object_session

from frostpoint import __version__
from frostpoint.agent.config import render as render_agent_config
from frostpoint.enums import (
    AgentStatus,
    JobStatus,
    PowerState,
    ProvisioningState,
    SubTaskName,
    SubTaskStatus,
)
from frostpoint.errors.catalog import FrostpointError
from frostpoint.fabric.packages import Package, build_packages
from frostpoint.fabric.platform import DiskSpec, MachineSpec
from frostpoint.protocol import GUEST_ETC, SNAPSHOT_EXTENSION, version_tuple
from frostpoint.service.keyvault import PLATFORM, KeyVaults
from frostpoint.service.models import (
    Disk,
    Extension,
    Job,
    Machine,
    ResourceGroup,
    RestorePointCollection,
    SubTask,
    utcnow,
)
from frostpoint.service.names import NAME_RE, check_disk, check_vm_size
from frostpoint.service.runtime import Runtime, status_key
from frostpoint.service.specs import machine_spec, taken_disks
from frostpoint.service.tokens import token_hash

MAX_SLOT = 240
VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
SNAPSHOT_STEP = SubTaskName.TAKE_SNAPSHOT  # backup.SNAPSHOT (backup imports this module)
BUSY = (ProvisioningState.CREATING, ProvisioningState.UPDATING,
        ProvisioningState.DELETING)  # an operation runs; no backup, no other op


class Machines:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.keyvaults = KeyVaults(rt)
        self.packages: dict[str, Package] = build_packages(rt.data_dir / "packages")
        self.package: Package = self.packages[SNAPSHOT_EXTENSION]
        self._token_cache: dict[str, tuple[str, float]] = {}

    # -- lookups -----------------------------------------------------------------
    @staticmethod
    def get(s: Session, name: str) -> Machine:
        m = s.scalar(select(Machine).where(Machine.name == name))
        if m is None:
            raise FrostpointError("NotFound", f"no machine named {name!r}")
        return m

    # -- lifecycle ---------------------------------------------------------------
    def create(self, name: str, disks: list[dict[str, Any]], region: str = "local",
               agent: bool = True, agent_version: str | None = None, kind: str = "sandbox",
               memory: str = "1G", cpus: int = 1) -> dict[str, Any]:
        if not NAME_RE.match(name):
            raise FrostpointError("InvalidInput",
                                  "machine names are 1-20 of a-z, 0-9, '-', starting a-z")
        if agent_version is not None and not (
                VERSION_RE.match(agent_version)
                and version_tuple(agent_version) <= version_tuple(__version__)):
            raise FrostpointError("InvalidInput", f"agent version {agent_version!r}: use a "
                                  f"release X.Y.Z no newer than {__version__}")
        names = [str(d.get("name")) for d in disks]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:  # checked before any key, disk or row is made
            raise FrostpointError("InvalidInput", f"disk name(s) {', '.join(twice)} given "
                                  "more than once; each disk of a machine needs its own name")
        memory_bytes = check_vm_size(kind, memory, cpus)
        specs = []
        for i, d in enumerate(disks):
            _, size, fs = check_disk(d)
            key_ref, wrapped, dek = d.get("encryption_key"), d.get("wrapped_key"), None
            if key_ref and kind == "qemu":
                raise FrostpointError("InvalidInput", f"disk {d['name']}: encrypted disks "
                                      "are for sandbox machines (a VM would need the key)")
            if key_ref and fs != "ext4":
                raise FrostpointError("InvalidInput", f"disk {d['name']}: only ext4 disks "
                                      "can be encrypted")
            if key_ref and wrapped:  # a restored disk keeps the data key it was made with
                dek = self.keyvaults.unwrap(key_ref, wrapped, PLATFORM)
            elif key_ref:
                dek, wrapped = self.keyvaults.new_data_key(key_ref)
            specs.append((i, d["name"], size, fs, key_ref, wrapped, dek))
        token = secrets.token_urlsafe(32)
        with self.rt.sessions.begin() as s:
            if s.scalar(select(Machine).where(Machine.name == name)):
                raise FrostpointError("Conflict", f"machine {name} already exists")
            used = set(s.scalars(select(Machine.slot)))
            slot = next((n for n in range(1, MAX_SLOT) if n not in used), None)
            if slot is None:
                raise FrostpointError("Conflict", "no free machine slot on this host")
            m = Machine(name=name, region=region, slot=slot, kind=kind,
                        memory_bytes=memory_bytes, cpus=cpus,
                        address=self.rt.platform.machine_address(slot),
                        agent_token_hash=token_hash(token), agent_installed=agent,
                        provisioning_state=ProvisioningState.CREATING,
                        power_state=PowerState.STOPPED)
            for lun, dname, size, fs, key_ref, wrapped, _ in specs:
                m.disks.append(Disk(name=dname, lun=lun, size_bytes=size, filesystem=fs,
                                    image_path=self.rt.platform.disk_location(name, dname),
                                    mountpoint=f"/mnt/{dname}", encrypted=bool(key_ref),
                                    key_ref=key_ref, wrapped_key=wrapped))
            s.add(m)
        spec = machine_spec(m)
        for disk, d, (*_, dek) in zip(spec.disks, disks, specs, strict=True):
            disk.key, disk.source = dek, d.get("source")  # source: vm import's image
        try:
            self.rt.platform.create(spec, {
                f"{GUEST_ETC}/agent.token": (token, 0o600),
                f"{GUEST_ETC}/agent.conf": (render_agent_config({}), 0o644)})
            self.rt.platform.install_agent(name, (agent_version or __version__)
                                           if agent else None)
            self.rt.platform.start(spec)
        except Exception as e:
            with self.rt.sessions.begin() as s:
                self.get(s, name).provisioning_state = ProvisioningState.FAILED
            raise FrostpointError("UserErrorCrpReportedUserError",
                                  f"could not create machine {name}: {e}") from e
        with self.rt.sessions.begin() as s:
            m = self.get(s, name)
            m.provisioning_state, m.power_state = ProvisioningState.SUCCEEDED, PowerState.RUNNING
        return self.show(name)

    @contextlib.contextmanager
    def _updating(self, name: str) -> Iterator[Machine]:
        """Provisioning Updating while a platform operation runs (start, stop, disk
        detach), as a cloud shows it; one operation on a machine at a time."""
        with self.rt.sessions.begin() as s:
            m = self.get(s, name)
            if m.provisioning_state in BUSY:
                raise FrostpointError("UserErrorVmNotInDesirableState",
                                      f"machine {name} is {m.provisioning_state}; wait for "
                                      "that operation to finish",
                                      {"provisioning_state": m.provisioning_state})
            before, m.provisioning_state = m.provisioning_state, ProvisioningState.UPDATING
        try:
            with self.rt.sessions() as s:
                yield self.get(s, name)
        finally:
            with self.rt.sessions.begin() as s:
                self.get(s, name).provisioning_state = before

    def keyed_spec(self, m: Machine) -> MachineSpec:
        """The machine's spec with its encrypted disks' data keys, to attach them."""
        spec = machine_spec(m)
        for disk, d in zip(spec.disks, m.disks, strict=True):
            if d.key_ref and d.wrapped_key:
                disk.key = self.keyvaults.unwrap(d.key_ref, d.wrapped_key, PLATFORM)
        return spec

    def start(self, name: str) -> dict[str, Any]:
        with self._updating(name) as m:
            if not self.rt.platform.is_running(name):
                self.rt.platform.start(self.keyed_spec(m))
        with self.rt.sessions.begin() as s:
            self.get(s, name).power_state = PowerState.RUNNING
        return self.show(name)

    def delete_disk(self, name: str, disk: str) -> dict[str, Any]:
        """Detach a data disk and delete it (the machine keeps running)."""
        with self._updating(name) as m:
            d = next((x for x in m.disks if x.name == disk), None)
            if d is None:
                raise FrostpointError("NotFound", f"machine {name} has no disk {disk}")
            if len(m.disks) == 1:
                raise FrostpointError("InvalidInput", "a machine keeps at least one disk")
            spec = machine_spec(m)
            self.rt.platform.detach_disk(spec, next(x for x in spec.disks if x.name == disk))
            with self.rt.sessions.begin() as s:
                mm = self.get(s, name)
                mm.disks.remove(next(x for x in mm.disks if x.name == disk))
        return self.show(name)

    def agent_restart(self, name: str) -> dict[str, Any]:
        """Restart the guest agent (its supervisor too, if that gave up or is gone)."""
        with self.rt.sessions() as s:
            m = self.get(s, name)
            if m.power_state != PowerState.RUNNING:
                raise FrostpointError("UserErrorVmNotInDesirableState",
                                      f"machine {name} is {m.power_state}")
            if not m.agent_installed:
                raise FrostpointError("UserErrorGuestAgentStatusUnavailable",
                                      f"machine {name} has no agent: frostpoint vm agent "
                                      f"install {name}")
        if not self.rt.platform.is_running(name):
            return self.start(name)
        r = self.rt.platform.exec(name, ["frostpoint-agent", "restart"], timeout=60)
        if r.returncode != 0:
            raise FrostpointError("UserErrorGuestAgentStatusUnavailable",
                                  "the agent could not be restarted: "
                                  + r.stderr.decode(errors="replace")[-500:])
        return self.show(name)

    def agent_install(self, name: str) -> dict[str, Any]:
        """Install the current agent release: in a machine made without an agent, or
        over an older release (an update); then (re)start it."""
        with self.rt.sessions.begin() as s:
            m = self.get(s, name)
            upgrade, m.agent_installed = m.agent_installed, True
            running = m.power_state == PowerState.RUNNING
        # The machine's init starts the agent within a second of the package appearing.
        self.rt.platform.install_agent(name, __version__)
        if running and not self.rt.platform.is_running(name):
            self.start(name)
        elif running and upgrade:
            self.agent_restart(name)  # the running agent is the old release
        deadline = time.monotonic() + 30
        while running and time.monotonic() < deadline:  # until the new release reports
            with self.rt.sessions() as s:
                if self.get(s, name).agent_version == __version__:
                    break
            time.sleep(0.2)
        return self.show(name)

    def stop(self, name: str, deallocate: bool = False) -> dict[str, Any]:
        with self._updating(name) as m:
            self.rt.platform.stop(machine_spec(m), deallocate=deallocate)
            with self.rt.sessions.begin() as s:
                mm = self.get(s, name)
                mm.power_state = PowerState.DEALLOCATED if deallocate else PowerState.STOPPED
                mm.agent_status = AgentStatus.UNKNOWN
        return self.show(name)

    def delete(self, name: str) -> None:
        with self.rt.sessions.begin() as s:
            m = self.get(s, name)
            m.provisioning_state = ProvisioningState.DELETING
            spec = machine_spec(m)
        self.rt.platform.delete(spec)
        with self.rt.sessions.begin() as s:
            s.delete(self.get(s, name))

    def exec(self, name: str, argv: list[str], timeout: float = 300) -> dict[str, Any]:
        with self.rt.sessions() as s:
            m = self.get(s, name)
            if m.power_state != PowerState.RUNNING:
                raise FrostpointError("UserErrorVmNotInDesirableState",
                                      f"machine {name} is {m.power_state}",
                                      {"machine": name, "power_state": m.power_state})
        p = self.rt.platform.exec(name, argv, timeout=timeout)
        return {"returncode": p.returncode, "stdout": p.stdout.decode(errors="replace"),
                "stderr": p.stderr.decode(errors="replace")}

    def show(self, name: str) -> dict[str, Any]:
        with self.rt.sessions() as s:
            return self.describe(self.get(s, name))

    def describe(self, m: Machine) -> dict[str, Any]:
        age = None
        if m.last_heartbeat:
            age = (utcnow() - m.last_heartbeat).total_seconds()
        agent = m.agent_status
        if age is not None and age > self.rt.timeouts.heartbeat_stale:
            agent = AgentStatus.NOT_READY
        return {
            "name": m.name, "id": m.id, "region": m.region, "address": m.address,
            "kind": m.kind, "memory_bytes": m.memory_bytes, "cpus": m.cpus,
            "accel": self.rt.platform.machine_facts(m.name).get("accel") or None,
            "provisioning_state": m.provisioning_state, "power_state": m.power_state,
            "agent": {"installed": m.agent_installed, "status": agent,
                      "version": m.agent_version, "last_heartbeat_age_s": age,
                      **m.agent_info},
            "disks": [{"name": d.name, "size_bytes": d.size_bytes, "filesystem": d.filesystem,
                       "mountpoint": d.mountpoint, "encrypted": d.encrypted,
                       "encryption_key": d.key_ref} for d in m.disks],
            "resource_group": self._resource_group(m),
            "extensions": [{"name": e.name, "version": e.version,
                            "provisioning_state": e.provisioning_state,
                            "sequence": e.sequence, "status": e.status} for e in m.extensions],
        }

    @staticmethod
    def _resource_group(m: Machine) -> str | None:
        """Where the machine's instant restore points (and the locks on them) live."""
        s = object_session(m)
        if s is None:
            return None
        return s.scalar(select(ResourceGroup.name).join(
            RestorePointCollection,
            RestorePointCollection.resource_group_id == ResourceGroup.id)
            .where(RestorePointCollection.machine_id == m.id))

    # -- goal state and the agent's reports (MachineBackend) ----------------------
    def machine_for_token(self, token: str) -> str | None:
        h = token_hash(token)
        hit = self._token_cache.get(h)
        if hit and time.monotonic() - hit[1] < 30:
            return hit[0]
        with self.rt.sessions() as s:
            mid = s.scalar(select(Machine.id).where(Machine.agent_token_hash == h))
        if mid:
            self._token_cache[h] = (mid, time.monotonic())
        return mid

    def goal_state(self, machine_id: str) -> tuple[str, dict[str, Any]]:
        with self.rt.sessions() as s:
            m = s.get(Machine, machine_id)
            if m is None:
                return '"gone"', {"incarnation": 0, "extensions": []}
            exts = [{"name": e.name, "version": e.version, "sequence": e.sequence,
                     "settings": e.settings, "state": self._task_state(s, e),
                     "package_path": self.packages[e.name].url_path,
                     "sha256": self.packages[e.name].sha256}
                    for e in m.extensions if e.name in self.packages]
            return f'"{m.goal_state_incarnation}"', {
                "incarnation": m.goal_state_incarnation, "machine": m.name,
                "extensions": exts}

    @staticmethod
    def _task_state(s: Session, e: Extension) -> str:
        """A snapshot task whose job has ended is "withdrawn": an agent that comes
        back (extensions enabled again, restarted) must not freeze for a dead job."""
        task = (e.settings or {}).get("taskId") if e.name == SNAPSHOT_EXTENSION else None
        if task is None:
            return "enabled"
        job = s.get(Job, str(task))
        live = job is not None and job.status == JobStatus.IN_PROGRESS and not job.cancel_requested
        return "enabled" if live else "withdrawn"

    def snapshot_task(self, machine_id: str, task_id: str) -> dict[str, Any]:
        """Whether a snapshot task of this machine is live: the extension asks right
        before it freezes. Refused (catalog code) for another machine's or an ended one."""
        with self.rt.sessions() as s:
            job, m = s.get(Job, task_id), s.get(Machine, machine_id)
            if job is None or job.machine_id != machine_id:
                raise FrostpointError("ExtensionOperationFailedForManagedDisks",
                                      "no snapshot task of this machine has that id")
            if job.status != JobStatus.IN_PROGRESS or job.cancel_requested:
                raise FrostpointError("ExtensionOperationFailedForManagedDisks",
                                      f"the backup job is {job.status}: the snapshot task "
                                      "was withdrawn", {"job_status": job.status})
            spec = machine_spec(m) if m else MachineSpec(machine_id, 0)
        # The extension freezes next: stage the clone now, so that it freezes briefly.
        self.rt.platform.prepare_snapshot(spec.name, task_id, spec.disks)
        return {"taskId": task_id, "live": True}

    def goal_state_version(self, machine_id: str) -> int:
        return self.rt.notifier.version(machine_id)

    def record_heartbeat(self, machine_id: str, body: dict[str, Any]) -> None:
        with self.rt.sessions.begin() as s:
            m = s.get(Machine, machine_id)
            if m is None:
                return
            m.last_heartbeat = utcnow()
            m.agent_status = str(body.get("status", "Ready"))
            m.agent_version = str(body.get("version", ""))
            m.agent_info = {k: body[k] for k in ("os", "kernel", "python", "reboot_required",
                                                 "extensions_enabled") if k in body}

    def record_status(self, machine_id: str, body: dict[str, Any]) -> None:
        with self.rt.sessions.begin() as s:
            m = s.get(Machine, machine_id)
            if m is None:
                return
            for st in body.get("extensions", []):
                ext = next((e for e in m.extensions if e.name == st.get("name")), None)
                if ext is None or int(st.get("sequence", -1)) != ext.sequence:
                    continue  # a report for an older sequence number
                ext.status, ext.updated_at = st, utcnow()
                ext.provisioning_state = {"success": ProvisioningState.SUCCEEDED,
                                          "error": ProvisioningState.FAILED}.get(
                    st.get("status"), ProvisioningState.UPDATING)
            failed = any(e.provisioning_state == ProvisioningState.FAILED for e in m.extensions)
            if m.provisioning_state in (ProvisioningState.SUCCEEDED,
                                        ProvisioningState.FAILED):  # not mid-operation
                m.provisioning_state = (ProvisioningState.FAILED if failed
                                        else ProvisioningState.SUCCEEDED)
        self.rt.notifier.bump(status_key(machine_id))  # the job waiting for it looks now

    def package_file(self, name: str, version: str) -> str | None:
        p = self.packages.get(name)
        return str(p.path) if p and p.version == version else None

    def set_extension(self, machine_id: str, settings: dict[str, Any],
                      name: str = SNAPSHOT_EXTENSION) -> int:
        """Put an extension in the goal state with new settings; returns its sequence."""
        if name not in self.packages:
            raise FrostpointError("NotFound", f"no extension named {name}; known: "
                                  f"{', '.join(self.packages)}")
        package = self.packages[name]
        with self.rt.sessions.begin() as s:
            m = s.get(Machine, machine_id)
            if m is None:
                raise FrostpointError("NotFound", "machine is gone")
            ext = next((e for e in m.extensions if e.name == name), None)
            if ext is None:
                # Sequence numbers only grow, even across remove and add again, so an
                # agent that kept the old folder never takes a new one for done.
                ext = Extension(name=name, version=package.version,
                                sequence=m.goal_state_incarnation)
                m.extensions.append(ext)
            ext.version = package.version
            ext.sequence += 1
            ext.settings = settings
            ext.status = {}
            ext.provisioning_state = ProvisioningState.UPDATING
            m.goal_state_incarnation += 1
            seq = ext.sequence
        self.rt.notifier.bump(machine_id)
        return seq

    def remove_extension(self, name: str, ext_name: str) -> None:
        with self.rt.sessions.begin() as s:
            m = self.get(s, name)
            ext = next((e for e in m.extensions if e.name == ext_name), None)
            if ext is None:
                raise FrostpointError("NotFound", f"no extension {ext_name} on {name}")
            m.extensions.remove(ext)
            m.goal_state_incarnation += 1
            if m.provisioning_state == ProvisioningState.FAILED and not any(
                    e.provisioning_state == ProvisioningState.FAILED for e in m.extensions):
                m.provisioning_state = ProvisioningState.SUCCEEDED
            mid = m.id
        self.rt.notifier.bump(mid)

    def take_snapshot(self, machine_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Reflink every disk of the machine into the job's snapshot folder.

        A guest may call this as often as it likes; the host takes one snapshot per
        task, only while the task's Take Snapshot step runs. The claim is one
        conditional UPDATE on that step's row, so two calls racing each other cannot
        both win, and a restore point's images are never written again."""
        task_id = str(body.get("taskId", ""))[:64]
        with self.rt.sessions() as s:
            job = s.get(Job, task_id)
            m = s.get(Machine, machine_id)
            if job is None or m is None or job.machine_id != machine_id:
                raise FrostpointError("ExtensionOperationFailedForManagedDisks",
                                      "no snapshot task of this machine has that id")
            if job.status != JobStatus.IN_PROGRESS or job.cancel_requested:
                raise FrostpointError("ExtensionOperationFailedForManagedDisks",
                                      f"the backup job is {job.status}")
            disks = taken_disks(machine_spec(m).disks, job.params)
            name = m.name
        self._check_disks(name, disks)
        self._claim_snapshot(task_id)
        result = self.snapshot_disks(name, task_id, disks)
        with self.rt.sessions.begin() as s:
            job = s.get(Job, task_id)
            assert job is not None
            job.details = {**job.details, "snapshot": {**result,
                                                       "frozen": bool(body.get("frozen"))}}
        return result

    def _claim_snapshot(self, task_id: str) -> None:
        """Mark the task's Take Snapshot step as snapshotted, if it runs and is not yet."""
        step = SubTask.__table__
        with self.rt.sessions.begin() as s:
            t = s.scalar(select(SubTask).where(SubTask.job_id == task_id,
                                               SubTask.name == SNAPSHOT_STEP))
            claimed = {**(t.progress if t else {}), "snapshot": "taken"}
            r = s.execute(update(step).where(  # type: ignore[arg-type]  # a Table: FromClause
                step.c.job_id == task_id, step.c.name == SNAPSHOT_STEP,
                step.c.status == SubTaskStatus.IN_PROGRESS,
                step.c.progress["snapshot"].as_string().is_(None)).values(progress=claimed))
            if r.rowcount != 1:  # type: ignore[attr-defined]  # an UPDATE's is a CursorResult
                raise FrostpointError("Conflict", "this task's snapshot was already taken, "
                                      "or its Take Snapshot step is over; a restore point "
                                      "is never taken again", {"task": task_id})

    def _check_disks(self, machine: str, disks: list[DiskSpec]) -> None:
        missing = [d.name for d in disks if not self.rt.platform.disk_exists(d)]
        if missing:  # the platform cannot snapshot a disk it lacks: the user's refusal
            raise FrostpointError(
                "UserErrorCrpReportedUserError",
                f"the platform refused the snapshot: disk(s) {', '.join(missing)} of "
                f"{machine} are detached or gone",
                {"inner_error": {"code": "DiskNotFound", "disks": missing,
                                 "fix": [f"frostpoint vm disk delete {machine} {d}"
                                         for d in missing]}})

    def snapshot_disks(self, machine: str, snapshot_id: str,
                       disks: list[DiskSpec]) -> dict[str, Any]:
        t0 = time.monotonic()
        self._check_disks(machine, disks)
        try:
            snap = self.rt.platform.snapshot_disks(machine, snapshot_id, disks)
        except FileExistsError as e:
            raise FrostpointError("Conflict", f"snapshot {snapshot_id} exists already; "
                                  "it is never taken again") from e
        return {"snapshotId": snapshot_id, "dir": snap.location, "disks": snap.disks,
                "durationMs": round((time.monotonic() - t0) * 1000, 2)}
