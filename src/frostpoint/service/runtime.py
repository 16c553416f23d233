"""What a running service holds: settings, database, fabric parts, notifications."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from frostpoint.errors.catalog import FrostpointError
from frostpoint.fabric.kinds import HostMachines
from frostpoint.fabric.network import FabricNetwork, instance_id
from frostpoint.fabric.platform import MachinePlatform
from frostpoint.fabric.pool import DiskPool
from frostpoint.fabric.qemu import QemuPlatform
from frostpoint.fabric.sandbox import Sandbox
from frostpoint.service.db import make_engine, migrate, session_factory
from frostpoint.service.tokens import Tokens


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@dataclass
class Timeouts:
    """Strict order: host call < freeze limit < extension wait < job deadline."""

    host_call: float = field(default_factory=lambda: _env_float("FROSTPOINT_HOST_CALL_S", 10))
    freeze_limit: float = field(default_factory=lambda: _env_float("FROSTPOINT_FREEZE_S", 30))
    extension_wait: float = field(
        default_factory=lambda: _env_float("FROSTPOINT_EXTENSION_WAIT_S", 300))
    job_deadline: float = field(default_factory=lambda: _env_float("FROSTPOINT_JOB_S", 6 * 3600))
    heartbeat_stale: float = field(
        default_factory=lambda: _env_float("FROSTPOINT_HEARTBEAT_STALE_S", 60))
    job_heartbeat_stale: float = field(
        default_factory=lambda: _env_float("FROSTPOINT_JOB_STALE_S", 20))
    # How often expired restore points are cleaned up (instant and vault retention).
    cleanup_interval: float = field(
        default_factory=lambda: _env_float("FROSTPOINT_CLEANUP_S", 60))
    # How often each vault is garbage-collected (with the default 24 h grace).
    gc_interval: float = field(default_factory=lambda: _env_float("FROSTPOINT_GC_S", 6 * 3600))

    def __post_init__(self) -> None:
        # Each wait must outlast the one inside it, or the outer one reports the wrong
        # cause (a job deadline firing during a freeze would hide the freeze's code).
        order = [("FROSTPOINT_HOST_CALL_S", self.host_call),
                 ("FROSTPOINT_FREEZE_S", self.freeze_limit),
                 ("FROSTPOINT_EXTENSION_WAIT_S", self.extension_wait),
                 ("FROSTPOINT_JOB_S", self.job_deadline)]
        for (inner, a), (outer, b) in zip(order, order[1:], strict=False):
            if not 0 < a < b:
                raise ValueError(f"timeouts out of order: {inner}={a:g} must be > 0 and "
                                 f"less than {outer}={b:g}")


MIN_TOKEN_CHARS = 32


def write_durably(path: Path, data: bytes, replace: bool = True) -> bool:
    """Write path whole or not at all: a temporary file (0600) beside it, fsync, publish,
    fsync the directory. A crash leaves the old file (or none) or the whole new one.
    replace=False publishes with link(), the rename that never replaces: if the file
    exists already it is kept and False is returned."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    published = True
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                published = False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return published


# Locks this process holds, by data directory: flock conflicts between two open files
# even in one process, so a second Runtime on the same directory reuses the first's.
_HELD: dict[Path, int] = {}


