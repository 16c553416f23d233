"""The vault: deduplicated, encrypted, crash-safe storage of disk images.

This module is the repository object: create/open, the chunk index, restore points.
The long operations are parts beside it, each in a module of its own: packer.py (pack
writer), archiver.py (backup pipeline), restorer.py, checker.py (verify) and gc.py.

Commit order is the whole crash-safety story (docs/vault-format.md):
pack -> its index -> (all packs of a backup) -> manifest. Each step is an atomic put,
and each step only becomes visible to readers through the next one, so a crash at any
moment leaves either a complete restore point or none.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from frostpoint.vault import archiver, checker, gc, restorer
from frostpoint.vault import format as fmt
from frostpoint.vault.backend import Backend
from frostpoint.vault.crypto import VaultKeys
from frostpoint.vault.errors import AlreadyExists, InvalidRequest, NotInVault, VaultCorrupt
from frostpoint.vault.index import ChunkIndex
from frostpoint.vault.pacing import Progress
from frostpoint.vault.repo import now_iso, pack_id_of
from frostpoint.vault.reports import BackupStats, GcReport, VerifyReport

# Hash+seal pool size; blake3, zstd and AES-GCM release the GIL, so threads scale.
DEFAULT_THREADS = max(2, min(8, os.cpu_count() or 2))


# One backup lock per vault id in this process, shared by every Vault object of that
# vault: GC's sweep must exclude backups of the same vault whichever object runs them
# (two objects for one vault each had a lock of their own, so a GC through one could
# delete packs a backup through the other had written but not yet named in a manifest).
_BACKUP_LOCKS: dict[str, threading.Lock] = {}
_BACKUP_LOCKS_GUARD = threading.Lock()


def backup_lock(vault_id: str) -> threading.Lock:
    with _BACKUP_LOCKS_GUARD:
        return _BACKUP_LOCKS.setdefault(vault_id, threading.Lock())


class Vault:
    """A vault on a Backend. Use Vault.create / Vault.open.

    One backup at a time per vault in a process, whichever Vault object runs it
    (serialized by a lock keyed by vault id, which GC's sweep takes too); restores and
    verify may run alongside. The chunk index is loaded at open; chunks written by another
    process after that are not deduplicated against (harmless: stored again).
    """

    def __init__(self, backend: Backend, keys: VaultKeys, config: fmt.VaultConfig) -> None:
        self.backend = backend
        self.config = config
        self._keys = keys
        # chunk id -> (pack object name, offset, sealed length), and its base chunk
        # (see crypto.Chunk); about 60 bytes per chunk (vault/index.py)
        self._index = ChunkIndex()
        self.damaged_indexes: list[str] = []
        self.threads = DEFAULT_THREADS
        self._backup_lock = backup_lock(config.vault_id)

    # --- create / open ------------------------------------------------------------

    @classmethod
    def create(cls, backend: Backend, master_key: bytes, *,
               pack_target_size: int = fmt.DEFAULT_PACK_TARGET,
               block_size: int = fmt.BLOCK_SIZE) -> Vault:
        keys = VaultKeys(master_key)
        if backend.exists(fmt.CONFIG):
            raise AlreadyExists(f"a vault already exists at {backend!r}")
        if not 0 < pack_target_size <= fmt.MAX_PACK_TARGET:
            raise InvalidRequest("pack_target_size must be 1 B to 1 GiB")
        if not fmt.valid_block_size(block_size):
            raise InvalidRequest("block_size must be a multiple of 4 KiB "
                                 "from 64 KiB to 16 MiB")
        vault_id = secrets.token_hex(16)
        config = fmt.VaultConfig(
            vault_id=vault_id,
            block_size=block_size,
            pack_target_size=pack_target_size,
            created=now_iso(),
        )
        backend.put(fmt.CONFIG, config.to_bytes(keys))
        return cls(backend, keys, config)

    @classmethod
    def open(cls, backend: Backend, master_key: bytes) -> Vault:
        keys = VaultKeys(master_key)
        try:
            raw = backend.get(fmt.CONFIG)
        except FileNotFoundError:
            raise NotInVault(f"no vault at {backend!r}") from None
        config = fmt.VaultConfig.from_bytes(raw, keys)  # checks key and authenticity
        vault = cls(backend, keys, config)
        vault._load_index()
        return vault

    def _load_index(self) -> None:
        pack_ids = [n[len(fmt.INDEX):] for n in self.backend.list(fmt.INDEX)]
        pack_ids = [p for p in pack_ids if fmt.is_pack_id(p)]

        def load(pack_id: str) -> tuple[str, list[fmt.IndexEntry] | None]:
            try:
                blob = self.backend.get(fmt.index_name(pack_id))
                return pack_id, fmt.decode_index(
                    self._keys.open_sealed(blob, fmt.index_aad(pack_id)))
            except FileNotFoundError:
                return pack_id, []  # deleted since the listing (a GC)
            except VaultCorrupt:
                return pack_id, None

        loaded: list[tuple[str, list[fmt.IndexEntry]]] = []
        with ThreadPoolExecutor(checker.VERIFY_THREADS) as pool:
            for pack_id, entries in pool.map(load, pack_ids):
                if entries is None:
                    # Not fatal: its chunks are stored again by later backups; verify
                    # reports it, and restore points using them report missing chunks.
                    self.damaged_indexes.append(pack_id)
                    continue
                loaded.append((fmt.pack_name(pack_id), entries))
        # A chunk whose base is in no index is left out (GC keeps bases; this is for
        # a damaged vault): nothing is built on it, and verify reports its users.
        self._index.load(loaded)

    def read_index(self, pack_id: str) -> list[fmt.IndexEntry]:
        """The index of one pack; FileNotFoundError if it has none."""
        blob = self.backend.get(fmt.index_name(pack_id))
        return fmt.decode_index(self._keys.open_sealed(blob, fmt.index_aad(pack_id)))

    def gc(self, grace_seconds: float = gc.DEFAULT_GRACE, progress: Progress | None = None,
           should_cancel: Callable[[], bool] | None = None) -> GcReport:
        """Mark and sweep unreferenced packs (see vault/gc.py)."""
        return gc.collect(self, grace_seconds, progress=progress,
                          should_cancel=should_cancel)

    def backup(self, rp_id: str, disks: Mapping[str, Path],
               labels: dict[str, str] | None = None,
               progress: Progress | None = None,
               should_cancel: Callable[[], bool] | None = None,
               previous: Mapping[str, tuple[Path, str]] | None = None) -> BackupStats:
        """Back up disk images as restore point rp_id (see vault/archiver.py)."""
        return archiver.backup(self, rp_id, disks, labels, progress, should_cancel, previous)

    def restore_disk(self, rp_id: str, disk_name: str, target: Path,
                     progress: Progress | None = None) -> None:
        """Write one disk of a restore point to target (see vault/restorer.py)."""
        restorer.restore_disk(self, rp_id, disk_name, target, progress)

    def verify(self, progress: Progress | None = None, sample: float = 100.0,
               should_cancel: Callable[[], bool] | None = None) -> VerifyReport:
        """Re-read and re-hash the chunks restore points use (see vault/checker.py)."""
        return checker.verify(self, progress, sample, should_cancel)

    # --- what the parts use (vault/repo.py) -----------------------------------------

    @property
    def keys(self) -> VaultKeys:
        return self._keys

    @property
    def index(self) -> ChunkIndex:
        return self._index

    @property
    def backup_lock(self) -> threading.Lock:
        return self._backup_lock

    @property
    def vault_id(self) -> str:
        return self.config.vault_id

    def locate_chunk(self, chunk_id: str) -> tuple[str, int, int] | None:
        """(pack id, offset, sealed length) of a chunk (hex id), or None if not stored."""
        loc = self._index.get(bytes.fromhex(chunk_id))
        return None if loc is None else (pack_id_of(loc[0]), loc[1], loc[2])

    # --- restore points -----------------------------------------------------------

    def list_restore_points(self) -> list[str]:
        names = (n[len(fmt.MANIFESTS):] for n in self.backend.list(fmt.MANIFESTS))
        return sorted(n for n in names if "/" not in n)

    def read_manifest(self, rp_id: str) -> dict[str, Any]:
        fmt.check_rp_id(rp_id)
        try:
            blob = self.backend.get(fmt.manifest_name(rp_id))
        except FileNotFoundError:
            raise NotInVault(f"restore point {rp_id} does not exist",
                             {"restore_point": rp_id}) from None
        try:
            doc = fmt.decode_manifest(
                self._keys.open_sealed(blob, fmt.manifest_aad(rp_id)))
        except VaultCorrupt as e:
            raise VaultCorrupt(f"manifest of restore point {rp_id} is damaged: {e.detail}",
                               {"restore_point": rp_id}) from None
        if doc.get("id") != rp_id:
            raise VaultCorrupt(f"manifest of restore point {rp_id} names another id",
                               {"restore_point": rp_id})
        return doc

    def delete_restore_point(self, rp_id: str) -> None:
        """Delete the manifest only; unreferenced chunks are reclaimed by a later GC."""
        fmt.check_rp_id(rp_id)
        name = fmt.manifest_name(rp_id)
        if not self.backend.exists(name):
            raise NotInVault(f"restore point {rp_id} does not exist",
                             {"restore_point": rp_id})
        self.backend.delete(name)


def destroy(backend: Backend) -> int:
    """Delete the vault objects at backend (the names the format writes, nothing else:
    a foreign file in the location survives); returns how many. `config` goes last, so a
    delete that stops half way still leaves a location that reads as a vault."""
    names = [n for n in backend.list("") if fmt.is_vault_object(n)]
    names.sort(key=lambda n: n == fmt.CONFIG)
    for name in names:
        backend.delete(name)
    return len(names)
