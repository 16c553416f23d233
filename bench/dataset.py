"""The benchmark's dataset: deterministic, generated inside the sandbox machine.

    python dataset.py generate /mnt/data    # ~230 MB text-like files + ~200 MB random
    python dataset.py change /mnt/data [N]  # ~1 % of the 2 GiB disk: edits, appends, new
    python dataset.py generate-mixed /mnt/data   # small files, a database, a big file
    python dataset.py change-mixed /mnt/data N   # ~1 %: rows, small files, in place

A change takes a step number N (default 0), which seeds it: the history benchmark
(bench/history.py) changes the disk differently at every backup.

Everything comes from seeded PRNGs (random.Random(42) for the dataset, 43 for the
change), so every run writes the same bytes into the same file tree. Each command
prints one JSON line with what it wrote. Standard library only: it runs with whatever
Python the machine has.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sys
from pathlib import Path
from typing import Any

SEED, CHANGE_SEED = 42, 43
TEXT_BYTES = 230_000_000
RANDOM_BYTES = 200_000_000
TEXT_DIRS = 20
VOCABULARY = 4096
MiB = 1 << 20

_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "be", "do", "fa", "gu",
              "hi", "ja", "ko", "li", "mo", "nu", "pe", "ri", "su", "ta", "ve", "wo",
              "an", "el", "in", "or", "us", "ex", "th", "st", "qu", "ch", "sh", "tr"]


class Text:
    """Text-like bytes: words of a seeded vocabulary with a Zipf-like frequency,
    12 words a line. Compresses about as well as logs or prose (zstd ~3x)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        words = set()
        while len(words) < VOCABULARY:
            words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 5))))
        self.words = sorted(words)
        rng.shuffle(self.words)
        acc, self.cum = 0.0, []
        for rank in range(1, VOCABULARY + 1):
            acc += 1.0 / rank
            self.cum.append(acc)

    def make(self, size: int) -> bytes:
        out: list[bytes] = []
        have = 0
        while have < size:
            n = max(12, (size - have) // 6 + 12)
            words = self.rng.choices(self.words, cum_weights=self.cum, k=n)
            block = "\n".join(" ".join(words[i:i + 12]) for i in range(0, n, 12)) + "\n"
            b = block.encode()
            out.append(b)
            have += len(b)
        return b"".join(out)[:size]


def _log_uniform(rng: random.Random, lo: int, hi: int) -> int:
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))


# Digest of every byte written, in order, with the file names: equal digests mean the
# same dataset, whichever machine or run made it.
DIGEST = hashlib.sha256()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    DIGEST.update(path.name.encode() + data)
    with open(path, "wb") as f:
        f.write(data)


