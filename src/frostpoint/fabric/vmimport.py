"""A user's own disk images brought into the pool as a VM's disks (`frostpoint vm
import`): raw or qcow2, converted by qemu-img into a raw image in the pool, so they are
snapshotted, backed up and restored like any disk made here.

The path is the admin's (the route needs admin), read by the service as root: so only
raw and qcow2 are taken (qemu-img is told the format it found, never left to guess a
raw file's header later), a qcow2 with a backing file is refused (its header would
name another host file to read), and the disk must hold ext4 or xfs on the whole disk,
the way the guest mounts data disks (/mnt/NAME) and the host restores files from them.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

from frostpoint.errors.catalog import FrostpointError

FORMATS = ("raw", "qcow2")
FILESYSTEMS = ("ext4", "xfs")
PROBE = 1 << 20  # the first MiB holds an ext4 or xfs superblock


def _qemu_img(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["qemu-img", *args], capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _bad(path: Path, why: str) -> FrostpointError:
    return FrostpointError("InvalidInput", f"cannot import {path}: {why}")


def inspect(path: Path) -> tuple[str, int, str]:
    """(format, size in bytes, filesystem) of an image to import, or InvalidInput."""
    if not path.is_absolute() or not path.is_file():
        raise _bad(path, "not an absolute path to a file")
    p = _qemu_img("info", "--output=json", str(path))
    if p.returncode:
        raise _bad(path, p.stderr.decode(errors="replace").strip()[-300:])
    info = json.loads(p.stdout)
    fmt = str(info.get("format"))
    if fmt not in FORMATS:
        raise _bad(path, f"its format is {fmt}; raw or qcow2 are imported")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise _bad(path, "a qcow2 with a backing file; `qemu-img convert` it to one "
                         "without first")
    size = int(info["virtual-size"])
    with tempfile.TemporaryDirectory(prefix="fp-import-") as tmp:
        head = Path(tmp) / "head"
        p = _qemu_img("dd", "-f", fmt, "-O", "raw", f"bs={PROBE}", "count=1",
                      f"if={path}", f"of={head}")
        if p.returncode:
            raise _bad(path, p.stderr.decode(errors="replace").strip()[-300:])
        fs = subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", str(head)],
                            capture_output=True, text=True, timeout=30).stdout.strip()
    if fs not in FILESYSTEMS:
        raise _bad(path, f"it holds {fs or 'no filesystem blkid knows'}; a data disk holds "
                         "ext4 or xfs on the whole disk (no partition table)")
    return fmt, size, fs


def convert(source: Path, image: Path) -> None:
    """The image as a raw disk at image (sparse), in the format inspect() found."""
    fmt, _, _ = inspect(source)
    image.parent.mkdir(parents=True, exist_ok=True)
    p = _qemu_img("convert", "-f", fmt, "-O", "raw", "-S", "4k", str(source), str(image),
                  timeout=3600)
    if p.returncode:
        image.unlink(missing_ok=True)
        raise _bad(source, p.stderr.decode(errors="replace").strip()[-300:])
