"""The pack writer: gathers the sealed chunks of one backup into packs, and writes each
pack, then its index (docs/vault-format.md, commit order steps 1 and 2)."""

from __future__ import annotations

import queue
import secrets
import threading

from frostpoint.vault import format as fmt
from frostpoint.vault.repo import Repository
from frostpoint.vault.reports import BackupStats


class PackWriter:
    """Accumulates sealed chunks of one backup into packs; flushes pack, then index."""

    def __init__(self, vault: Repository, stats: BackupStats) -> None:
        self._vault = vault
        self._stats = stats
        # Packs are uploaded by one background thread, so reading and sealing go on
        # while a pack is written; at most one pack waits (bounded memory).
        self._uploads: queue.Queue[tuple[str, bytes, list[fmt.IndexEntry]] | None] = (
            queue.Queue(maxsize=1))
        self._uploading: dict[bytes, None] = {}
        self._error: BaseException | None = None
        self._uploader = threading.Thread(target=self._upload_loop, name="vault-upload",
                                          daemon=True)
        self._uploader.start()
        self._new_pack()

    def _new_pack(self) -> None:
        self.pack_id = secrets.token_hex(16)
        self.buf = bytearray()  # the pack being filled; one copy of each sealed chunk
        self.entries: list[fmt.IndexEntry] = []
        self.size = 0
        # Chunks in the unflushed pack: known for dedup within this backup, but not
        # yet in the vault index (which only holds chunks whose pack+index are durable).
        self.pending: dict[bytes, None] = {}

    def knows(self, cid: bytes) -> bool:
        return cid in self._vault.index or cid in self.pending or cid in self._uploading

    def add(self, cid: bytes, sealed: bytes | None, base: bytes | None = None) -> None:
        if self.knows(cid):
            self._stats.chunks_reused += 1
            return
        if sealed is None:  # cannot happen: a chunk once known stays known
            raise RuntimeError(f"chunk {cid.hex()} vanished from the index")
        if self.size and self.size + len(sealed) > self._vault.config.pack_target_size:
            self.flush()
        self.entries.append((cid, self.size, len(sealed), base))
        self.buf += sealed
        self.pending[cid] = None
        self.size += len(sealed)
        self._stats.chunks_new += 1

    def flush(self) -> None:
        """Hand the current pack to the uploader (waits while one is still queued)."""
        if self._error is not None:
            raise self._error
        if not self.buf:
            return
        self._uploading.update(self.pending)
        pack = (self.pack_id, self.buf, self.entries)  # the bytearray itself: no second copy
        self._uploads.put(pack)  # type: ignore[arg-type]  # a bytearray is bytes-like to every backend
        self._new_pack()

    def finish(self) -> None:
        """Flush the last pack and wait until every pack and index is durable."""
        try:
            self.flush()
        finally:
            self._uploads.put(None)
            self._uploader.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Stop uploading (a queued pack is dropped: it was never indexed)."""
        if self._uploader.is_alive():
            if self._error is None:
                self._error = RuntimeError("backup aborted")
            self._uploads.put(None)
            self._uploader.join()

    def _upload_loop(self) -> None:
        v = self._vault
        while (item := self._uploads.get()) is not None:
            if self._error is not None:
                continue  # drain: the backup fails; nothing more is written
            pack_id, data, entries = item
            try:
                pack_obj = fmt.pack_name(pack_id)
                # 1. the pack, durable. Until its index exists nobody will read it.
                v.backend.put(pack_obj, data)
                # 2. its index: from now on later backups dedup against these chunks.
                v.backend.put(fmt.index_name(pack_id), v.keys.seal(
                    fmt.encode_index(entries), fmt.index_aad(pack_id)))
                # Index before uploading is cleared, so a concurrent `knows` never misses.
                for cid, off, length, base in entries:
                    v.index.add(cid, pack_obj, off, length, base)
                    self._uploading.pop(cid, None)
                self._stats.bytes_stored += len(data)
            except BaseException as e:  # noqa: BLE001 - re-raised in the backup's thread
                self._error = e
