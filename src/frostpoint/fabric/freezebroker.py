"""The freeze broker: a machine's FIFREEZE and FITHAW, done by the host on its own
disks only.

A guest has no CAP_SYS_ADMIN. FIFREEZE asks for it in the filesystem's user namespace
(the host's: ioctl_fsfreeze), and it works on whatever filesystem the file is on, so a
guest holding it could freeze the host's root through its own `/`. Instead, the
guest's seccomp filter (fabric/guestns.py) hands every FIFREEZE and FITHAW to this
process as a user notification (seccomp_unotify(2)). The broker takes the file the
guest named (pidfd_getfd), does the ioctl itself if that file is on one of the
machine's disks (a loop device whose backing file is in the machine's disk folder),
and answers EPERM otherwise. The guest's `fsfreeze` and the extension see an ordinary
ioctl.

One broker per machine, started by the sandbox before the machine's PID 1 and ended
after its last process: `python3 -I freezebroker.py --socket S --disks-dir D`. Each
restricted process (the machine's PID 1, every `vm exec`) sends its filter's listener
over the socket, from the host side, before it executes anything; the guest never
holds the socket or a listener. If the broker is gone, the kernel answers ENOSYS: a
freeze fails at once, it never hangs.

Run by the host's system python3 with the standard library only, like guestns.py.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import os
import select
import signal
import socket
import struct
import sys
import threading

libc = ctypes.CDLL(None, use_errno=True)

FIFREEZE, FITHAW = 0xC0045877, 0xC0045878
SYS_IOCTL, SYS_PIDFD_GETFD = 16, 438  # x86_64
PIDFD_THREAD = os.O_EXCL  # linux/pidfd.h
# linux/seccomp.h: struct seccomp_notif is 80 bytes, seccomp_notif_resp 24.
NOTIF = struct.Struct("=QIIiIQ6Q")  # id, pid, flags, data.nr, data.arch, data.ip, args
RESP = struct.Struct("=QqiI")  # id, val, error, flags
NOTIF_RECV, NOTIF_SEND, NOTIF_ID_VALID = 0xC0502100, 0xC0182101, 0x40082102
LISTENER_LINK = "anon_inode:seccomp notify"
MAX_LISTENERS = 256  # one per PID 1 and per running `vm exec`


def _id_valid(listener: int, notif_id: int) -> bool:
    try:
        fcntl.ioctl(listener, NOTIF_ID_VALID, struct.pack("=Q", notif_id))
        return True
    except OSError:
        return False


def _respond(listener: int, notif_id: int, err: int) -> None:
    try:
        fcntl.ioctl(listener, NOTIF_SEND, RESP.pack(notif_id, 0, -err, 0))
    except OSError:  # ENOENT: the process died or was interrupted meanwhile
        pass


def own_disk(fd: int, disks_dir: str) -> bool:
    """Is the open file on one of this machine's disks?"""
    st = os.fstat(fd)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    try:
        with open(f"/sys/dev/block/{dev}/loop/backing_file") as f:
            backing = f.read().strip().removesuffix(" (deleted)")
    except OSError:  # not a loop device: the image, a layer, tmpfs, proc, the host's
        return False
    return os.path.dirname(backing) == disks_dir


def handle(listener: int, notif: bytes, disks_dir: str) -> None:
    try:
        _handle(listener, notif, disks_dir)
    except Exception as e:  # noqa: BLE001 - the guest's call is answered whatever happens
        print(f"freeze broker: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        _respond(listener, NOTIF.unpack(notif)[0], errno.EIO)


def _handle(listener: int, notif: bytes, disks_dir: str) -> None:
    notif_id, pid, _flags, nr, _arch, _ip, *args = NOTIF.unpack(notif)
    cmd = args[1] & 0xFFFFFFFF
    if nr != SYS_IOCTL or cmd not in (FIFREEZE, FITHAW):
        _respond(listener, notif_id, errno.EPERM)
        return
    err = errno.EPERM
    try:
        pidfd = _pidfd(pid)
    except OSError as e:
        _respond(listener, notif_id, e.errno or errno.ESRCH)  # always answered: no hang
        return
    try:
        # The pid is the one that asked only while its notification is still pending.
        if _id_valid(listener, notif_id):
            err = _freeze_or_thaw(pidfd, args[0] & 0xFFFFFFFF, cmd, disks_dir)
    finally:
        os.close(pidfd)
    _respond(listener, notif_id, err)


def _pidfd(tid: int) -> int:
    """A pidfd of the thread that asked (the freezer asks from a thread of its own)."""
    try:
        return os.pidfd_open(tid, PIDFD_THREAD)
    except OSError as e:
        if e.errno != errno.EINVAL:  # a kernel before 6.9: the thread's process
            raise
    with open(f"/proc/{tid}/status") as f:
        tgid = next(int(ln.split()[1]) for ln in f if ln.startswith("Tgid:"))
    return os.pidfd_open(tgid)


def _freeze_or_thaw(pidfd: int, target_fd: int, cmd: int, disks_dir: str) -> int:
    fd = libc.syscall(SYS_PIDFD_GETFD, pidfd, ctypes.c_int(target_fd), 0)
    if fd < 0:
        return ctypes.get_errno()
    try:
        if not own_disk(fd, disks_dir):
            return errno.EPERM
        fcntl.ioctl(fd, cmd, 0)
        return 0
    except OSError as e:
        return e.errno or errno.EIO
    finally:
        os.close(fd)


def _accept_listener(conn: socket.socket) -> int | None:
    """The one listener a restricted process sends, if it is one."""
    try:
        _msg, fds, _flags, _addr = socket.recv_fds(conn, 16, 4)
    except OSError:
        return None
    finally:
        conn.close()
    keep = None
    for fd in fds:
        if keep is None and os.readlink(f"/proc/self/fd/{fd}") == LISTENER_LINK:
            keep = fd
        else:
            os.close(fd)
    return keep


def serve(sock_path: str, disks_dir: str) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = sock_path + ".new"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    server.bind(tmp)
    os.chmod(tmp, 0o600)
    server.listen(16)
    os.replace(tmp, sock_path)  # there only once it accepts
    ep = select.epoll()
    ep.register(server.fileno(), select.EPOLLIN)
    listeners: set[int] = set()
    while True:
        for fd, events in ep.poll():
            if fd == server.fileno():
                conn, _ = server.accept()
                got = _accept_listener(conn)
                if got is not None and len(listeners) >= MAX_LISTENERS:
                    os.close(got)
                elif got is not None:
                    ep.register(got, select.EPOLLIN)
                    listeners.add(got)
                continue
            if events & select.EPOLLHUP:  # no process uses this filter any more
                ep.unregister(fd)
                os.close(fd)
                listeners.discard(fd)
                continue
            buf = bytearray(NOTIF.size)  # the kernel wants it zeroed
            try:
                fcntl.ioctl(fd, NOTIF_RECV, buf)
            except OSError:  # ENOENT: the asking process was interrupted first
                continue
            # A freeze can take a while (it syncs); others of the machine go on.
            try:
                threading.Thread(target=handle, args=(fd, bytes(buf), disks_dir),
                                 daemon=True).start()
            except RuntimeError:  # no thread to be had (the guest's own doing): say so
                _respond(fd, NOTIF.unpack(bytes(buf))[0], errno.EAGAIN)


def main() -> int:
    p = argparse.ArgumentParser(prog="freezebroker")
    p.add_argument("--socket", required=True)
    p.add_argument("--disks-dir", required=True)
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    serve(args.socket, os.path.realpath(args.disks_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
