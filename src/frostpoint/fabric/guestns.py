"""Host-side entry into a sandbox machine: pivot its root, start its PID 1, run a
command in it, thaw or unmount its disks.

Run as a script by the host's system python3 (`/usr/bin/python3 -I guestns.py ...`),
which has Debian's libseccomp binding (python3-seccomp). It imports only the standard
library and seccomp, all before it enters a machine: once it has joined a machine's
mount namespace, the files it would load are the guest's, which the guest controls.
For the same reason nothing here executes a guest program before the process is
restricted as the guest is (see restrict()): a program's dynamic loader reads the
guest's writable /etc (ld.so.preload), so a host process with full capabilities must
never exec there.

A restricted process keeps only the capabilities in KEEP: not CAP_SYS_ADMIN. FIFREEZE
and FITHAW, which ask for it, go to the machine's freeze broker (fabric/freezebroker.py)
as seccomp user notifications; the broker does them on the machine's own disks only.
Each restricted process sends its filter's listener to the broker before it executes
anything (restrict()). seccomp also denies mount, namespaces, modules, kexec, bpf,
ptrace and the like, whatever capability a future change would give back.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import json
import os
import signal
import socket
import stat
import sys

import seccomp

libc = ctypes.CDLL(None, use_errno=True)

CLONE_NEWTIME, CLONE_NEWNS, CLONE_NEWCGROUP = 0x80, 0x20000, 0x2000000
CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER = 0x4000000, 0x8000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
NS_FLAGS = (CLONE_NEWTIME, CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC,
            CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC = 32, 4096, 16384
MNT_DETACH, UMOUNT_NOFOLLOW = 2, 8
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
SYS_PIVOT_ROOT = 155  # x86_64
FIFREEZE, FITHAW = 0xC0045877, 0xC0045878  # _IOWR('X', 119/120, int)
TIOCSTI = 0x5412

# Capabilities a guest keeps (linux/capability.h numbers): a container's usual set and
# CAP_NET_ADMIN for its own network namespace's firewall. Dropped among others:
# CAP_SYS_ADMIN (FIFREEZE of any filesystem it can open a file on, the host's root
# included: the freeze broker does its freezes), CAP_MKNOD (device nodes of host disks),
# CAP_DAC_READ_SEARCH (open_by_handle_at escapes), CAP_SYS_MODULE, CAP_SYS_RAWIO,
# CAP_SYS_PTRACE, CAP_SYS_BOOT, CAP_SYS_TIME, CAP_NET_RAW, CAP_BPF, CAP_PERFMON.
KEEP = {0: "CHOWN", 1: "DAC_OVERRIDE", 3: "FOWNER", 4: "FSETID", 5: "KILL",
        6: "SETGID", 7: "SETUID", 8: "SETPCAP", 10: "NET_BIND_SERVICE", 12: "NET_ADMIN",
        18: "SYS_CHROOT", 29: "AUDIT_WRITE", 31: "SETFCAP"}
# Denied with EPERM whatever the arguments.
DENY = ("mount", "umount2", "pivot_root", "setns", "unshare", "chroot",
        "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree",
        "mount_setattr", "init_module", "finit_module", "delete_module", "kexec_load",
        "kexec_file_load", "bpf", "perf_event_open", "ptrace", "process_vm_readv",
        "process_vm_writev", "open_by_handle_at", "name_to_handle_at", "swapon",
        "swapoff", "reboot", "syslog", "acct", "add_key", "keyctl", "request_key",
        "iopl", "ioperm", "lookup_dcookie", "userfaultfd", "settimeofday",
        "clock_settime", "clock_adjtime", "adjtimex", "uselib", "vhangup", "quotactl",
        "quotactl_fd", "io_uring_setup", "io_uring_enter", "io_uring_register",
        "fanotify_init", "kcmp", "pidfd_getfd", "personality")
# Syscalls newer than the names above (x86_64 numbers from 435, clone3, up): the kernel
# adds some each release, and a deny-list misses them (Linux 6.15's open_tree_attr
# cloned the guest's read-only root and /proc writable). Each one is denied as if the
# kernel were older (ENOSYS: libc falls back), unless it is known harmless here; the
# mount-table readers are refused outright (they list the host's and other machines'
# mounts by id).
NEW_SYSCALLS = range(436, 600)
NEW_HARMLESS = {436: "close_range", 437: "openat2", 439: "faccessat2", 441: "epoll_pwait2",
                444: "landlock_create_ruleset", 445: "landlock_add_rule",
                446: "landlock_restrict_self", 449: "futex_waitv", 451: "cachestat",
                452: "fchmodat2", 454: "futex_wake", 455: "futex_wait", 456: "futex_requeue",
                462: "mseal", 463: "setxattrat", 464: "getxattrat", 465: "listxattrat",
                466: "removexattrat", 468: "file_getattr", 469: "file_setattr"}
NEW_REFUSED = {457: "statmount", 458: "listmount", 467: "open_tree_attr"}
GUEST_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "HOME": "/root", "LANG": "C.UTF-8"}
# In the guest's /proc: read-only folders, and files hidden behind /dev/null (the
# kernel's memory, keyrings, and sysrq-trigger, which would reboot the host).
PROC_READONLY = ("sys", "irq", "bus", "fs", "acpi", "scsi", "sysrq-trigger")
PROC_HIDDEN = ("kcore", "kmsg", "keys", "timer_list", "sched_debug", "kallsyms",
               "latency_stats", "key-users")


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def setns(fd: int, nstype: int) -> None:
    _check(libc.setns(fd, nstype), "setns")


def unshare(flags: int) -> None:
    _check(libc.unshare(flags), "unshare")


def mount(src: str | None, target: str, fstype: str | None, flags: int,
          data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return s.encode() if s is not None else None

    _check(libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags),
                      enc(data)), f"mount {target}")


def umount(target: str, flags: int = 0) -> None:
    _check(libc.umount2(target.encode(), flags), f"umount {target}")


def prctl(option: int, arg: int = 0) -> None:
    _check(libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), f"prctl {option}")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _seccomp_filter() -> seccomp.SyscallFilter:
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    named: set[int] = set()
    for name in DENY:
        try:
            f.add_rule(seccomp.ERRNO(errno.EPERM), name)
            named.add(seccomp.resolve_syscall(seccomp.Arch.NATIVE, name))
        except (RuntimeError, ValueError):  # not a syscall on this kernel/arch
            pass
    for nr in NEW_SYSCALLS:
        if nr in named:  # denied by name above (mount_setattr, pidfd_getfd, ...)
            continue
        if nr in NEW_REFUSED:
            f.add_rule(seccomp.ERRNO(errno.EPERM), nr)
        elif nr not in NEW_HARMLESS:
            f.add_rule(seccomp.ERRNO(errno.ENOSYS), nr)
    # clone3 passes its flags in memory seccomp cannot read: make libc fall back to
    # clone, whose flags it can.
    f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    for flag in NS_FLAGS:
        f.add_rule(seccomp.ERRNO(errno.EPERM), "clone",
                   seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    f.add_rule(seccomp.ERRNO(errno.EPERM), "ioctl",
               seccomp.Arg(1, seccomp.MASKED_EQ, 0xFFFFFFFF, TIOCSTI))
    for cmd in (FIFREEZE, FITHAW):  # the freeze broker's to decide (module docstring)
        f.add_rule(seccomp.NOTIFY, "ioctl", seccomp.Arg(1, seccomp.MASKED_EQ, 0xFFFFFFFF, cmd))
    return f


def connect_broker(path: str) -> socket.socket | None:
    """The machine's freeze broker, reached from the host's tree (before setns)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.connect(path)
        return s
    except OSError:  # freezes in this process then fail (ENOSYS), nothing hangs
        s.close()
        return None


