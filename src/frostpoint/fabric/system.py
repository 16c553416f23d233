"""Running host commands and entering namespaces, with errors that say what failed."""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

from frostpoint.errors.catalog import FrostpointError

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
# fabric/guestns.py runs on the host's system python3, which has Debian's libseccomp
# binding (python3-seccomp); -I: nothing from the environment or the current folder.
SYSTEM_PYTHON = "/usr/bin/python3"
GUESTNS = Path(__file__).with_name("guestns.py")
FREEZEBROKER = Path(__file__).with_name("freezebroker.py")


def guest_helper(*args: str) -> list[str]:
    """The command line of a fabric/guestns.py command (enter a machine, restricted)."""
    return [SYSTEM_PYTHON, "-I", str(GUESTNS), *args]


def freeze_broker(socket_path: Path, disks_dir: Path) -> list[str]:
    """The command line of a machine's freeze broker (fabric/freezebroker.py)."""
    return [SYSTEM_PYTHON, "-I", str(FREEZEBROKER), "--socket", str(socket_path),
            "--disks-dir", str(disks_dir)]


def stop_process(pid_file: Path, marker: str) -> None:
    """End the process named in pid_file if it is still the one (its command line
    holds marker: a pid is reused), and remove the file."""
    try:
        pid = int(pid_file.read_text())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if marker.encode() in f.read():
                os.kill(pid, 9)
    except (OSError, ValueError):
        pass
    pid_file.unlink(missing_ok=True)


def run(cmd: Sequence[str], check: bool = True, input: bytes | None = None,
        timeout: float = 120, pass_fds: Sequence[int] = (),
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(list(cmd), input=input, capture_output=True, timeout=timeout,
                          pass_fds=pass_fds, env=env)
    if check and proc.returncode != 0:
        raise FrostpointError(
            "BackUpOperationFailed", f"host command failed: {' '.join(cmd)}",
            {"returncode": proc.returncode,
             "stderr": proc.stderr.decode(errors="replace")[-2000:]})
    return proc


def loop_devices() -> list[tuple[str, str]]:
    """(device, backing file) of every attached loop device; a deleted backing file
    keeps its path, without the " (deleted)" suffix."""
    out = run(["losetup", "-l", "-n", "-O", "NAME,BACK-FILE"], check=False).stdout.decode()
    pairs = (line.split(None, 1) for line in out.splitlines())
    return [(p[0], p[1].strip().removesuffix(" (deleted)")) for p in pairs if len(p) == 2]


def thaw_machine_disks(mntns: str | os.PathLike[str]) -> None:
    """Thaw every disk mounted under /mnt in a machine's mount namespace.

    Done before killing the machine's processes: a writer blocked on a frozen
    filesystem cannot die, and would keep the namespace, mount and loop device alive.
    """
    # FITHAW from a host process in the namespace: a guest program run by the host
    # with full capabilities could be made to do anything (the guest writes its /etc).
    run(guest_helper("thaw", "--mntns", str(mntns)), check=False)


def is_mountpoint(path: str | os.PathLike[str]) -> bool:
    """True if something is mounted at path (bind mounts too, unlike os.path.ismount)."""
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == target:
                return True
    return False


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def bind_in_netns(netns: str, host: str, port: int) -> socket.socket:
    """A listening TCP socket that lives in another network namespace.

    setns() moves only the calling thread; a socket keeps the namespace it was made
    in, so the service can serve the fabric address without a helper process.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(1024)
            sock.setblocking(False)
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)
    return sock
