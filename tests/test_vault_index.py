"""The in-memory chunk index: what it answers, and what it costs per chunk."""

from __future__ import annotations

import os
import threading
import tracemalloc

import pytest

from frostpoint.vault import index as index_mod
from frostpoint.vault.index import ChunkIndex


def _ids(n: int) -> list[bytes]:
    return [os.urandom(32) for _ in range(n)]


def test_well_under_100_bytes_per_chunk() -> None:
    """ARCHITECTURE §5: memory stays bounded, well under 100 bytes per chunk of index.
    200,000 chunks (800 GB of unique data at 4 MiB) in 2,000 packs, a quarter with a
    base; the old dict of tuples took about 245 bytes each."""
    n = 200_000
    ids = _ids(n)
    packs = [f"packs/{os.urandom(1).hex()}/{os.urandom(16).hex()}" for _ in range(2000)]
    rows = [(packs[i % 2000], [(ids[i], i * 4_000_000 % (1 << 34), 2_000_000 + i,
                                ids[i - 1] if i % 4 == 0 and i else None)])
            for i in range(n)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        idx = ChunkIndex()
        idx.load(rows)
        for i in range(n, n + 3000):  # a backup's worth of new chunks, not merged yet
            idx.add(os.urandom(32), packs[0], i, 4096, None)
        per_chunk = (tracemalloc.get_traced_memory()[0] - before) / (n + 3000)
    finally:
        tracemalloc.stop()
    assert per_chunk < 80, f"{per_chunk:.0f} bytes per chunk"
    assert idx.get(ids[12345]) == (packs[12345 % 2000], 12345 * 4_000_000 % (1 << 34),
                                   2_012_345)
    assert idx.base(ids[8]) == ids[7] and idx.base(ids[9]) is None


def test_answers_across_merges_drops_and_duplicates(monkeypatch: pytest.MonkeyPatch
                                                    ) -> None:
    monkeypatch.setattr(index_mod, "MERGE_MIN", 16)
    ids = _ids(300)
    idx = ChunkIndex()
    idx.load([("packs/aa/p0", [(c, k, 100 + k, None) for k, c in enumerate(ids[:100])])])
    for k, c in enumerate(ids[100:], start=100):  # several merges on the way
        idx.add(c, "packs/bb/p1", k, 100 + k, ids[k % 100])  # bases have no base
    assert len(idx) == 300
    for k, c in enumerate(ids):
        assert c in idx
        assert idx[c] == ("packs/aa/p0" if k < 100 else "packs/bb/p1", k, 100 + k)
        assert idx.base(c) == (None if k < 100 else ids[k % 100])
    assert os.urandom(32) not in idx and idx.get(os.urandom(32)) is None
    with pytest.raises(KeyError):
        idx[os.urandom(32)]
    idx.add(ids[5], "packs/cc/p2", 1, 2, None)  # already indexed: the first one wins
    assert idx[ids[5]] == ("packs/aa/p0", 5, 105)
    idx.drop(ids[7])    # in the arrays
    idx.drop(ids[299])  # maybe still recent
    assert ids[7] not in idx and ids[299] not in idx and len(idx) == 298
    idx.add(os.urandom(32), "packs/dd/p3", 0, 1, None)
    for _ in range(40):  # force a merge: dropped ones stay gone
        idx.add(os.urandom(32), "packs/dd/p3", 0, 1, None)
    assert ids[7] not in idx and ids[299] not in idx and ids[8] in idx
    assert idx.bases()[ids[150]] == ids[50]
    assert dict(idx.items())[ids[150]] == ("packs/bb/p1", 150, 250)


def test_a_chunk_whose_base_is_gone_is_not_indexed() -> None:
    a, b, gone = _ids(3)
    idx = ChunkIndex()
    idx.load([("packs/aa/p", [(a, 0, 10, None), (b, 10, 10, gone)])])
    assert a in idx and b not in idx and idx.orphans == {b: gone}


def test_readers_never_miss_while_a_writer_merges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_mod, "MERGE_MIN", 64)
    idx = ChunkIndex()
    known = _ids(2000)
    idx.load([("packs/aa/p", [(c, k, 1, None) for k, c in enumerate(known)])])
    misses: list[bytes] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            misses.extend(c for c in known[::37] if c not in idx)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    for k in range(20_000):  # hundreds of merges under the readers
        idx.add(os.urandom(32), "packs/bb/q", k, 1, None)
    stop.set()
    for t in readers:
        t.join()
    assert misses == [] and len(idx) == 22_000


def test_of_two_copies_of_an_id_the_usable_one_is_kept() -> None:
    """An id stored twice (a re-store after a damaged index, two writers): whatever the
    order the packs are listed in, the index keeps a copy a reader can use."""
    c, gone, p, q, d = _ids(5)
    for order in (0, 1):
        # c: one copy names a base that is in no index, one has no base
        # p: one copy has a base (q), one has none; d names p as its base
        packs = [("packs/aa/old", [(c, 0, 10, gone), (p, 10, 10, q), (q, 20, 10, None),
                                   (d, 30, 10, p)]),
                 ("packs/bb/new", [(c, 0, 11, None), (p, 11, 11, None)])]
        idx = ChunkIndex()
        idx.load(packs if order == 0 else packs[::-1])
        assert idx[c] == ("packs/bb/new", 0, 11) and idx.base(c) is None
        assert idx[p] == ("packs/bb/new", 11, 11) and idx.base(p) is None
        assert idx.base(d) == p  # one hop: its base has no base


def test_a_chunk_named_as_base_only_by_a_copy_with_a_base_is_left_out() -> None:
    p, q, d = _ids(3)
    idx = ChunkIndex()
    idx.load([("packs/aa/x", [(p, 0, 10, q), (q, 10, 10, None), (d, 20, 10, p)])])
    assert p in idx and d not in idx and idx.orphans == {d: p}