def restrict(broker: socket.socket | None) -> None:
    """Make this process as powerless as the guest: only the KEEP capabilities (for
    it and whatever it executes), no new privileges, the seccomp filter, whose
    listener goes to the freeze broker and is not kept here."""
    # Not dumpable (PID 1 for good, an exec until its execve): else the guest could write
    # its memory (/proc/PID/mem) before the filter loads, or make PID 1 exit.
    prctl(PR_SET_DUMPABLE, 0)
    for cap in range(LAST_CAP + 1):
        if cap not in KEEP:
            prctl(PR_CAPBSET_DROP, cap)
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    mask = sum(1 << c for c in KEEP)
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)(_CapData(mask, mask, 0), _CapData(0, 0, 0))
    _check(libc.capset(ctypes.byref(header), data), "capset")
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    FILTER.load()
    listener = FILTER.get_notify_fd()
    try:
        if broker is not None:
            socket.send_fds(broker, [b"L"], [listener])
    except OSError:
        pass
    finally:
        os.close(listener)
        if broker is not None:
            broker.close()


def _bind_ro(path: str) -> None:
    mount(path, path, None, MS_BIND | MS_REC)
    mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
          | MS_NOEXEC)


def _mount_proc() -> None:
    """The guest's own /proc (of its PID namespace), with the host-wide knobs in it
    read-only or hidden: CAP_SYS_ADMIN could write /proc/sys/kernel/core_pattern."""
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name in PROC_READONLY:
        if os.path.exists(f"/proc/{name}"):
            _bind_ro(f"/proc/{name}")
    for name in PROC_HIDDEN:
        if os.path.exists(f"/proc/{name}"):
            mount("/dev/null", f"/proc/{name}", None, MS_BIND)