def generate(root: Path) -> dict[str, int]:
    rng = random.Random(SEED)
    text = Text(rng)
    files = text_bytes = random_bytes = 0
    i = 0
    while text_bytes < TEXT_BYTES:
        size = min(_log_uniform(rng, 4096, 2 * MiB), TEXT_BYTES - text_bytes)
        _write(root / "text" / f"d{i % TEXT_DIRS:02d}" / f"f{i:05d}.txt", text.make(size))
        text_bytes += size
        files += 1
        i += 1
    j = 0
    while random_bytes < RANDOM_BYTES:
        size = min(rng.randint(MiB // 2, 16 * MiB), RANDOM_BYTES - random_bytes)
        _write(root / "bin" / f"r{j:03d}.bin", rng.randbytes(size))
        random_bytes += size
        files += 1
        j += 1
    os.sync()
    return {"files": files, "text_bytes": text_bytes, "random_bytes": random_bytes,
            "bytes_written": text_bytes + random_bytes}


def _pwrite(path: Path, data: bytes, offset: int) -> None:
    DIGEST.update(f"{path.name}@{offset}".encode() + data)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def change(root: Path, step: int = 0) -> dict[str, int]:
    """About 1 % of the 2 GiB disk (~21 MB), the way a day of use changes a machine:
    in-place rewrites inside big binary files, small edits and appends in text files,
    one file rewritten whole, a few new files, a few deleted."""
    rng = random.Random(CHANGE_SEED + 1000 * step)
    text = Text(random.Random(SEED))  # same vocabulary, fresh words from rng below
    text.rng = rng
    bins = sorted((root / "bin").glob("*.bin"))
    texts = sorted((root / "text").rglob("*.txt"))
    w = {"in_place": 0, "appended": 0, "rewritten": 0, "new": 0, "deleted_files": 0,
         "files_touched": 0}

    touched: set[Path] = set()
    for p in rng.sample(bins, 8):  # 8 x 1 MiB rewritten in place, 4 KiB aligned
        size = p.stat().st_size
        off = rng.randrange(0, max(1, size - MiB)) & ~4095
        _pwrite(p, rng.randbytes(MiB), off)
        w["in_place"] += MiB
        touched.add(p)
    big = [p for p in texts if p.stat().st_size > 64 * 1024]
    for p in rng.sample(big, 24):  # 24 small edits of 8 KiB
        off = rng.randrange(0, p.stat().st_size - 8192)
        _pwrite(p, text.make(8192), off)
        w["in_place"] += 8192
        touched.add(p)
    for p in rng.sample(texts, 12):  # 12 logs grow by 200 KiB
        data = text.make(200 * 1024)
        DIGEST.update(f"{p.name}+".encode() + data)
        with open(p, "ab") as f:
            f.write(data)
        w["appended"] += 200 * 1024
        touched.add(p)
    mid = [p for p in bins if 2 * MiB <= p.stat().st_size <= 6 * MiB] or bins
    p = rng.choice(mid)  # one file rewritten whole (an app saving a document)
    n = p.stat().st_size
    tmp = p.with_name(p.name + ".new")
    _write(tmp, rng.randbytes(n))
    os.replace(tmp, p)
    w["rewritten"] += n
    touched.add(p)
    for k, size in enumerate((3 * MiB, 5 * MiB // 2)):  # new files
        _write(root / "bin" / f"new{k}.bin", rng.randbytes(size))
        w["new"] += size
    for k in range(6):
        _write(root / "text" / "new" / f"n{k}.txt", text.make(400 * 1024))
        w["new"] += 400 * 1024
    for p in rng.sample([t for t in texts if t not in touched], 3):
        DIGEST.update(f"{p.name}-".encode())
        p.unlink()
        w["deleted_files"] += 1
    w["files_touched"] = len(touched)
    os.sync()
    w["bytes_written"] = w["in_place"] + w["appended"] + w["rewritten"] + w["new"]
    return w


SMALL_FILES, DB_ROWS, BIG_BYTES = 6000, 24_000, 600_000_000


def _db(root: Path) -> Any:
    import sqlite3  # the guest's python3 has it (libpython3-stdlib)
    return sqlite3.connect(root / "db" / "app.sqlite")


def generate_mixed(root: Path) -> dict[str, int]:
    """Several thousand small files, a database, one large mostly-random file."""
    rng = random.Random(SEED + 1)
    text = Text(rng)
    small = 0
    for i in range(SMALL_FILES):
        data = text.make(_log_uniform(rng, 512, 48 * 1024))
        _write(root / "etc" / f"d{i % 64:02d}" / f"c{i:05d}.conf", data)
        small += len(data)
    (root / "db").mkdir(parents=True, exist_ok=True)
    db = _db(root)
    db.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT, body BLOB)")
    db.executemany("INSERT INTO item VALUES (?, ?, ?)", (
        (k, text.make(40), rng.randbytes(rng.randint(1024, 8192))) for k in range(DB_ROWS)))
    db.commit()
    db.close()
    big = root / "big" / "media.bin"
    big.parent.mkdir(parents=True, exist_ok=True)
    with open(big, "wb") as f:  # random, with a zero run every 64 MiB (mostly random)
        for off in range(0, BIG_BYTES, 4 * MiB):
            f.write(bytes(4 * MiB) if off % (64 * MiB) == 0 else rng.randbytes(4 * MiB))
    os.sync()
    dbsize = (root / "db" / "app.sqlite").stat().st_size
    return {"files": SMALL_FILES + 2, "small_bytes": small, "db_bytes": dbsize,
            "big_bytes": BIG_BYTES, "bytes_written": small + dbsize + BIG_BYTES}


def change_mixed(root: Path, step: int) -> dict[str, int]:
    """About 1 % of the disk: database rows updated and added, small files edited,
    added and deleted, a few MiB rewritten in place in the big file."""
    rng = random.Random(CHANGE_SEED + 1 + 1000 * step)
    text = Text(random.Random(SEED + 1))
    text.rng = rng
    w = {"db_rows": 0, "small_edited": 0, "small_new": 0, "deleted_files": 0, "in_place": 0}
    db = _db(root)
    for _ in range(1500):
        db.execute("UPDATE item SET body = ? WHERE id = ?",
                   (rng.randbytes(rng.randint(1024, 8192)), rng.randrange(DB_ROWS)))
    db.executemany("INSERT INTO item (name, body) VALUES (?, ?)",
                   ((text.make(40), rng.randbytes(4096)) for _ in range(300)))
    db.commit()
    db.close()
    w["db_rows"] = 1800
    small = sorted((root / "etc").rglob("*.conf"))
    for p in rng.sample(small, 150):
        _write(p, text.make(_log_uniform(rng, 512, 48 * 1024)))
        w["small_edited"] += 1
    for k in range(150):
        _write(root / "etc" / "new" / f"s{step:02d}-{k:03d}.conf", text.make(4096))
        w["small_new"] += 1
    for p in rng.sample(small, 100):
        p.unlink()
        w["deleted_files"] += 1
    big = root / "big" / "media.bin"
    for _ in range(6):
        _pwrite(big, rng.randbytes(MiB), rng.randrange(BIG_BYTES // MiB) * MiB)
        w["in_place"] += MiB
    os.sync()
    w["bytes_written"] = 1800 * 5000 + 300 * 4096 + w["in_place"]
    return w


def main() -> None:
    cmd, root = sys.argv[1], Path(sys.argv[2])
    step = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    out = {"generate": lambda: generate(root), "change": lambda: change(root, step),
           "generate-mixed": lambda: generate_mixed(root),
           "change-mixed": lambda: change_mixed(root, step)}[cmd]()
    out["sha256"] = DIGEST.hexdigest()
    st = os.statvfs(root)
    out["fs_used_bytes"] = (st.f_blocks - st.f_bfree) * st.f_frsize
    print(json.dumps(out))


if __name__ == "__main__":
    main()
