"""What the parts of the vault (packer, archiver, restorer, checker, gc) need of the
repository object (store.Vault). A Protocol, so the parts never import store.py and
store.py imports them: no import cycle."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any, Protocol

from frostpoint.vault import format as fmt
from frostpoint.vault.backend import Backend
from frostpoint.vault.crypto import VaultKeys
from frostpoint.vault.index import ChunkIndex


class Repository(Protocol):
    backend: Backend
    config: fmt.VaultConfig
    damaged_indexes: list[str]
    threads: int

    @property
    def keys(self) -> VaultKeys: ...

    @property
    def index(self) -> ChunkIndex:
        """chunk id -> (pack object name, offset, sealed length), and its base chunk;
        holds only chunks whose pack and index are durable."""
        ...

    @property
    def backup_lock(self) -> threading.Lock: ...

    @property
    def vault_id(self) -> str: ...

    def list_restore_points(self) -> list[str]: ...

    def read_manifest(self, rp_id: str) -> dict[str, Any]: ...

    def read_index(self, pack_id: str) -> list[fmt.IndexEntry]: ...


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def pack_id_of(pack_obj: str) -> str:
    return pack_obj.rsplit("/", 1)[-1]
