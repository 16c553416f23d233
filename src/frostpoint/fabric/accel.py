"""Which accelerator QEMU guests get on this host: KVM where it works, else TCG.

/dev/kvm being there proves little (under a nested hypervisor `-cpu host` aborts and
other CPU models hang at boot), so the first VM on a host makes a bounded probe boot:
the VM kernel under KVM with no root disk, which must reach its "cannot mount root"
panic within PROBE_S. The answer is cached per host kernel and QEMU binary in
/var/cache/frostpoint/accel.json (or beside $FROSTPOINT_IMAGE_CACHE).
FROSTPOINT_ACCEL=auto|kvm|tcg forces one (auto: the probe).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from frostpoint.errors.catalog import FrostpointError
from frostpoint.fabric.image import cache_root

PROBE_S = 20.0
QEMU = "qemu-system-x86_64"


@dataclass
class Accel:
    name: str  # "kvm" or "tcg"
    reason: str

    def qemu_args(self) -> list[str]:
        if self.name == "kvm":
            return ["-accel", "kvm", "-cpu", "host"]
        return ["-accel", "tcg"]


def _cache_file() -> Path:
    return cache_root().parent / "accel.json"


def _host_key() -> str:
    qemu = subprocess.run(["sh", "-c", f"command -v {QEMU}"], capture_output=True,
                          text=True).stdout.strip()
    st = os.stat(qemu) if qemu else None
    return f"{os.uname().release} {qemu} {st.st_mtime_ns if st else 0}"


def probe_kvm(kernel: Path) -> tuple[bool, str]:
    """Boot kernel under KVM without a root disk; it works if the kernel gets as far as
    looking for its root filesystem within PROBE_S."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not usable"
    cmd = [QEMU, "-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults",
           "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio",
           "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1 root=/dev/nonexistent"]
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=PROBE_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False, f"a KVM probe boot did not reach the kernel's root mount in {PROBE_S:g} s"
    out = p.stdout.decode(errors="replace")
    if "VFS:" in out or "Kernel panic" in out:
        return True, "a KVM probe boot reached the kernel's root mount"
    tail = (p.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
    return False, f"a KVM probe boot failed: {tail[:200]}"


def choose(kernel: Path) -> Accel:
    forced = os.environ.get("FROSTPOINT_ACCEL", "auto")
    if forced in ("kvm", "tcg"):
        return Accel(forced, f"FROSTPOINT_ACCEL={forced}")
    if forced != "auto":
        raise FrostpointError("InvalidInput", f"FROSTPOINT_ACCEL={forced!r}: use auto, kvm "
                              "or tcg")
    cache, key = _cache_file(), _host_key()
    try:
        cached = json.loads(cache.read_text())
        if cached.get("host") == key:
            return Accel(str(cached["accel"]), str(cached["reason"]) + " (cached)")
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    ok, reason = probe_kvm(kernel)
    accel = Accel("kvm" if ok else "tcg", reason)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"host": key, "accel": accel.name, "reason": reason}))
    os.replace(tmp, cache)
    return accel
