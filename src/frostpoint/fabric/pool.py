"""The disk pool: machines' disk images and their reflink snapshots.

A snapshot is a FICLONE of the image: milliseconds whatever the size, and the two
files share extents where nothing changed (what changed-block tracking reads).
"""

from __future__ import annotations

import fcntl
import shutil
from pathlib import Path

from frostpoint.fabric.platform import DiskSpec
from frostpoint.fabric.system import is_mountpoint, run

FICLONE = 0x40049409
DEFAULT_POOL_SIZE = 64 << 30  # sparse: costs only what is written


def reflink(src: Path, dst: Path) -> None:
    """Copy src to dst sharing all extents; fails on filesystems without reflink."""
    with open(src, "rb") as s, open(dst, "wb") as d:
        fcntl.ioctl(d.fileno(), FICLONE, s.fileno())


def make_disk_image(disk: DiskSpec) -> None:
    """A new disk image of the disk's size with its filesystem (every machine kind)."""
    disk.image_path.parent.mkdir(parents=True, exist_ok=True)
    with open(disk.image_path, "wb") as f:
        f.truncate(disk.size_bytes)
    if disk.filesystem == "xfs":
        run(["mkfs.xfs", "-q", str(disk.image_path)])
    else:
        encrypt = ["-O", "encrypt"] if disk.encrypted else []
        run(["mkfs.ext4", "-q", "-F", *encrypt, "-L", disk.name, str(disk.image_path)])


def can_reflink(directory: Path) -> bool:
    directory.mkdir(parents=True, exist_ok=True)
    a, b = directory / ".reflink-probe-a", directory / ".reflink-probe-b"
    try:
        a.write_bytes(b"x" * 4096)
        reflink(a, b)
        return True
    except OSError:
        return False
    finally:
        a.unlink(missing_ok=True)
        b.unlink(missing_ok=True)


class DiskPool:
    def __init__(self, data_dir: Path, size: int = DEFAULT_POOL_SIZE) -> None:
        self.root = data_dir / "pool"
        self.image = data_dir / "pool.img"
        self.size = size

    def ensure(self) -> None:
        """Make the pool usable: the data dir itself if it reflinks, else an XFS file."""
        if is_mountpoint(self.root) or (not self.image.exists() and can_reflink(self.root)):
            self._dirs()
            return
        if not self.image.exists():
            if shutil.which("mkfs.xfs") is None:
                raise RuntimeError("mkfs.xfs is missing: apt-get install xfsprogs")
            with open(self.image, "wb") as f:
                f.truncate(self.size)
            run(["mkfs.xfs", "-q", "-m", "reflink=1", str(self.image)])
        self.root.mkdir(parents=True, exist_ok=True)
        run(["mount", "-o", "loop", str(self.image), str(self.root)])
        self._dirs()

    def _dirs(self) -> None:
        (self.root / "disks").mkdir(parents=True, exist_ok=True)
        (self.root / "snapshots").mkdir(parents=True, exist_ok=True)

    def teardown(self) -> None:
        if is_mountpoint(self.root):
            run(["umount", str(self.root)])  # loop mounts auto-clear their device

    def disk_path(self, machine: str, disk: str) -> Path:
        return self.root / "disks" / machine / f"{disk}.img"

    def snapshot_dir(self, machine: str, restore_point: str) -> Path:
        return self.root / "snapshots" / machine / restore_point
