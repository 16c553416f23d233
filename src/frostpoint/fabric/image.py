"""The guest image: a Debian root filesystem every sandbox machine boots from.

Built once per host with mmdebstrap (variant minbase, python3 and the tools a guest
uses) with the frostpoint-agent package of this repository installed, and kept as a
directory tree under a host-wide cache, /var/cache/frostpoint/images/KEY/rootfs (or
$FROSTPOINT_IMAGE_CACHE). KEY hashes the recipe and the agent package's contents, so a
changed agent (a new release, or a code change in development) builds a new image,
and every service and data dir on the host shares one build. A lock makes concurrent
services wait for one build instead of running several.

Sandbox machines mount it read-only (see fabric/sandbox.py); QEMU guests boot a raw
ext4 disk made from the "vm" flavour of it (fabric/vmdisk.py, docs/machines.md).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from frostpoint.errors.catalog import FrostpointError
from frostpoint.fabric import guestnet
from frostpoint.fabric.packages import agent_package_digest, build_agent_deb

# Debian 13: its python3 (3.13) has what the guest code uses (tarfile's extraction
# filters, which bookworm's 3.11.2 lacks); packages.GUEST_PYTHON vendors for it.
SUITE = "trixie"
# fsfreeze, nsenter and mount tools (util-linux), ps (procps), ip (iproute2), the guest
# firewall a user may set up (iptables), curl, ext4 tools for the guest's own disks,
# and a VM's DHCP client (ifupdown runs ISC dhclient, whose lease records the fabric
# address: fabric/guestnet.py).
INCLUDE = ("python3", "util-linux", "procps", "iproute2", "iptables", "curl", "e2fsprogs",
           "ca-certificates", "ifupdown", "isc-dhcp-client")
RECIPE = (f"mmdebstrap --variant=minbase {SUITE} include={','.join(INCLUDE)} v1 "
          f"net {guestnet.digest()}")
# A QEMU guest (fabric/qemu.py) boots a real kernel with systemd: the same tree plus an
# init, udev (virtio disks and ports by name), the kernel it boots (its modules match)
# and nftables (a guest's own firewall). Its frostpoint units are enabled in it.
VM_INCLUDE = ("systemd-sysv", "udev", "kmod", "linux-image-cloud-amd64", "nftables")
VM_UNITS = ("frostpoint-guest-setup.service", "frostpoint-channel.service",
            "frostpoint-agent.service")
FLAVOURS = {"sandbox": INCLUDE, "vm": INCLUDE + VM_INCLUDE}
DEFAULT_CACHE = Path("/var/cache/frostpoint/images")
HOST_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")


def _sources(work: Path) -> list[str]:
    """The host's Debian mirrors (the ones reachable from here) for the guest's suite:
    the host's deb822 sources with its release's codename replaced."""
    if not HOST_SOURCES.exists():
        return []  # mmdebstrap's default mirror
    codename = ""
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            codename = line.split("=", 1)[1].strip('"')
    text = HOST_SOURCES.read_text()
    if codename:
        text = re.sub(rf"\b{re.escape(codename)}\b", SUITE, text)
    out = work / "guest.sources"
    out.write_text(text)
    return [str(out)]


def cache_root() -> Path:
    return Path(os.environ.get("FROSTPOINT_IMAGE_CACHE", DEFAULT_CACHE))


def image_key(flavour: str = "sandbox") -> str:
    recipe = RECIPE if flavour == "sandbox" else f"{RECIPE} {flavour} {FLAVOURS[flavour]} v1"
    return hashlib.sha256(f"{recipe}\n{agent_package_digest()}".encode()).hexdigest()[:24]


def ensure_image(flavour: str = "sandbox") -> Path:
    """The rootfs directory of the current image, built first if this host has none.
    flavour "vm": the QEMU guest's tree (VM_INCLUDE)."""
    root = cache_root()
    final = root / image_key(flavour)
    if (final / "rootfs" / "usr" / "bin" / "frostpoint-agent").exists():
        return final / "rootfs"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another service may be building it
        if not (final / "rootfs" / "usr" / "bin" / "frostpoint-agent").exists():
            _build(final, flavour)
    return final / "rootfs"


def _build(final: Path, flavour: str) -> None:
    if shutil.which("mmdebstrap") is None:
        raise FrostpointError("UserErrorCrpReportedUserError",
                              "mmdebstrap is missing: run scripts/install-system-packages")
    work = Path(tempfile.mkdtemp(prefix=f"{final.name}.", dir=final.parent))
    try:
        deb = build_agent_deb(work / "frostpoint-agent.deb")
        mirror = _sources(work)
        hooks = [f"--customize-hook=copy-in {deb} /tmp",
                 f"--customize-hook=chroot \"$1\" dpkg -i /tmp/{deb.name}",
                 f"--customize-hook=rm -f \"$1/tmp/{deb.name}\""]
        if flavour == "vm":
            hooks.append(f"--customize-hook=chroot \"$1\" systemctl enable {' '.join(VM_UNITS)}")
        cmd = ["mmdebstrap", "--variant=minbase", "--mode=root", "--quiet",
               f"--include={','.join(FLAVOURS[flavour])}", *hooks,
               SUITE, str(work / "rootfs"), *mirror]
        p = subprocess.run(cmd, capture_output=True, timeout=900, stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            raise FrostpointError("UserErrorCrpReportedUserError",
                                  "could not build the guest image (mmdebstrap failed)",
                                  {"stderr": p.stderr.decode(errors="replace")[-2000:]})
        deb.unlink()
        guestnet.install(work / "rootfs")
        for f in mirror:
            Path(f).unlink()
        shutil.rmtree(final, ignore_errors=True)
        os.rename(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    import sys
    print(ensure_image(*sys.argv[1:2]))


if __name__ == "__main__":
    main()
