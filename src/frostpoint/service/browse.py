"""Finding files without knowing the path: `rp browse`, `restore mount|unmount`.

The filesystem is the guest's, so hostile: the platform mounts every copy read-only,
nodev, nosuid, noexec with no journal replay (MachinePlatform.image_files and
mount_image); the listing is an lstat of each entry (a symlink is listed as a link,
never followed); the folder asked for is found by restore.contained (it never leaves
the disk); names that are not UTF-8 are shown with U+FFFD; a listing stops at
MAX_ENTRIES. From the instant tier the snapshot's image itself is read; from the
vault the disk is a file whose blocks are fetched when the filesystem reads them
(vault/lazyfile.py, service/lazy_reader.py): only the blocks its metadata needs are
read from the vault. A mount keeps its copy (a reflink of the snapshot), or its lazy
reader of the vault's disk, until `restore unmount`; every mount is recorded, and
the service unmounts what a crash left when it starts."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from frostpoint.errors.catalog import FrostpointError
from frostpoint.service import lazy_reader
from frostpoint.service.copies import copy_vaults
from frostpoint.service.keyvault import BACKUP_PRINCIPAL
from frostpoint.service.models import HostMount, RestorePoint, Vault
from frostpoint.service.restore import Restores, contained

log = logging.getLogger("frostpoint.service")
MAX_ENTRIES = 10000
KINDS = ((stat.S_ISDIR, "dir"), (stat.S_ISREG, "file"), (stat.S_ISLNK, "symlink"),
         (stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "char-device"),
         (stat.S_ISBLK, "block-device"))


def shown(name: str) -> str:
    """A guest's file name as text: bytes that are not UTF-8 become U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def kind_of(mode: int) -> str:
    return next((k for test, k in KINDS if test(mode)), "unknown")


def entry(path: Path) -> dict[str, Any]:
    st = os.lstat(path)
    out = {"name": shown(path.name), "type": kind_of(st.st_mode), "size": st.st_size,
           "mode": oct(stat.S_IMODE(st.st_mode)),
           "mtime": datetime.fromtimestamp(st.st_mtime, UTC).isoformat().replace(
               "+00:00", "Z")}
    if stat.S_ISLNK(st.st_mode):
        out["target"] = shown(os.readlink(path))
    return out


