"""What a running service holds: settings, database, fabric parts, notifications."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from frostpoint.errors.catalog import FrostpointError
from frostpoint.fabric.network import FabricNetwork
from frostpoint.fabric.pool import DiskPool
from frostpoint.fabric.sandbox import Sandbox
from frostpoint.service.db import make_engine, migrate, session_factory
from frostpoint.service.tokens import Tokens

DEFAULT_DATA_DIR = Path("/var/lib/frostpoint")
DEFAULT_LISTEN = "127.0.0.1:8420"


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


def instance_id(data_dir: Path) -> str:
    """Short id naming this service's namespaces, so tests can run several services."""
    return hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:4]


MIN_TOKEN_CHARS = 32


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_api_token(data_dir: Path) -> str:
    """The admin token in DATA/api-token, made once. It is written to a temporary file,
    fsynced, then published under its name and the directory fsynced, so a crash leaves
    either no file (a new token next start) or the whole token, never an empty one that
    a client would send and a server would compare against."""
    path = data_dir / "api-token"
    if not path.exists():
        tmp = data_dir / f".api-token.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32))
                f.flush()
                os.fsync(f.fileno())
            # link() is the rename that never replaces: if another process published a
            # token first, keep theirs (both then read the same file below).
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(data_dir)
    os.chmod(path, 0o600)
    token = path.read_text().strip()
    if len(token) < MIN_TOKEN_CHARS or not token.isascii() or not token.isprintable():
        raise FrostpointError(
            "InvalidInput", f"{path} holds an empty, short or non-ASCII token (at least "
            f"{MIN_TOKEN_CHARS} ASCII characters are needed); delete the file and start the "
            "server again to make a new one")
    return token


class Notifier:
    """Wakes long polls when a machine's goal state changes (in this process)."""

    def __init__(self) -> None:
        self.versions: dict[str, int] = {}
        self.cond = threading.Condition()

    def bump(self, machine_id: str) -> None:
        with self.cond:
            self.versions[machine_id] = self.versions.get(machine_id, 0) + 1
            self.cond.notify_all()

    def version(self, machine_id: str) -> int:
        return self.versions.get(machine_id, 0)


class Runtime:
    def __init__(self, data_dir: Path, db_url: str | None = None) -> None:
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)
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
        self.pool = DiskPool(data_dir)
        self.network = FabricNetwork(self.instance)
        self.sandbox = Sandbox(data_dir, self.pool, self.network)
        self.notifier = Notifier()
        self.keys_dir = data_dir / "keys"

    def start_fabric(self) -> None:
        self.pool.ensure()
        self.network.ensure_fabric()
        self.sandbox.prepare()

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
        """Write DATA/keys/NAME durably and atomically: a temp file, fsync, rename,
        fsync the directory. A crash leaves the old file or the whole new one.
        replace=False: refuse (FileExistsError) to overwrite an existing key."""
        self.keys_dir.mkdir(mode=0o700, exist_ok=True)
        path = self.keys_dir / name
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.keys_dir)
        try:
            with os.fdopen(fd, "wb") as f:  # mkstemp makes it 0600
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if replace:
                os.replace(tmp, path)
            else:
                os.link(tmp, path)  # atomic, and fails if the key exists
                os.unlink(tmp)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dfd = os.open(self.keys_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
