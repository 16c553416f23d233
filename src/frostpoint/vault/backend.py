"""Object storage for a vault: a tiny interface, and a local-directory implementation.

The interface is deliberately object-store shaped (whole-object put, ranged get, prefix
list) so that Azure Blob / S3 backends are one more file each: every method maps to one
native call there, and nothing relies on directories, renames or appends.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class Backend(Protocol):
    """Where vault objects live. Names are '/'-separated relative paths."""

    def put(self, name: str, data: bytes) -> None:
        """Store `data` under `name`, atomically: readers see all of it or none of it.

        When put returns, the object is durable (survives a crash / power loss).
        """
        ...

    def get(self, name: str) -> bytes:
        """Return the whole object. Raise FileNotFoundError if it does not exist."""
        ...

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        """Return up to `length` bytes at `offset` (ranged GET; short at end of object).

        Raise FileNotFoundError if the object does not exist.
        """
        ...

    def list(self, prefix: str) -> list[str]:
        """Names of all objects starting with `prefix` (a plain string prefix), sorted."""
        ...

    def delete(self, name: str) -> None:
        """Remove the object; deleting a missing object is not an error."""
        ...

    def exists(self, name: str) -> bool:
        ...


def _check_name(name: str) -> list[str]:
    # Refuse anything that could escape the root or collide with our temp files.
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise ValueError(f"invalid object name {name!r}")
    if "\\" in name or "\x00" in name:
        raise ValueError(f"invalid object name {name!r}")
    return parts


# What put's mkstemp(prefix=".NAME.", suffix=".tmp") makes.
_TEMP_RE = re.compile(r"^\.(.+)\.[^./]+\.tmp$")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBackend(Backend):
    """A vault in a local (or mounted network) directory.

    put writes a hidden temp file next to the target, fsyncs it, renames it over the
    target and fsyncs the directory: the classic POSIX recipe for an atomic, durable
    replace. A crash leaves at worst a hidden `.*.tmp` file, which `list` ignores.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._known_dirs: set[Path] = {self.root}
        self._dirs_lock = threading.Lock()

    def _path(self, name: str) -> Path:
        return self.root.joinpath(*_check_name(name))

    def _ensure_dir(self, d: Path) -> None:
        # Create missing parents top-down and fsync each parent, so a new pack
        # directory entry is itself durable (a durable file in a lost dir is lost).
        if d in self._known_dirs:
            return
        with self._dirs_lock:
            missing: list[Path] = []
            p = d
            while p not in self._known_dirs and not p.is_dir():
                missing.append(p)
                p = p.parent
            for m in reversed(missing):
                try:
                    m.mkdir()
                except FileExistsError:
                    pass
                _fsync_dir(m.parent)
            self._known_dirs.add(d)

    def put(self, name: str, data: bytes) -> None:
        path = self._path(name)
        self._ensure_dir(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        _fsync_dir(path.parent)

    def get(self, name: str) -> bytes:
        return self._path(name).read_bytes()

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        fd = os.open(self._path(name), os.O_RDONLY)
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def list(self, prefix: str) -> list[str]:
        # Only walk the directory the prefix points into, not the whole vault.
        dir_part = prefix.rpartition("/")[0]
        base = self.root.joinpath(*_check_name(dir_part)) if dir_part else self.root
        out: list[str] = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            rel = "" if rel == "." else rel + "/"
            for fn in filenames:
                if fn.startswith("."):
                    continue  # temp files of an unfinished put
                name = rel + fn
                if name.startswith(prefix):
                    out.append(name)
        out.sort()
        return out

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        _fsync_dir(path.parent)

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def remove_leftovers(self, is_ours: Callable[[str], bool]) -> None:
        """After `vault delete`: remove the temp files of unfinished puts of names
        is_ours accepts, then the empty directories (and the root if left empty). A
        directory holding anything else stays, and so does what it holds."""
        for dirpath, _dirnames, filenames in os.walk(self.root, topdown=False):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            rel = "" if rel == "." else rel + "/"
            for fn in filenames:
                m = _TEMP_RE.match(fn)
                if m and is_ours(rel + m.group(1)):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(dirpath, fn))
            try:
                os.rmdir(dirpath)
            except OSError:
                continue  # not empty: holds something that is not ours
        self._known_dirs = {self.root}

    def __repr__(self) -> str:
        return f"LocalBackend({str(self.root)!r})"
