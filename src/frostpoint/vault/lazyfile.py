"""A disk of a restore point in a vault as a read-only file whose blocks are fetched
from the vault when read (FUSE), so the host can mount its filesystem and read only
what the filesystem's metadata (and the files asked for) need: `rp browse` from the
vault does not restore the whole disk.

Run as its own process (`python -m frostpoint.vault.lazyfile MOUNTPOINT STATS`, the
vault's place and key as JSON on stdin, never in argv): libfuse's main loop takes the
process's SIGINT/SIGTERM, which must stay the service's. It serves MOUNTPOINT/disk.img
until MOUNTPOINT is unmounted, and writes {"blocks_read", "blocks_total"} to STATS
after each block fetched. All-zero blocks are zeros without a read; a block is fetched
whole, checked as any restore checks it (vault/restorer.py read_chunk), and kept in a
small cache.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
import threading
from collections import OrderedDict
from typing import Any

import mfusepy

from frostpoint.vault.azure import AzureBlobBackend
from frostpoint.vault.backend import Backend, LocalBackend
from frostpoint.vault.restorer import read_chunk
from frostpoint.vault.store import Vault

IMAGE = "disk.img"
CACHED_BLOCKS = 8  # 32 MiB with 4 MiB blocks


class DiskFile(mfusepy.Operations):  # type: ignore[misc]  # mfusepy ships no types
    def __init__(self, store: Vault, rp_id: str, disk: str, stats_path: str) -> None:
        d = store.read_manifest(rp_id)["disks"][disk]
        self.store, self.rp_id, self.disk = store, rp_id, disk
        self.size, self.bs, self.blocks = int(d["size"]), int(d["block_size"]), d["blocks"]
        self.stats_path = stats_path
        self.cache: OrderedDict[int, bytes] = OrderedDict()
        self.lock = threading.Lock()
        self.fetched: set[int] = set()
        self._stats()

    def _stats(self) -> None:
        tmp = self.stats_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"blocks_read": len(self.fetched),
                       "blocks_total": sum(1 for b in self.blocks if b)}, f)
        os.replace(tmp, self.stats_path)

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o500, "st_nlink": 2}
        if path == "/" + IMAGE:
            return {"st_mode": stat.S_IFREG | 0o400, "st_nlink": 1, "st_size": self.size}
        raise mfusepy.FuseOSError(errno.ENOENT)

    def readdir(self, path: str, fh: Any) -> list[str]:
        return [".", "..", IMAGE]

    def open(self, path: str, flags: int) -> int:
        if path != "/" + IMAGE:
            raise mfusepy.FuseOSError(errno.ENOENT)
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise mfusepy.FuseOSError(errno.EROFS)
        return 0

    def _block(self, i: int) -> bytes:
        n = min(self.bs, self.size - i * self.bs)
        h = self.blocks[i]
        if h is None:
            return bytes(n)
        with self.lock:
            hit = self.cache.get(i)
            if hit is not None:
                self.cache.move_to_end(i)
                return hit
        data = b"".join(read_chunk(self.store, bytes.fromhex(h), {
            "restore_point": self.rp_id, "disk": self.disk, "offset": i * self.bs}))
        if len(data) != n:
            raise mfusepy.FuseOSError(errno.EIO)
        with self.lock:
            self.cache[i] = data
            while len(self.cache) > CACHED_BLOCKS:
                self.cache.popitem(last=False)
            if i not in self.fetched:
                self.fetched.add(i)
                self._stats()
        return data

    def read(self, path: str, size: int, offset: int, fh: Any) -> bytes:
        end = min(offset + size, self.size)
        out = bytearray()
        pos = offset
        while pos < end:
            i = pos // self.bs
            try:
                block = self._block(i)
            except mfusepy.FuseOSError:
                raise
            except Exception:  # noqa: BLE001 - damaged, missing: the kernel sees EIO
                raise mfusepy.FuseOSError(errno.EIO) from None
            start = pos - i * self.bs
            take = block[start:start + (end - pos)]
            out += take
            pos += len(take)
        return bytes(out)


def open_backend(kind: str, location: str) -> Backend:
    if kind == "azure":
        return AzureBlobBackend.from_url(location)
    return LocalBackend(location)


def main() -> None:
    mountpoint, stats_path = sys.argv[1], sys.argv[2]
    cfg = json.loads(sys.stdin.read())
    store = Vault.open(open_backend(cfg["backend"], cfg["location"]), bytes.fromhex(cfg["key"]))
    ops = DiskFile(store, cfg["restore_point"], cfg["disk"], stats_path)
    mfusepy.FUSE(ops, mountpoint, foreground=True, ro=True, fsname="frostpoint-lazy")


if __name__ == "__main__":
    main()
