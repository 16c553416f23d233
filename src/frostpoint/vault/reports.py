"""The typed reports of the vault's long operations: backup, verify and GC."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BackupStats:
    bytes_read: int = 0       # bytes read from the disk images
    bytes_scanned: int = 0    # bytes covered so far (read, or known without reading)
    bytes_total: int = 0      # sum of disk sizes
    blocks_total: int = 0
    zero_blocks: int = 0      # all-zero blocks: recorded as null, never stored
    chunks_new: int = 0       # chunks sealed and written by this backup
    chunks_reused: int = 0    # non-zero blocks whose chunk was already stored (dedup)
    bytes_stored: int = 0     # sealed chunk bytes written to packs
    # New whole chunks (no base): their plain and sealed bytes, whose ratio is what
    # compression saved (the dashboard's compression ratio).
    plain_bytes_new: int = 0
    sealed_bytes_new: int = 0
    blocks_unchanged: int = 0  # same extents as the previous snapshot: not read
    blocks_hole: int = 0      # holes in the image: not read
    blocks_patched: int = 0   # partly changed: only the frames a change touches read
    duration_s: float = 0.0
    cbt: dict[str, str] = field(default_factory=dict)  # disk -> how blocks were chosen


@dataclass(frozen=True)
class ChunkRef:
    """One place a chunk is used: restore point, disk, byte offset of the block."""

    restore_point: str
    disk: str
    offset: int


@dataclass
class ChunkProblem:
    chunk_id: str              # hex
    pack: str | None           # pack id hex, None if the chunk is in no index
    reason: str
    refs: list[ChunkRef] = field(default_factory=list)


@dataclass
class VerifyReport:
    restore_points: int = 0
    chunks_checked: int = 0
    damaged: list[ChunkProblem] = field(default_factory=list)   # present but bad
    missing: list[ChunkProblem] = field(default_factory=list)   # referenced, not there
    damaged_manifests: list[str] = field(default_factory=list)  # restore point ids
    damaged_indexes: list[str] = field(default_factory=list)    # pack ids

    @property
    def ok(self) -> bool:
        return not (self.damaged or self.missing or self.damaged_manifests
                    or self.damaged_indexes)


@dataclass
class GcReport:
    restore_points: int = 0
    packs_total: int = 0
    packs_pending: int = 0       # unreferenced now; deleted by a later run after grace
    packs_deleted: int = 0
    bytes_deleted: int = 0
    packs_partly_dead: int = 0   # kept whole: some chunks still referenced
    dead_bytes_kept: int = 0
    duration_s: float = 0.0
    kept_after_recheck: list[str] = field(default_factory=list)
    pending_discarded: bool = False  # gc/pending failed its check: marks started afresh
