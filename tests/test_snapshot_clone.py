"""The two-step snapshot clone (fabric/clone.py): a copy staged while the guest runs,
caught up on what changed while it is frozen, holds exactly the image's bytes."""

from __future__ import annotations

import ctypes
import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from frostpoint.fabric import clone

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mkfs.xfs") is None,
    reason="needs root (a loop mount) and mkfs.xfs (xfsprogs) for a reflink filesystem")

BLOCK = 4096
SIZE = 64 << 20
PUNCH = 0x01 | 0x02  # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE


@pytest.fixture(scope="module")
def xfs() -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="fp-clone-"))
    img, mnt = work / "xfs.img", work / "mnt"
    with open(img, "wb") as f:
        f.truncate(1 << 30)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(img)], check=True)
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        # Lazily if something still holds a file there: never leave the loop device,
        # and never remove the folder while the filesystem is still mounted on it.
        if subprocess.run(["umount", str(mnt)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=True)
        shutil.rmtree(work, ignore_errors=True)


def scribble(path: Path, rnd: random.Random, writes: int) -> None:
    """Writes of 1-8 blocks at random places, and a hole punched: what a guest does."""
    fd = os.open(path, os.O_RDWR)
    try:
        for _ in range(writes):
            os.pwrite(fd, rnd.randbytes(BLOCK * rnd.choice((1, 2, 8))),
                      rnd.randrange(SIZE // BLOCK - 8) * BLOCK)
        libc = ctypes.CDLL(None, use_errno=True)
        at = rnd.randrange(SIZE // BLOCK - 16) * BLOCK
        assert libc.fallocate(fd, PUNCH, ctypes.c_long(at), ctypes.c_long(16 * BLOCK)) == 0
    finally:
        os.close(fd)


def test_staged_copy_caught_up_holds_the_image_bytes_after_writes_and_holes(
        xfs: Path) -> None:
    rnd = random.Random(14)
    image = xfs / "disk.img"
    image.write_bytes(rnd.randbytes(SIZE))
    for generation in range(4):
        scribble(image, rnd, 300)  # the history: the image fragments
        staged = clone.stage(image, xfs / f"snap{generation}.img")
        scribble(image, rnd, 50)  # the guest writes on until it freezes
        ranges = clone.catch_up(staged)
        assert 0 < ranges < len(clone.extent_map(os.open(image, os.O_RDONLY)))
        assert (xfs / f"snap{generation}.img").read_bytes() == image.read_bytes()
    # An earlier snapshot is not touched by a later one's catch-up.
    before = (xfs / "snap0.img").read_bytes()
    staged = clone.stage(image, xfs / "snap4.img")
    scribble(image, rnd, 20)
    clone.catch_up(staged)
    assert (xfs / "snap0.img").read_bytes() == before


def test_stages_fall_back_to_a_whole_clone_when_the_disks_differ(xfs: Path) -> None:
    image = xfs / "other.img"
    image.write_bytes(b"a" * SIZE)
    stages = clone.Stages()
    target = xfs / "snapshots" / "vm1" / "rp1"
    stages.stage("vm1", target, [("data", image)])
    staged_folder = target.with_name(".rp1.stage")
    assert (staged_folder / "data.img").exists()
    # Another disk list (a disk attached since) is never served from the stale stage.
    assert stages.catch_up("vm1", target, [("data", image), ("more", image)]) is None
    assert not staged_folder.exists()
    stages.stage("vm1", target, [("data", image)])
    with open(image, "r+b") as f:
        f.write(b"b" * BLOCK)
    folder = stages.catch_up("vm1", target, [("data", image)])
    assert folder == staged_folder
    assert (folder / "data.img").read_bytes() == image.read_bytes()
