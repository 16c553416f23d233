"""The in-memory chunk index: chunk id -> (pack, offset, sealed length) and base.

A vault's index is loaded at open and grows as backups store chunks; the architecture
asks for well under 100 bytes per chunk. A dict entry per chunk costs ~245 bytes in
CPython (key object, value tuple, ints), so the chunks live in flat arrays sorted by
id, about 60 bytes each, and only those added since the last merge in a small dict.

Readers take no lock: every merge builds new arrays and swaps one reference, and the
arrays themselves only ever change by a drop marking an entry dead.
"""

from __future__ import annotations

import threading
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator

ID = 32
_NO_BASE = -1
MERGE_MIN = 4096  # the dict merges into the arrays past this, or a quarter of them

Location = tuple[str, int, int]  # pack object name, offset, sealed length


def _key(cid: bytes) -> int:
    return int.from_bytes(cid[:8], "big")


class _Sorted:
    """Chunks sorted by id. keys holds each id's first 8 bytes for a bisect in C;
    length 0 marks a dropped chunk; a base is the position of the base chunk."""

    __slots__ = ("ids", "keys", "packs", "offs", "lens", "bases")

    def __init__(self) -> None:
        self.ids = bytearray()
        self.keys = array("Q")
        self.packs = array("I")
        self.offs = array("Q")
        self.lens = array("I")
        self.bases = array("i")

    def __len__(self) -> int:
        return len(self.keys)

    def id_at(self, i: int) -> bytes:
        return bytes(self.ids[i * ID:(i + 1) * ID])

    def find(self, cid: bytes) -> int:
        """Position of a live chunk, or -1."""
        k = _key(cid)
        i = bisect_left(self.keys, k)
        while i < len(self.keys) and self.keys[i] == k:
            if self.ids[i * ID:(i + 1) * ID] == cid:
                return i if self.lens[i] else -1
            i += 1
        return -1


# One chunk while it is being merged: id, pack number, offset, length, base id.
_Row = tuple[bytes, int, int, int, bytes | None]