class Browser:
    def __init__(self, restores: Restores) -> None:
        self.restores = restores
        self.rt = restores.rt

    def _disk(self, rp: RestorePoint, disk: str | None) -> dict[str, Any]:
        name = disk or rp.disks[0]["name"]
        info: dict[str, Any] | None = next((d for d in rp.disks if d["name"] == name), None)
        if info is None:
            raise FrostpointError("NotFound", f"restore point {rp.id} has no disk {name}",
                                  {"disks": [d["name"] for d in rp.disks]})
        return info

    def _key(self, info: dict[str, Any]) -> bytes | None:
        if not info.get("encryption_key"):
            return None  # reading an encrypted disk's files needs the service's grant
        return self.restores.machines.keyvaults.unwrap(info["encryption_key"],
                                                       info["wrapped_key"], BACKUP_PRINCIPAL)

    def _reader_config(self, rp: RestorePoint, disk: str) -> dict[str, Any]:
        """Where the lazy reader finds the disk: the point's own vault, else a copy."""
        with self.rt.sessions() as s:
            vid = next(v for v in [rp.vault_id, *copy_vaults(s, rp.id)] if v)
            v = s.get(Vault, vid)
            assert v is not None
            return {"backend": v.backend, "location": v.location, "restore_point": rp.id,
                    "disk": disk, "key": self.rt.vault_key(vid).hex()}

    @contextlib.contextmanager
    def _lazy_image(self, rp: RestorePoint, disk: str) -> Iterator[tuple[Path, Path]]:
        """The disk in the vault as a file whose blocks are fetched when read, and the
        reader's working folder (service/lazy_reader.py)."""
        work = Path(tempfile.mkdtemp(prefix="browse-", dir=self.rt.platform.scratch_dir()))
        proc = None
        try:
            proc, image = lazy_reader.start(work, self._reader_config(rp, disk))
            yield image, work
        finally:
            lazy_reader.stop(work, proc)
            shutil.rmtree(work, ignore_errors=True)

    def browse(self, rp_id: str, disk: str | None = None, path: str = "",
               source: str = "auto") -> dict[str, Any]:
        rp = self.restores.restore_point(rp_id)
        src = self.restores.pick_source(rp, source)
        info = self._disk(rp, disk)
        key = self._key(info)
        read: dict[str, Any] = {}
        with contextlib.ExitStack() as stack:
            if src == "instant":
                assert rp.snapshot_dir
                image = self.rt.platform.snapshot_image(rp.snapshot_dir, info["name"])
            else:
                image, work = stack.enter_context(self._lazy_image(rp, info["name"]))
            with self.rt.platform.image_files(image, info["filesystem"], key) as root:
                folder = contained(root, path)
                if folder is None or not stat.S_ISDIR(os.lstat(folder).st_mode):
                    raise FrostpointError("NotFound", f"{path or '/'} is not a folder on "
                                          f"disk {info['name']}", {"path": path})
                # A guest's folder may hold millions of names: read at most one more
                # than is shown (bounded time and memory), never the whole of it.
                with os.scandir(folder) as it:
                    names = sorted(itertools.islice((e.name for e in it), MAX_ENTRIES + 1))
                entries = [entry(folder / n) for n in names[:MAX_ENTRIES]]
            if src != "instant":
                read = lazy_reader.read_counts(work)
        return {"restore_point": rp.id, "disk": info["name"], "source": src,
                "path": "/" + str(Path("/", path)).lstrip("/"), "entries": entries,
                "truncated": len(names) > MAX_ENTRIES, **read}

    # -- mounts on the host ----------------------------------------------------------
    def mount(self, rp_id: str, to: str, disk: str | None = None,
              source: str = "auto") -> dict[str, Any]:
        rp = self.restores.restore_point(rp_id)
        src = self.restores.pick_source(rp, source)
        info = self._disk(rp, disk)
        if info.get("encryption_key"):
            raise FrostpointError("InvalidInput", "an encrypted disk is not mounted on the "
                                  "host (its key would stay loaded): use rp browse and "
                                  "restore files")
        if not Path(to).is_absolute():  # relative to what? the service's cwd is no answer
            raise FrostpointError("InvalidInput", f"--to {to!r}: give an absolute path")
        at = Path(to).resolve()
        with self.rt.sessions() as s:
            if s.scalar(select(HostMount).where(HostMount.path == str(at))):
                raise FrostpointError("Conflict", f"a restore point is mounted at {at}")
        at.mkdir(parents=True, exist_ok=True)
        if not at.is_dir() or any(at.iterdir()):
            raise FrostpointError("Conflict", f"{at} is not an empty folder")
        work = Path(tempfile.mkdtemp(prefix="mount-", dir=self.rt.platform.scratch_dir()))
        with self.rt.sessions.begin() as s:  # recorded first: a crash leaves it known
            s.add(HostMount(path=str(at), restore_point_id=rp.id, disk=info["name"],
                            image=str(work)))
        try:
            if src == "instant":
                assert rp.snapshot_dir
                image = work / f"{info['name']}.img"
                self.rt.platform.copy_disk(
                    self.rt.platform.snapshot_image(rp.snapshot_dir, info["name"]), image)
            else:  # read on demand until the unmount, as browse does
                _proc, image = lazy_reader.start(work, self._reader_config(rp, info["name"]))
            self.rt.platform.mount_image(image, info["filesystem"], at)
        except BaseException:
            self._forget(str(at))
            raise
        return self.describe(str(at))

    def describe(self, path: str) -> dict[str, Any]:
        with self.rt.sessions() as s:
            m = s.scalar(select(HostMount).where(HostMount.path == path))
            if m is None:
                raise FrostpointError("NotFound", f"no restore point is mounted at {path}")
            return {"path": m.path, "restore_point": m.restore_point_id, "disk": m.disk,
                    "created_at": m.created_at.isoformat() + "Z"}

    def list_mounts(self) -> list[dict[str, Any]]:
        with self.rt.sessions() as s:
            paths = list(s.scalars(select(HostMount.path).order_by(HostMount.created_at)))
        return [self.describe(p) for p in paths]

    def unmount(self, path: str) -> dict[str, Any]:
        at = str(Path(path).resolve())
        out = self.describe(at)
        self._forget(at)
        return {**out, "unmounted": True}

    def _forget(self, at: str) -> None:
        """Unmount at (if mounted), delete its copy and its record."""
        with self.rt.sessions() as s:
            m = s.scalar(select(HostMount).where(HostMount.path == at))
            image = m.image if m else None
        self.rt.platform.unmount_image(Path(at))
        if image:  # its working folder: a copy, or the lazy reader's mount
            lazy_reader.stop(Path(image))
            shutil.rmtree(image, ignore_errors=True)
        with self.rt.sessions.begin() as s:
            for m in s.scalars(select(HostMount).where(HostMount.path == at)):
                s.delete(m)
        with contextlib.suppress(OSError):
            Path(at).rmdir()  # made by mount (empty again once unmounted)

    def clean_mounts(self) -> list[str]:
        """At start: every mount an earlier process left (a crash, a kill -9) goes."""
        with self.rt.sessions() as s:
            paths = list(s.scalars(select(HostMount.path)))
        for p in paths:
            try:
                self._forget(p)
                log.warning("restore point mount at %s left by an earlier process: "
                            "unmounted", p)
            except Exception:  # one mount must not stop the service from starting
                log.exception("mount at %s not cleaned", p)
        return paths
