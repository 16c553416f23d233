"""Host-side reads and writes in a guest's folders, without following the guest.

A machine's /etc/frostpoint, /var/lib/frostpoint-agent and /var/log/frostpoint are host
folders (DATA/machines/NAME/{etc,lib,log}) that the guest writes as root. Anything in
them may be a symlink, a FIFO or a hard link the guest planted, aimed at a host file;
the host runs as root, so following one would let the guest overwrite or read any
host file. Every host-side access goes through here: each path component is opened
with O_NOFOLLOW (folders also O_DIRECTORY) from a file descriptor of the machine's
folder, and only regular files are read or written (opened O_NONBLOCK so a FIFO never
blocks, then checked with fstat). Writes are a new file renamed over the old name
(rename replaces a symlink, it does not follow it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class GuestPathError(OSError):
    """A guest path is not what the host expects (a symlink, a FIFO, ..)."""


def _parts(rel: str | PurePosixPath) -> list[str]:
    parts = [p for p in PurePosixPath(rel).parts if p not in ("", "/", ".")]
    if any(p == ".." for p in parts):
        raise GuestPathError(f"{rel}: '..' in a guest path")
    return parts


@contextlib.contextmanager
def open_dir(root: Path, rel: str | PurePosixPath = "", create: bool = False) -> Iterator[int]:
    """A descriptor of root/rel, walking each component without following symlinks."""
    fd = os.open(root, DIR_FLAGS)
    try:
        for part in _parts(rel):
            try:
                nfd = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                nfd = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as e:  # ELOOP/ENOTDIR: a symlink or a file where a folder is
                raise GuestPathError(e.errno, f"{root}/{rel}: not a folder ({e.strerror})") \
                    from e
            os.close(fd)
            fd = nfd
        yield fd
    finally:
        os.close(fd)


def _split(rel: str | PurePosixPath) -> tuple[PurePosixPath, str]:
    parts = _parts(rel)
    if not parts:
        raise GuestPathError(f"{rel}: no file name")
    return PurePosixPath(*parts[:-1]) if len(parts) > 1 else PurePosixPath(), parts[-1]


def _open_regular(dfd: int, name: str, flags: int, mode: int = 0o600) -> int:
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode,
                     dir_fd=dfd)
    except OSError as e:
        # ELOOP: a symlink; ENXIO: a FIFO without a reader; EISDIR: a folder.
        if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO, errno.EISDIR):
            raise GuestPathError(e.errno, f"{name}: not a regular file") from e
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise GuestPathError(f"{name}: not a regular file")
    os.set_blocking(fd, True)
    return fd


def read_bytes(root: Path, rel: str | PurePosixPath, limit: int = 16 << 20) -> bytes:
    """The content of a regular file (at most limit bytes)."""
    parent, name = _split(rel)
    with open_dir(root, parent) as dfd:
        fd = _open_regular(dfd, name, os.O_RDONLY)
        with os.fdopen(fd, "rb") as f:
            return f.read(limit)


def read_text(root: Path, rel: str | PurePosixPath, limit: int = 16 << 20) -> str:
    return read_bytes(root, rel, limit).decode(errors="replace")


def exists(root: Path, rel: str | PurePosixPath) -> bool:
    """True if rel is there (as anything: lstat, not stat)."""
    parent, name = _split(rel)
    try:
        with open_dir(root, parent) as dfd:
            os.stat(name, dir_fd=dfd, follow_symlinks=False)
            return True
    except (FileNotFoundError, GuestPathError, NotADirectoryError):
        return False


def write_bytes(root: Path, rel: str | PurePosixPath, data: bytes, mode: int = 0o644) -> None:
    """Replace rel with a new regular file holding data (never writes through a link)."""
    parent, name = _split(rel)
    with open_dir(root, parent, create=True) as dfd:
        tmp = f".{name}.{secrets.token_hex(6)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, mode, dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                os.fchmod(f.fileno(), mode)
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise


def write_text(root: Path, rel: str | PurePosixPath, text: str, mode: int = 0o644) -> None:
    write_bytes(root, rel, text.encode(), mode)


def open_append(root: Path, rel: str | PurePosixPath) -> int:
    """A descriptor appending to rel (created if missing). Whatever else the guest put
    there (a symlink, a FIFO, a folder's worth of nothing) is removed and a new file
    made with O_EXCL, so a race with the guest ends in a file of ours or an error."""
    parent, name = _split(rel)
    with open_dir(root, parent, create=True) as dfd:
        for _ in range(5):
            try:
                return _open_regular(dfd, name, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                                     0o644)
            except GuestPathError:
                with contextlib.suppress(FileNotFoundError):
                    try:
                        os.unlink(name, dir_fd=dfd)
                    except IsADirectoryError:  # fd-based: follows no link inside it
                        shutil.rmtree(name, dir_fd=dfd)
            try:
                return _open_regular(dfd, name, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                                     | os.O_EXCL, 0o644)
            except (FileExistsError, GuestPathError):
                continue
        raise GuestPathError(f"{root}/{rel}: the guest keeps replacing it")


def unlink(root: Path, rel: str | PurePosixPath) -> None:
    """Remove rel if it is there (a symlink is removed, not followed)."""
    parent, name = _split(rel)
    try:
        with open_dir(root, parent) as dfd:
            os.unlink(name, dir_fd=dfd)
    except (FileNotFoundError, GuestPathError):
        pass


def glob_files(root: Path, rel: str | PurePosixPath, pattern: str) -> list[str]:
    """Names in folder rel matching pattern (fnmatch), regular files only."""
    import fnmatch
    out = []
    try:
        with open_dir(root, rel) as dfd:
            for name in os.listdir(dfd):
                if fnmatch.fnmatch(name, pattern) and stat.S_ISREG(
                        os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
                    out.append(name)
    except (FileNotFoundError, GuestPathError):
        pass
    return sorted(out)