class ChunkIndex:
    def __init__(self) -> None:
        self._packs: list[str] = []
        self._pack_no: dict[str, int] = {}
        # (sorted arrays, recent additions: id -> (pack number, offset, length, base))
        self._state: tuple[_Sorted, dict[bytes, tuple[int, int, int, bytes | None]]] = (
            _Sorted(), {})
        self._lock = threading.Lock()  # writers only
        # chunks left out because their base is not indexed -> that base (for verify)
        self.orphans: dict[bytes, bytes] = {}

    # --- reading --------------------------------------------------------------------

    def get(self, cid: bytes) -> Location | None:
        table, recent = self._state
        hit = recent.get(cid)
        if hit is not None:
            return self._packs[hit[0]], hit[1], hit[2]
        i = table.find(cid)
        n = table.lens[i] if i >= 0 else 0  # read once: a drop may zero it meanwhile
        if not n:
            return None
        return self._packs[table.packs[i]], table.offs[i], n

    def __contains__(self, cid: object) -> bool:
        return isinstance(cid, bytes) and self.get(cid) is not None

    def __getitem__(self, cid: bytes) -> Location:
        loc = self.get(cid)
        if loc is None:
            raise KeyError(cid.hex())
        return loc

    def base(self, cid: bytes) -> bytes | None:
        """The base chunk of cid, None when it has none (or is not indexed)."""
        table, recent = self._state
        hit = recent.get(cid)
        if hit is not None:
            return hit[3]
        i = table.find(cid)
        if i < 0 or table.bases[i] == _NO_BASE:
            return None
        return table.id_at(table.bases[i])

    def __len__(self) -> int:
        table, recent = self._state
        return sum(1 for n in table.lens if n) + len(recent)

    def bases(self) -> dict[bytes, bytes]:
        """Every indexed chunk that has a base -> its base."""
        return {cid: b for cid, _loc, b in self._rows() if b is not None}

    def items(self) -> Iterator[tuple[bytes, Location]]:
        for cid, loc, _base in self._rows():
            yield cid, loc

    def _rows(self) -> Iterator[tuple[bytes, Location, bytes | None]]:
        table, recent = self._state
        for i in range(len(table)):
            if table.lens[i]:
                b = table.bases[i]
                yield (table.id_at(i), (self._packs[table.packs[i]], table.offs[i],
                                        table.lens[i]), None if b == _NO_BASE else table.id_at(b))
        for cid, (p, off, n, base_id) in list(recent.items()):
            yield cid, (self._packs[p], off, n), base_id

    # --- writing ----------------------------------------------------------------------

    def _pack(self, pack_obj: str) -> int:
        no = self._pack_no.get(pack_obj)
        if no is None:
            no = self._pack_no[pack_obj] = len(self._packs)
            self._packs.append(pack_obj)
        return no

    def add(self, cid: bytes, pack_obj: str, off: int, length: int,
            base: bytes | None) -> None:
        """Index a chunk; the first location of an id wins (duplicates are harmless)."""
        with self._lock:
            if self.get(cid) is not None:
                return
            table, recent = self._state
            recent[cid] = (self._pack(pack_obj), off, length, base)
            if len(recent) > max(MERGE_MIN, len(table) // 4):
                self._merge([])

    def load(self, packs: Iterable[tuple[str, Iterable[tuple[bytes, int, int, bytes | None]]]]
             ) -> None:
        """Index the chunks of many packs at once (a vault's open): one merge."""
        rows: list[_Row] = []
        with self._lock:
            for pack_obj, entries in packs:
                no = self._pack(pack_obj)
                rows.extend((cid, no, off, n, base) for cid, off, n, base in entries)
            self._merge(rows)

    def drop(self, cid: bytes) -> None:
        with self._lock:
            table, recent = self._state
            if recent.pop(cid, None) is None:
                i = table.find(cid)
                if i >= 0:
                    table.lens[i] = 0  # dead; gone from the arrays at the next merge

    def _merge(self, more: list[_Row]) -> None:
        """New sorted arrays from the live chunks, the recent ones and `more`; the
        first of equal ids wins. Called with the lock held."""
        table, recent = self._state
        rows: list[_Row] = []
        for i in range(len(table)):
            if table.lens[i]:
                b = table.bases[i]
                rows.append((table.id_at(i), table.packs[i], table.offs[i], table.lens[i],
                             None if b == _NO_BASE else table.id_at(b)))
        rows.extend((cid, p, off, n, b) for cid, (p, off, n, b) in recent.items())
        rows.extend(more)
        # The same id may be stored more than once (a re-store after a damaged index,
        # two writers). Keep the copy a reader can use: one without a base, else one
        # whose base has a copy without a base (one hop), else none; then the first.
        baseless = {r[0] for r in rows if r[4] is None}

        def rank(r: _Row) -> tuple[bytes, int]:
            return r[0], 0 if r[4] is None else 1 if r[4] in baseless else 2

        rows.sort(key=rank)  # stable: among equals, the first stays first
        rows = [r for k, r in enumerate(rows) if k == 0 or r[0] != rows[k - 1][0]]
        new = _Sorted()
        new.ids = bytearray(b"".join([r[0] for r in rows]))
        new.keys = array("Q", [_key(r[0]) for r in rows])
        new.packs = array("I", [r[1] for r in rows])
        new.offs = array("Q", [r[2] for r in rows])
        new.lens = array("I", [r[3] for r in rows])
        new.bases = array("i", [_NO_BASE]) * len(rows)
        with_base = [(i, r[4]) for i, r in enumerate(rows) if r[4] is not None]
        for i, base_id in with_base:
            j = new.find(base_id)
            if j < 0 or base_id not in baseless:
                new.lens[i] = 0  # no usable base: never read, deduped or built on
                self.orphans[rows[i][0]] = base_id
            else:
                new.bases[i] = j
        self._state = (new, {})
