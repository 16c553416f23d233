"""Thawing a machine's disks from the host, when nobody in the machine is left to.

A freeze is ended by the guest's freeze watchdog. When every process of the machine
dies while its filesystems are frozen (kill -9, an OOM kill of everything), the
filesystems stay frozen: a frozen superblock holds itself alive, and a writer in the
guest blocks until someone thaws it. The fabric does, from the host, without following
any path the guest controls: it finds the loop device of the disk image it owns (host
state), mounts that device in a private, throw-away mount namespace of its own (the
kernel hands back the same superblock the guest has mounted, frozen) and thaws it
through that mount (FITHAW, via fsfreeze -u). The guest's view is not touched.
"""

from __future__ import annotations

import logging
from pathlib import Path

from frostpoint.fabric.system import loop_devices, run

log = logging.getLogger("frostpoint.fabric")

# nouuid (xfs): a restored copy of a disk shares its UUID; ignored when the kernel
# hands back the superblock the guest has mounted.
_THAW = ('mount -t "$1" $4 "$2" "$3" || exit 3; '
         'if fsfreeze -u "$3" 2>/dev/null; then r=0; else r=4; fi; umount "$3"; exit $r')


def thaw_disks_from_host(work_dir: Path, disks: list[tuple[str, str, Path]]) -> list[str]:
    """Thaw each (name, filesystem, image) that is frozen; returns the names thawed.

    A disk that is not frozen is left as it is (fsfreeze -u says EINVAL); a disk whose
    image has no loop device is not mounted anywhere, so not frozen either."""
    attached = {backing: device for device, backing in loop_devices()}
    thawed = []
    for name, filesystem, image in disks:
        device = attached.get(str(image))
        if device is None or filesystem not in ("ext4", "xfs"):
            continue
        target = work_dir / name
        target.mkdir(parents=True, exist_ok=True)
        # The mount lives only in the namespace of this one command: nothing on the
        # host or in the guest ever sees it, and it goes when the command ends.
        r = run(["unshare", "--mount", "--propagation", "private", "sh", "-c", _THAW,
                 "sh", filesystem, device, str(target),
                 "-onouuid" if filesystem == "xfs" else ""], check=False, timeout=30)
        if r.returncode == 0:
            thawed.append(name)
        elif r.returncode == 3:
            log.warning("host thaw: could not mount %s of disk %s: %s", device, name,
                        r.stderr.decode(errors="replace")[-300:])
    return thawed