def _enter_mounts(mntns: str, cwd: str) -> None:
    """Join the machine's mount namespace only, and stand at cwd in it (a cwd left in
    the host's tree would be a way back to it)."""
    setns(os.open(mntns, os.O_RDONLY | os.O_CLOEXEC), CLONE_NEWNS)
    os.chdir(cwd)


# -- commands ---------------------------------------------------------------------
def cmd_pivot(args: argparse.Namespace) -> int:
    """Make NEWROOT the root of the machine's mount namespace, and drop the host's."""
    _enter_mounts(args.mntns, args.newroot)
    _check(libc.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
    umount(".", MNT_DETACH)  # the old root, stacked under the new one
    os.chdir("/")
    return 0


def _reap(shutting: bool) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # no process left in the machine
            if shutting:
                os._exit(0)
            return
        if pid == 0:
            return


def _pid1(argv: list[str]) -> None:
    """PID 1 of the machine: start the guest's init, reap orphans. SIGTERM from the
    host (sender pid 0: outside this PID namespace) goes on to every process of the
    machine, and PID 1 ends when they have; signals from inside are ignored, as a real
    init ignores them (the guest's own `kill` or pattern matching cannot power it off)."""
    sigs = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    child = os.fork()
    if child == 0:
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        os.setsid()
        try:
            os.execvpe(argv[0], argv, GUEST_ENV)
        finally:
            os._exit(127)
    shutting = False
    while True:
        info = signal.sigwaitinfo(sigs)
        if info.si_signo != signal.SIGCHLD and info.si_pid == 0 and not shutting:
            shutting = True
            try:
                os.kill(-1, signal.SIGTERM)
            except OSError:
                pass
        _reap(shutting)


def cmd_init(args: argparse.Namespace) -> int:
    """Start the machine's PID 1 in new PID, UTS and IPC namespaces; print its host pid."""
    # The guest's init command comes in the environment, not on PID 1's command line,
    # where the agent's own process matching (`frostpoint-agent restart`) would see it.
    guest_init = json.loads(os.environ["FROSTPOINT_GUEST_INIT"])
    net, mnt = (os.open(p, os.O_RDONLY | os.O_CLOEXEC) for p in (args.netns, args.mntns))
    broker = connect_broker(args.broker)
    if broker is None:
        print(f"machine init failed: no freeze broker at {args.broker}", file=sys.stderr)
        return 1
    unshare(CLONE_NEWPID)  # for the child: it is PID 1 there
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            setns(net, CLONE_NEWNET)
            setns(mnt, CLONE_NEWNS)
            os.chdir("/")
            unshare(CLONE_NEWUTS | CLONE_NEWIPC)
            name = args.hostname.encode()
            _check(libc.sethostname(name, len(name)), "sethostname")
            _mount_proc()
            os.dup2(args.log_fd, 1)
            os.dup2(args.log_fd, 2)
            devnull = os.open("/dev/null", os.O_RDWR)
            os.dup2(devnull, 0)
            keep = sorted({w, broker.fileno()})  # nothing else of the host stays open
            os.closerange(3, keep[0])
            os.closerange(keep[0] + 1, keep[1])
            os.closerange(keep[1] + 1, 1 << 16)
            restrict(broker)
            os.write(w, b"ok")
        except BaseException as e:  # noqa: BLE001 - the parent says what failed
            os.write(w, f"{type(e).__name__}: {e}".encode())
            os._exit(1)
        os.close(w)
        _pid1(guest_init)
    os.close(w)
    broker.close()
    msg = os.read(r, 4096)
    if msg != b"ok":
        os.waitpid(pid, 0)
        print(f"machine init failed: {msg.decode(errors='replace')}", file=sys.stderr)
        return 1
    print(pid)
    return 0


def _same_ns(fd: int, path: str) -> bool:
    a, b = os.fstat(fd), os.stat(path)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def cmd_exec(args: argparse.Namespace) -> int:
    """Run ARGV in the machine: all its namespaces, restricted as the guest is."""
    try:
        proc = os.open(f"/proc/{args.pid}", os.O_RDONLY | os.O_DIRECTORY)
        fds = {t: os.open(f"ns/{n}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc)
               for n, t in (("net", CLONE_NEWNET), ("uts", CLONE_NEWUTS),
                            ("ipc", CLONE_NEWIPC), ("pid", CLONE_NEWPID),
                            ("mnt", CLONE_NEWNS))}
        # The pid may have been reused: it must be the init of this machine.
        if not (_same_ns(fds[CLONE_NEWNET], args.netns)
                and _same_ns(fds[CLONE_NEWNS], args.mntns)):
            raise ProcessLookupError
    except (ProcessLookupError, FileNotFoundError):
        print("the machine is not running", file=sys.stderr)
        return 125
    broker = connect_broker(args.broker)
    for t in (CLONE_NEWNET, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNS):
        setns(fds[t], t)
        os.close(fds[t])
    os.close(proc)
    os.chdir("/")
    child = os.fork()
    if child == 0:
        try:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # a timed-out exec ends with us
            restrict(broker)
            os.execvpe(args.argv[0], args.argv, GUEST_ENV)
        except OSError as e:
            os.write(2, f"{args.argv[0]}: {e.strerror}\n".encode())
            os._exit(127 if e.errno == errno.ENOENT else 126)
        os._exit(127)

    def forward(sig: int, _frame: object) -> None:
        os.kill(child, sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    if broker is not None:
        broker.close()
    _, status = os.waitpid(child, 0)
    if os.WIFSIGNALED(status):  # die of the same signal: the caller sees -SIG, as if
        died = os.WTERMSIG(status)  # it had run the command itself
        prctl(PR_SET_DUMPABLE, 0)  # no core file of ours
        if died not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(died, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {died})
        os.kill(os.getpid(), died)
        return 128 + died
    return os.waitstatus_to_exitcode(status)


def _guest_dirs(top: str) -> list[str]:
    """top and the folders in it, opened without following a symlink the guest made."""
    out = [top]
    try:
        for e in os.scandir(top):
            if e.is_dir(follow_symlinks=False):
                out.append(e.path)
                out += _guest_dirs(e.path) if e.name == ".disks" else []
    except OSError:
        pass
    return out


def cmd_thaw(args: argparse.Namespace) -> int:
    """FITHAW every filesystem mounted under /mnt in the machine (errors ignored)."""
    _enter_mounts(args.mntns, "/")
    for path in _guest_dirs("/mnt"):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.ioctl(fd, FITHAW, 0)
        except OSError:
            pass
        finally:
            os.close(fd)
    return 0


def cmd_umount(args: argparse.Namespace) -> int:
    """Unmount the given paths in the machine (thawed first); --rmdir removes them."""
    _enter_mounts(args.mntns, "/")
    failed = 0
    for path in args.paths:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                fcntl.ioctl(fd, FITHAW, 0)
            except OSError:
                pass
            os.close(fd)
            umount(path, UMOUNT_NOFOLLOW)
        except OSError as e:
            if e.errno != errno.EINVAL:  # EINVAL: not mounted
                print(e, file=sys.stderr)
                failed = 1
        if args.rmdir:
            try:
                os.rmdir(path)
            except OSError:
                pass
    return failed


def cmd_remount(args: argparse.Namespace) -> int:
    """Change one mount's exec/noexec in the machine (the doctor's remedy)."""
    _enter_mounts(args.mntns, "/")
    st = os.statvfs(args.path)
    flags = MS_REMOUNT | MS_BIND
    for bit, flag in ((os.ST_RDONLY, MS_RDONLY), (os.ST_NOSUID, MS_NOSUID),
                      (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC)):
        if st.f_flag & bit:
            flags |= flag
    flags = flags | MS_NOEXEC if args.option == "noexec" else flags & ~MS_NOEXEC
    mount(None, args.path, None, flags)
    return 0


# Both read and built before any namespace is entered (the host's /proc, no file of
# the guest's).
with open("/proc/sys/kernel/cap_last_cap", "rb") as _f:
    LAST_CAP = int(_f.read())
FILTER = _seccomp_filter()


def main() -> int:
    p = argparse.ArgumentParser(prog="guestns")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pivot")
    a.add_argument("--mntns", required=True)
    a.add_argument("newroot")
    a = sub.add_parser("init")
    for opt in ("--netns", "--mntns", "--hostname", "--broker"):
        a.add_argument(opt, required=True)
    a.add_argument("--log-fd", type=int, required=True)
    a = sub.add_parser("exec")
    for opt in ("--netns", "--mntns", "--broker"):
        a.add_argument(opt, required=True)
    a.add_argument("--pid", type=int, required=True)
    a.add_argument("argv", nargs="+")
    a = sub.add_parser("thaw")
    a.add_argument("--mntns", required=True)
    a = sub.add_parser("umount")
    a.add_argument("--mntns", required=True)
    a.add_argument("--rmdir", action="store_true")
    a.add_argument("paths", nargs="+")
    a = sub.add_parser("remount")
    a.add_argument("--mntns", required=True)
    a.add_argument("path")
    a.add_argument("option", choices=("exec", "noexec"))
    args = p.parse_args()
    return {"pivot": cmd_pivot, "init": cmd_init, "exec": cmd_exec, "thaw": cmd_thaw,
            "umount": cmd_umount, "remount": cmd_remount}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
