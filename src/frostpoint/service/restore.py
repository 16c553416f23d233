"""Restores: disks to a folder, a new machine, or files, from the pool or the vault."""

from __future__ import annotations

import fnmatch
import os
import posixpath
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import select

from frostpoint.enums import JobStatus, RestorePointTier, SubTaskName, SubTaskStatus
from frostpoint.errors.catalog import FrostpointError
from frostpoint.fabric.platform import DiskSpec
from frostpoint.service.copies import copy_vaults
from frostpoint.service.jobs import JobRunner, describe_job
from frostpoint.service.keyvault import BACKUP_PRINCIPAL
from frostpoint.service.machines import Machines
from frostpoint.service.models import (
    Job,
    Machine,
    RestorePoint,
    RestorePointCopy,
    SubTask,
    Vault,
    utcnow,
)
from frostpoint.service.names import NAME_RE
from frostpoint.service.protection import Protection
from frostpoint.service.runtime import Runtime
from frostpoint.service.specs import machine_spec
from frostpoint.vault.errors import VaultError

RESTORE = SubTaskName.RESTORE
IMAGE_MODE = 0o600  # a restored image holds the guest's data, from either tier


def contained(root: Path, path: str) -> Path | None:
    """The entry at path on the guest's filesystem mounted at root, or None if there is
    none or it lies outside root. Folders on the way are resolved (a guest's symlink
    may point anywhere, so the result must stay under root); the last component is
    not followed, so a symlink restores as a link."""
    rel = posixpath.normpath("/" + path).lstrip("/")
    if rel in ("", "."):
        return root
    entry = root / rel
    base = root.resolve()
    try:
        parent = entry.parent.resolve()
    except (OSError, RuntimeError):  # a guest's symlink loop
        return None
    if not parent.is_relative_to(base):
        return None
    entry = parent / entry.name
    return entry if os.path.lexists(entry) else None


def glob_contained(root: Path, pattern: str) -> list[Path]:
    """The entries on the guest's filesystem at root whose path matches pattern
    (shell globs per component: * ? [..]; a leading '.' only by a pattern that starts
    with one). Only real folders are walked, never a guest's symlink, and '..' cannot
    climb out (normalized away), so every match is under root."""
    parts = [p for p in posixpath.normpath("/" + pattern).split("/") if p]
    level = [root]
    for i, part in enumerate(parts):
        magic = any(c in part for c in "*?[")
        found = []
        for folder in level:
            if magic:
                try:
                    names = sorted(e.name for e in os.scandir(folder))
                except OSError:
                    continue
                names = [n for n in names if fnmatch.fnmatchcase(n, part)
                         and (part.startswith(".") or not n.startswith("."))]
            else:
                names = [part]
            for n in names:
                try:
                    mode = os.lstat(folder / n).st_mode
                except OSError:
                    continue
                if i == len(parts) - 1 or stat.S_ISDIR(mode):
                    found.append(folder / n)
        level = found
    return level


def has_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def _copyable(mode: int) -> bool:
    return stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)


def _make_room(dst: Path, for_dir: bool) -> bool:
    """Clear dst for what is restored there; True when dst is already a real folder
    that a folder merges into. A link (or file) an earlier restore left is removed,
    never followed: the guest chose its target (a folder link to /etc, restored once,
    would make a later --overwrite write the guest's files there)."""
    try:
        st = os.lstat(dst)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        if for_dir:
            return True
        shutil.rmtree(dst)  # does not follow links inside
    else:
        os.unlink(dst)
    return False


def copy_out(src: Path, target: Path) -> list[str]:
    """Copy src (file, folder or symlink) to target; a guest's device nodes, FIFOs and
    sockets are skipped (never opened: reading one could block or read a host device),
    symlinks are copied as links, never followed, in src or in the target (which an
    earlier restore may have filled with the guest's links). Returns the skipped
    paths."""
    top = os.lstat(src).st_mode
    if not _copyable(top):
        raise FrostpointError("InvalidInput", f"{src.name} is not a file, folder or "
                              "symlink; only those restore")
    skipped: list[str] = []

    def copy(s: Path, d: Path, mode: int) -> None:
        if stat.S_ISLNK(mode):
            _make_room(d, for_dir=False)
            os.symlink(os.readlink(s), d)
        elif stat.S_ISREG(mode):
            _make_room(d, for_dir=False)
            shutil.copy2(s, d, follow_symlinks=False)
        elif stat.S_ISDIR(mode):
            if not _make_room(d, for_dir=True):
                os.mkdir(d, 0o700)
            for entry in sorted(os.scandir(s), key=lambda e: e.name):
                m = entry.stat(follow_symlinks=False).st_mode
                if _copyable(m):
                    copy(Path(entry.path), d / entry.name, m)
                else:
                    skipped.append(os.path.relpath(entry.path, src))
            shutil.copystat(s, d, follow_symlinks=False)
    copy(src, target, top)
    return skipped

