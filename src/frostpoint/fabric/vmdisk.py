"""A QEMU guest's boot files and root disk, made from the guest image's "vm" flavour
(fabric/image.py): its kernel and initrd (the image's own linux-image-cloud-amd64, so
its modules are on the root disk), and a raw ext4 of the tree (`mkfs.ext4 -d`), made
once per image key in the pool and reflinked per VM (docs/machines.md "QEMU guests").
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from frostpoint.errors.catalog import FrostpointError
from frostpoint.fabric.image import ensure_image, image_key
from frostpoint.fabric.system import run

ROOT_SIZE = 3 << 30  # sparse: the tree is ~300 MB; room for a guest's packages and data


@dataclass
class BootFiles:
    kernel: Path
    initrd: Path
    key: str  # the image key (names the cached root disk)


def boot_files() -> BootFiles:
    """The kernel and initrd of the current VM image (host-side copies in the image
    cache, never read from a guest's disk)."""
    rootfs = ensure_image("vm")
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise FrostpointError("UserErrorCrpReportedUserError",
                              f"the VM image {rootfs} has no kernel in /boot")
    version = kernels[-1].name.removeprefix("vmlinuz-")
    return BootFiles(kernels[-1], rootfs / "boot" / f"initrd.img-{version}", image_key("vm"))


def root_image(images_dir: Path) -> Path:
    """The VM image as a raw ext4 disk in images_dir (in the pool, so VMs reflink it),
    made once per image key; concurrent callers wait for one build."""
    key = image_key("vm")
    final = images_dir / f"{key}.img"
    if final.exists():
        return final
    images_dir.mkdir(parents=True, exist_ok=True)
    rootfs = ensure_image("vm")
    with open(images_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.exists():
            return final
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".img", dir=images_dir)
        os.close(fd)
        try:
            with open(tmp, "wb") as f:
                f.truncate(ROOT_SIZE)
            run(["mkfs.ext4", "-q", "-F", "-L", "frostpoint-root", "-d", str(rootfs), tmp])
            os.rename(tmp, final)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return final


def write_files(image: Path, files: dict[str, tuple[bytes, int]]) -> None:
    """Write files (guest path -> (data, mode)) into a stopped guest's root disk with
    debugfs: nothing of the guest's filesystem is mounted on the host, and a link the
    guest planted resolves inside its own filesystem, never on the host."""
    with tempfile.TemporaryDirectory(prefix="fp-guestfiles-") as tmp:
        cmds = []
        for i, (path, (data, mode)) in enumerate(sorted(files.items())):
            src = Path(tmp) / str(i)
            src.write_bytes(data)
            parent = str(Path(path).parent)
            cmds += [f"mkdir {parent}", f"rm {path}", f"write {src} {path}",
                     f"sif {path} mode 0{0o100000 | mode:o}", f"sif {path} uid 0",
                     f"sif {path} gid 0"]
        subprocess.run(["debugfs", "-w", "-f", "-", str(image)], input="\n".join(cmds).encode(),
                       capture_output=True, check=True, timeout=60)


def read_file(image: Path, path: str, limit: int = 1 << 20) -> bytes | None:
    """A file of a stopped guest's root disk (debugfs cat, bounded), or None."""
    p = subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True,
                       timeout=60)
    if p.returncode != 0 or b"File not found" in p.stderr:
        return None
    return p.stdout[:limit]