def lock_data_dir(data_dir: Path) -> int:
    """Hold DATA/lock (flock, exclusive) for the life of the process, or refuse at once.

    Two services on one data directory would migrate, reap each other's jobs and
    rewrite DATA/packages under each other; the lock is taken before anything else in
    the directory is touched. The kernel drops it when the process dies, so a crash
    never leaves a stale lock. Returns the lock file's descriptor."""
    key = data_dir.resolve()
    if key in _HELD:
        return _HELD[key]
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    fd = os.open(data_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise FrostpointError(
            "ServiceStartFailed",
            f"data directory {data_dir} is in use by another frostpoint server "
            f"(pid {holder}); stop it or use another --data-dir",
            {"data_dir": str(data_dir), "pid": holder}) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[key] = fd
    return fd


def ensure_api_token(data_dir: Path) -> str:
    """The admin token in DATA/api-token, made once. It is written to a temporary file,
    fsynced, then published under its name and the directory fsynced, so a crash leaves
    either no file (a new token next start) or the whole token, never an empty one that
    a client would send and a server would compare against."""
    path = data_dir / "api-token"
    if not path.exists():
        # If another starting process published a token first, keep theirs (both then
        # read the same file below).
        write_durably(path, secrets.token_urlsafe(32).encode(), replace=False)
    os.chmod(path, 0o600)
    token = path.read_text().strip()
    if len(token) < MIN_TOKEN_CHARS or not token.isascii() or not token.isprintable():
        raise FrostpointError(
            "InvalidInput", f"{path} holds an empty, short or non-ASCII token (at least "
            f"{MIN_TOKEN_CHARS} ASCII characters are needed); delete the file and start the "
            "server again to make a new one")
    return token


def job_key(job_id: str) -> str:
    return f"job:{job_id}"  # never a machine id (those are uuids)


def status_key(machine_id: str) -> str:
    """Bumped when a machine's agent reports extension status."""
    return f"status:{machine_id}"


class Notifier:
    """Wakes long polls when a machine's goal state changes or a job ends (in this
    process); a job's key is job_key(id)."""

    def __init__(self) -> None:
        self.versions: dict[str, int] = {}
        self.cond = threading.Condition()

    def bump(self, machine_id: str) -> None:
        with self.cond:
            self.versions[machine_id] = self.versions.get(machine_id, 0) + 1
            self.cond.notify_all()

    def version(self, machine_id: str) -> int:
        return self.versions.get(machine_id, 0)

    def wait(self, key: str, version: int, timeout: float) -> None:
        """Until key's version is no longer `version`, or timeout seconds."""
        with self.cond:
            self.cond.wait_for(lambda: self.versions.get(key, 0) != version, timeout)


def host_platform(data_dir: Path) -> MachinePlatform:
    """The real machines of this host, of both kinds (fabric/kinds.py)."""
    pool, net = DiskPool(data_dir), FabricNetwork(instance_id(data_dir))
    return HostMachines(Sandbox(data_dir, pool, net), QemuPlatform(data_dir, pool, net))



class Runtime:
    def __init__(self, data_dir: Path, db_url: str | None = None,
                 platform: MachinePlatform | None = None) -> None:
        self.data_dir = data_dir
        self.lock_fd = lock_data_dir(data_dir)  # first: nothing in DATA before the lock
        self.instance = instance_id(data_dir)
        self.owner = f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(3)}"
        self.engine = make_engine(db_url or f"sqlite:///{data_dir / 'frostpoint.db'}")
        migrate(self.engine)
        self.sessions: sessionmaker[Session] = session_factory(self.engine)
        self.api_token = ensure_api_token(data_dir)
        Tokens(self.sessions).register_file_token(self.api_token)
        # Where an operator (not only an admin) may restore disks and files to.
        self.restore_area = data_dir / "restores"
        self.restore_area.mkdir(mode=0o700, exist_ok=True)
        self.timeouts = Timeouts()
        # The one way to the machines (fabric/platform.py): this host's sandboxes and
        # QEMU guests, or in tests the in-memory platform.
        self.platform: MachinePlatform = platform or host_platform(data_dir)
        self.notifier = Notifier()
        # Called with a job's id once its end state is written (metrics, notifications);
        # each must be quick and off the network: the job's thread calls it.
        self.job_listeners: list[Callable[[str], None]] = []
        # /metrics without a token for a scraper on loopback (docs/security.md).
        self.metrics_no_auth_loopback = os.environ.get(
            "FROSTPOINT_METRICS_NO_AUTH_LOOPBACK", "") == "1"
        self.keys_dir = data_dir / "keys"

    def start_fabric(self) -> None:
        self.platform.ensure()

    def release_fabric(self) -> None:
        """Undo what start_fabric made, after a start that failed."""
        self.platform.release()

    def vault_key(self, vault_id: str, create: bool = False) -> bytes:
        return self.secret(f"{vault_id}.key", create)

    def secret(self, name: str, create: bool = False, size: int = 32) -> bytes:
        """Random key material in DATA/keys (0600), made once; never in the database."""
        self.keys_dir.mkdir(mode=0o700, exist_ok=True)
        path = self.keys_dir / name
        if create and not path.exists():
            self.write_secret(name, secrets.token_bytes(size), replace=False)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FrostpointError("VaultKeyInvalid", f"key file {path} is missing",
                                  {"key": name}) from None
        # A short key (a crash before the fsync that durable writes now do, a full disk,
        # an edit) would give confusing crypto failures later: say what it is.
        if len(data) != size:
            raise FrostpointError("VaultKeyInvalid", f"key file {path} is damaged: "
                                  f"{len(data)} bytes, not {size}", {"key": name})
        return data

    def write_secret(self, name: str, data: bytes, replace: bool = True) -> None:
        """Write DATA/keys/NAME durably (write_durably). replace=False: refuse
        (FileExistsError) to overwrite an existing key."""
        self.keys_dir.mkdir(mode=0o700, exist_ok=True)
        if not write_durably(self.keys_dir / name, data, replace):
            raise FileExistsError(self.keys_dir / name)