class Restores:
    def __init__(self, rt: Runtime, machines: Machines, protection: Protection) -> None:
        self.rt = rt
        self.machines = machines
        self.protection = protection
        self.runner = JobRunner(rt)

    def list_restore_points(self, machine: str | None = None) -> list[dict[str, Any]]:
        with self.rt.sessions() as s:
            q = select(RestorePoint).order_by(RestorePoint.created_at)
            if machine:
                q = q.where(RestorePoint.machine_name == machine)
            copies: dict[str, list[str]] = {}
            for rp_id, vault in s.execute(select(RestorePointCopy.restore_point_id, Vault.name)
                                          .join(Vault, Vault.id == RestorePointCopy.vault_id)):
                copies.setdefault(rp_id, []).append(vault)
            return [{**self.describe(rp), "copies": copies.get(rp.id, [])}
                    for rp in s.scalars(q)]

    @staticmethod
    def describe(rp: RestorePoint) -> dict[str, Any]:
        return {"id": rp.id, "machine": rp.machine_name, "job": rp.job_id,
                "created_at": rp.created_at.isoformat() + "Z", "consistency": rp.consistency,
                "tier": rp.tier, "freeze_ms": rp.freeze_ms, "disks": rp.disks,
                "instant_expires_at": rp.instant_expires_at.isoformat() + "Z",
                "vault_expires_at": rp.vault_expires_at.isoformat() + "Z"
                if rp.vault_expires_at else None, "excluded_disks": rp.excluded_disks}

    def restore_point(self, rp_id: str) -> RestorePoint:
        with self.rt.sessions() as s:
            rp = s.get(RestorePoint, rp_id)
            if rp is None:
                raise FrostpointError("NotFound", f"no restore point {rp_id}")
            return rp

    def pick_source(self, rp: RestorePoint, source: str) -> str:
        if source not in ("auto", "instant", "vault"):
            raise FrostpointError("InvalidInput", "--source is auto, instant or vault")
        instant = (rp.tier != RestorePointTier.VAULT and rp.snapshot_dir
                   and self.rt.platform.snapshot_exists(rp.snapshot_dir))
        with self.rt.sessions() as s:
            copies = copy_vaults(s, rp.id)
        in_vault = bool(copies) or rp.vault_id is not None and rp.tier in (
            RestorePointTier.SNAPSHOT_AND_VAULT, RestorePointTier.VAULT)
        if source == "instant" and not instant:
            raise FrostpointError("UserErrorInstantRpNotFound",
                                  f"the snapshot of restore point {rp.id} no longer exists")
        if source == "vault" and not in_vault:
            raise FrostpointError("NotFound", f"restore point {rp.id} is not in a vault yet")
        if source == "auto":
            if not (instant or in_vault):
                raise FrostpointError("UserErrorInstantRpNotFound",
                                      f"restore point {rp.id} has neither snapshot nor vault copy")
            return "instant" if instant else "vault"
        return source

    def materialize(self, rp: RestorePoint, disk: str, target: Path, source: str,
                    progress: Any = None) -> None:
        if disk not in [d["name"] for d in rp.disks]:
            raise FrostpointError("NotFound", f"restore point {rp.id} has no disk {disk}")
        target.parent.mkdir(parents=True, exist_ok=True)
        if source == "instant":
            snap = self.rt.platform.snapshot_image(str(rp.snapshot_dir), disk)
            self.rt.platform.copy_disk(snap, target)
        else:
            self._from_vault(rp, disk, target, progress)
        os.chmod(target, IMAGE_MODE)  # a reflink or cp keeps the snapshot's mode

    def _from_vault(self, rp: RestorePoint, disk: str, target: Path, progress: Any) -> None:
        """From the restore point's own vault, else (gone, unreachable, damaged) from
        its copies, oldest first; the first vault's error if none has it whole."""
        with self.rt.sessions() as s:
            vaults = [v for v in [rp.vault_id, *copy_vaults(s, rp.id)] if v]
        first: Exception | None = None
        for vid in dict.fromkeys(vaults):
            try:
                self.protection.store(vid).restore_disk(rp.id, disk, target, progress=progress)
                return
            except (FrostpointError, VaultError, OSError) as e:
                first = first or e
        raise first or FrostpointError("NotFound", f"restore point {rp.id} is in no vault")

    # -- restore jobs ---------------------------------------------------------------
    def _job(self, kind: str, rp: RestorePoint, params: dict[str, Any]) -> Job:
        job = Job(operation=f"Restore{kind}", machine_id=None, machine_name=rp.machine_name,
                  owner=self.rt.owner, heartbeat_at=utcnow(),
                  params={"restore_point": rp.id, **params})
        job.subtasks = [SubTask(seq=0, name=RESTORE)]
        with self.rt.sessions.begin() as s:
            s.add(job)
        return job

    def _progress(self, job_id: str) -> Any:
        def cb(done: int, total: int) -> None:
            self.runner.subtask(job_id, RESTORE, SubTaskStatus.IN_PROGRESS, bytes_done=done,
                                bytes_total=total)
        return cb

    def _start(self, kind: str, rp_id: str, params: dict[str, Any], body: Any) -> dict[str, Any]:
        rp = self.restore_point(rp_id)
        asked = params.get("source", "auto")
        source = self.pick_source(rp, asked)
        job = self._job(kind, rp, {**params, "source": source})
        with self.rt.sessions.begin() as s:  # the job says where it reads from, at once
            j = s.get(Job, job.id)
            assert j is not None
            j.details = {**j.details, "source": source, "source_requested": asked}

        def run_body(job_id: str) -> tuple[str, list[Any]]:
            self.runner.subtask(job_id, RESTORE, SubTaskStatus.IN_PROGRESS)
            result = body(job_id, rp, source)
            with self.rt.sessions.begin() as s:
                j = s.get(Job, job_id)
                assert j is not None
                j.details = {**j.details, **result}
            self.runner.subtask(job_id, RESTORE, SubTaskStatus.COMPLETED)
            return JobStatus.COMPLETED, []

        self.runner.run(job.id, run_body, rp.machine_name)
        with self.rt.sessions() as s:
            return describe_job(s.get(Job, job.id))  # type: ignore[arg-type]  # just added

    def restore_disks(self, rp_id: str, to: str, source: str = "auto",
                      disks: list[str] | None = None) -> dict[str, Any]:
        def body(job_id: str, rp: RestorePoint, src: str) -> dict[str, Any]:
            out = []
            for d in rp.disks:
                if disks and d["name"] not in disks:
                    continue
                target = Path(to) / f"{d['name']}.img"
                self.materialize(rp, d["name"], target, src, self._progress(job_id))
                out.append(str(target))
            return {"restored": out}
        return self._start("Disks", rp_id, {"to": to, "source": source}, body)

    def put_disk(self, rp: RestorePoint, disk: DiskSpec, source: str, job_id: str) -> None:
        """Make a stopped machine's disk hold the restore point's copy of it: made in
        the scratch space beside the disks, then put in place by the platform."""
        work = Path(tempfile.mkdtemp(prefix="restore-", dir=self.rt.platform.scratch_dir()))
        try:
            tmp = work / f"{disk.name}.img"
            self.materialize(rp, disk.name, tmp, source, self._progress(job_id))
            self.rt.platform.replace_disk(disk, tmp)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def restore_vm(self, rp_id: str, name: str, source: str = "auto",
                   missing_disks: str = "refuse",
                   kind: str | None = None) -> dict[str, Any]:
        # Refused before a job is made: a job that fails on the name only later (after
        # the key checks) is a failed restore in the list for a typo.
        if not NAME_RE.match(name):
            raise FrostpointError("InvalidInput", f"machine name {name!r}: names are 1-20 "
                                  "of a-z, 0-9, '-', starting a-z")
        if missing_disks not in ("refuse", "empty"):
            raise FrostpointError("InvalidInput", "--missing-disks is refuse or empty")
        with self.rt.sessions() as s:
            if s.scalar(select(Machine.id).where(Machine.name == name)):
                raise FrostpointError("Conflict", f"machine {name} already exists: choose "
                                      "another --name")
            rp0 = s.get(RestorePoint, rp_id)
            # Either kind restores either kind's points: a restore point holds the data
            # disks (raw images), never a root; a VM refuses encrypted disks (create).
            kind = kind or (rp0 and s.scalar(select(Machine.kind).where(
                Machine.name == rp0.machine_name))) or "sandbox"
        left_out = [d["name"] for d in self.restore_point(rp_id).excluded_disks]
        if left_out and missing_disks == "refuse":
            raise FrostpointError("InvalidInput", f"restore point {rp_id} does not hold "
                                  f"disk(s) {', '.join(left_out)} (excluded from backup): "
                                  "add --missing-disks empty to make them empty",
                                  {"excluded_disks": left_out})

        def body(job_id: str, rp: RestorePoint, src: str) -> dict[str, Any]:
            # The new machine's disks are readable by whoever runs it: restoring them is
            # reading the data, so the backup service needs the key vault's grant here as
            # for a file restore (the platform's own unwrap below does not ask).
            for d in rp.disks:
                if d.get("encryption_key"):
                    self.machines.keyvaults.unwrap(d["encryption_key"], d["wrapped_key"],
                                                   BACKUP_PRINCIPAL)
            # A disk the point left out is made new and empty (formatted, as vm create).
            self.machines.create(name, [{"name": d["name"], "size": str(d["size_bytes"]),
                                         "filesystem": d["filesystem"],
                                         "encryption_key": d.get("encryption_key"),
                                         "wrapped_key": d.get("wrapped_key")}
                                        for d in [*rp.disks, *rp.excluded_disks]],
                                 kind=kind)
            self.machines.stop(name)
            held = {d["name"] for d in rp.disks}
            with self.rt.sessions() as s:
                disks = machine_spec(Machines.get(s, name)).disks
            for disk in disks:
                if disk.name in held:
                    self.put_disk(rp, disk, src, job_id)
            self.machines.start(name)
            return {"machine": name, "empty_disks": sorted(set(left_out))}
        return self._start("Vm", rp_id, {"name": name, "source": source,
                                         "missing_disks": missing_disks}, body)

    def restore_files(self, rp_id: str, path: str, to: str, disk: str | None = None,
                      source: str = "auto", overwrite: bool = False) -> dict[str, Any]:
        base = posixpath.basename(posixpath.normpath("/" + path))
        if not overwrite and base and not has_glob(path) and os.path.lexists(Path(to) / base):
            raise FrostpointError("Conflict", f"{Path(to) / base} exists: restore into "
                                  "another folder, or add --overwrite")

        def body(job_id: str, rp: RestorePoint, src: str) -> dict[str, Any]:
            dname = disk or rp.disks[0]["name"]
            info = next((d for d in rp.disks if d["name"] == dname), None)
            if info is None:
                raise FrostpointError("NotFound", f"restore point {rp.id} has no disk {dname}",
                                      {"disks": [d["name"] for d in rp.disks]})
            fs, key = info["filesystem"], None
            if info.get("encryption_key"):  # reading files needs the service's key access
                key = self.machines.keyvaults.unwrap(info["encryption_key"],
                                                     info["wrapped_key"], BACKUP_PRINCIPAL)
            work = Path(tempfile.mkdtemp(prefix="restore-", dir=self.rt.platform.scratch_dir()))
            image = work / f"{dname}.img"
            try:
                self.materialize(rp, dname, image, src, self._progress(job_id))
                # The filesystem is the guest's: the platform mounts it read-only,
                # nodev, nosuid, noexec (fabric/platform.py image_files).
                with self.rt.platform.image_files(image, fs, key) as root:
                    found = (glob_contained(root, path) if has_glob(path)
                             else [e for e in [contained(root, path)] if e is not None])
                    if not found:
                        raise FrostpointError("NotFound", f"{path} is not on disk {dname}")
                    dest = Path(to)
                    dest.mkdir(parents=True, exist_ok=True)
                    targets = [dest / e.name if e != root else dest for e in found]
                    if len(set(targets)) < len(targets):  # a/x.txt and b/x.txt
                        raise FrostpointError("InvalidInput", f"{path} matches two entries "
                                              "of one name: restore each folder on its own")
                    taken = [str(t) for t in targets if t != dest and os.path.lexists(t)]
                    if taken and not overwrite:  # made while the job ran, or a glob's
                        raise FrostpointError("Conflict", f"{', '.join(taken[:5])} exists: "
                                              "add --overwrite", {"exists": taken[:50]})
                    skipped = [x for e, t in zip(found, targets, strict=True)
                               for x in copy_out(e, t)]
            finally:
                shutil.rmtree(work, ignore_errors=True)
            restored = [str(t) for t in targets]
            return {"restored": restored[0] if len(restored) == 1 and not has_glob(path)
                    else restored, "disk": dname, "skipped": skipped}
        return self._start("Files", rp_id, {"path": path, "to": to, "disk": disk,
                                            "source": source, "overwrite": overwrite}, body)
