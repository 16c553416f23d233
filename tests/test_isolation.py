"""A guest sees only itself, and the host never follows a path the guest controls.

Every test here attacks from inside a machine (or plants something there for the host
to trip on) and checks that the host, and the other machine, are untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Service, needs_root, running_service
from frostpoint.cli.client import ApiError

pytestmark = needs_root
M, OTHER = "iso", "iso-other"


@pytest.fixture(scope="module")
def svc() -> Iterator[Service]:
    for s in running_service():
        c = s.client
        for name in (M, OTHER):
            c.post("/machines", {"name": name, "disks": [{"name": "data", "size": "64M"}]})
        s.wait_agent_ready(M)
        yield s


def _run(svc: Service, machine: str, argv: list[str]) -> dict[str, object]:
    return svc.client.post(f"/machines/{machine}/exec", {"argv": argv, "timeout": 60})


def _sh(svc: Service, script: str, machine: str = M) -> dict[str, object]:
    return _run(svc, machine, ["sh", "-c", script])


def test_host_and_other_machine_files_are_unreadable(svc: Service) -> None:
    host_tmp = Path(f"/tmp/fp-iso-{uuid.uuid4().hex}")
    host_tmp.write_text("host secret in /tmp\n")
    try:
        svc.client.post("/keyvaults", {"name": "isokv"})
        svc.client.post("/keyvaults/isokv/keys", {"name": "k1"})
        keys = sorted((svc.data_dir / "keys").glob("*.key"))
        assert keys, "a key vault has a key file on the host"
        other_token = svc.data_dir / "machines" / OTHER / "etc" / "agent.token"
        other_disk = next((svc.data_dir / "pool").rglob(f"{OTHER}/data.img"), None) or \
            next(p for p in (svc.data_dir / "pool").rglob("data.img") if OTHER in str(p))
        secrets = {
            svc.data_dir / "api-token": (svc.data_dir / "api-token").read_text().strip(),
            keys[0]: keys[0].read_bytes().hex(),
            other_token: other_token.read_text().strip(),
            other_disk: None,
            host_tmp: "host secret in /tmp",
        }
        server_pid = svc.proc.pid if svc.proc else 0
        for path, secret in secrets.items():
            for attempt in (str(path), f"/proc/{server_pid}/root{path}",
                            f"/proc/1/root{path}"):
                r = _run(svc, M, ["sh", "-c", f"xxd -l 64 {attempt} || od -c {attempt} | "
                                  "head -3 || cat " + attempt])
                out = str(r["stdout"])
                assert not out.strip(), f"the guest read {attempt}: {out[:200]}"
                if secret:
                    assert secret not in out
        # Not by searching either: the other machine's token is nowhere in this guest.
        r = _sh(svc, "grep -rIl --exclude-dir=proc -s -F -e "
                     f"'{other_token.read_text().strip()}' / ; true")
        assert str(r["stdout"]).strip() == "", r["stdout"]
    finally:
        host_tmp.unlink(missing_ok=True)


def test_nsenter_to_pid1_and_other_escapes_fail(svc: Service) -> None:
    r = _sh(svc, "nsenter -t 1 -m true")
    assert r["returncode"] != 0 and "Operation not permitted" in str(r["stderr"])
    for script in ("nsenter -t 1 -m -n -p true", "unshare -m true", "unshare -U -r true",
                   "mkdir -p /tmp/m && mount -t tmpfs x /tmp/m",
                   "umount /mnt/data", "mknod /tmp/sda b 8 0",
                   "echo '|/bin/sh -c id' > /proc/sys/kernel/core_pattern",
                   "echo c > /proc/sysrq-trigger",
                   "python3 -c 'import ctypes,sys; l=ctypes.CDLL(None, use_errno=True); "
                   "sys.exit(0 if l.syscall(313, -1, b\"\", 0) != -1 or ctypes.get_errno()"
                   " not in (1,) else 1)'"):  # finit_module: EPERM from seccomp
        r = _sh(svc, script)
        assert r["returncode"] != 0, f"the guest could: {script}\n{r}"
    # The host's devices are not there at all: only a minimal /dev.
    devs = set(str(_sh(svc, "ls /dev")["stdout"]).split())
    assert devs <= {"null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "ptmx",
                    "fd", "stdin", "stdout", "stderr"}, devs
    status = str(_sh(svc, "grep -E '^(CapBnd|NoNewPrivs|Seccomp):' /proc/self/status")["stdout"])
    assert "NoNewPrivs:\t1" in status and "Seccomp:\t2" in status
    # No CAP_MKNOD (27), CAP_SYS_MODULE (16), CAP_SYS_PTRACE (19) in the bounding set.
    bnd = int(next(ln for ln in status.splitlines() if ln.startswith("CapBnd")).split()[1], 16)
    assert not bnd & (1 << 27 | 1 << 16 | 1 << 19)
    # PID 1 and the agent it runs are as restricted as an exec'd command.
    for who in ("1", "$(pgrep -f 'frostpoint.agent.main run' | head -1)"):
        st = str(_sh(svc, f"grep -E '^(NoNewPrivs|Seccomp):' /proc/{who}/status")["stdout"])
        assert "NoNewPrivs:\t1" in st and "Seccomp:\t2" in st, (who, st)


# The attack that worked before (found by attacking the sandbox): open_tree_attr
# (Linux 6.15, not in a deny-list written earlier) cloned the guest's read-only /proc
# with MOUNT_ATTR_RDONLY cleared, so /proc/sys/kernel/core_pattern was writable and a
# crash ran a guest script as host root; the same on / made the shared image writable.
OPEN_TREE_ATTR = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
class Attr(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("set", "clr", "prop", "userns")]
attr = Attr(0, 1, 0, 0)  # clear MOUNT_ATTR_RDONLY
out = []
for path in (b"/proc", b"/"):
    fd = libc.syscall(467, -100, path, 1, ctypes.byref(attr), 32)  # OPEN_TREE_CLONE
    out.append((path.decode(), fd, ctypes.get_errno()))
    if fd >= 0:
        try:
            os.close(os.open("sys/kernel/core_pattern", os.O_RDWR, dir_fd=fd))
            out.append("core_pattern writable")
        except OSError as e:
            out.append(f"core_pattern: {e.errno}")
# listmount / statmount read other mount namespaces' tables by id; a syscall number
# newer than the filter knows (520) is refused as if the kernel were older.
for nr in (458, 457, 520):
    r = libc.syscall(nr, 0, 0, 0, 0)
    out.append((nr, r, ctypes.get_errno()))
print(out)
"""


def test_newer_mount_syscalls_cannot_clone_a_writable_proc_or_root(svc: Service) -> None:
    r = _run(svc, M, ["python3", "-c", OPEN_TREE_ATTR])
    out = str(r["stdout"])
    assert r["returncode"] == 0, r
    # EPERM (1) from seccomp for open_tree_attr on both, and for listmount/statmount;
    # ENOSYS (38) for an unknown newer syscall.
    assert "('/proc', -1, 1)" in out and "('/', -1, 1)" in out, out
    assert "(458, -1, 1)" in out and "(457, -1, 1)" in out and "(520, -1, 38)" in out, out
    assert "writable" not in out, out


def test_ps_shows_only_the_guest(svc: Service) -> None:
    out = str(_sh(svc, "ps -eo pid=,args=")["stdout"])
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    pids = {int(ln.split()[0]) for ln in lines}
    assert 1 in pids and len(lines) < 15, out
    assert "frostpoint.cli.main server" not in out  # the host's service
    # The other machine's agent has a pid on the host, not here.
    assert os.getpid() not in pids or "pytest" not in out
    other = str(_sh(svc, "ps -eo pid=,args=", OTHER)["stdout"])
    assert "frostpoint.agent.main run" in other and "frostpoint.agent.main run" in out
    assert str(_sh(svc, "hostname")["stdout"]).strip() == M  # its own UTS namespace


def test_kill_of_a_host_process_fails(svc: Service) -> None:
    victim = subprocess.Popen(["sleep", "300"])
    try:
        r = _sh(svc, f"kill -9 {victim.pid}")
        assert r["returncode"] != 0
        time.sleep(0.3)
        assert victim.poll() is None, "the guest killed a host process"
    finally:
        victim.kill()
        victim.wait()


def test_root_is_the_image_with_layers_of_its_own(svc: Service) -> None:
    """The image is read-only; /etc, /var, /root are writable and the machine's own."""
    assert _sh(svc, "touch /usr/bin/fp-planted")["returncode"] != 0
    assert _sh(svc, "echo mine > /etc/fp-iso-marker && echo v > /var/fp-iso-marker")[
        "returncode"] == 0
    assert _sh(svc, "test ! -e /etc/fp-iso-marker && test ! -e /var/fp-iso-marker",
               OTHER)["returncode"] == 0, "one machine's layer showed in another"
    assert "ID=debian" in str(_sh(svc, "cat /etc/os-release")["stdout"])


def test_guest_cannot_power_off_its_init(svc: Service) -> None:
    """PID 1 ignores signals from inside the machine (and the agent's own matching of
    `frostpoint.agent.init` cannot reach it): the machine keeps running."""
    _sh(svc, "kill -TERM 1; kill -9 1; pkill -f frostpoint.agent.init; sleep 0.5; true")
    time.sleep(1)
    assert _sh(svc, "true")["returncode"] == 0
    assert svc.client.get(f"/machines/{M}")["power_state"] == "Running"
    assert _run(svc, M, ["frostpoint-agent", "restart"])["returncode"] == 0  # a new one
    svc.wait_agent_ready(M)


def test_fifreeze_of_own_disk_still_works(svc: Service) -> None:
    r = _sh(svc, "fsfreeze -f /mnt/data && fsfreeze -u /mnt/data")
    assert r["returncode"] == 0, r


def test_frostpoint_agent_is_on_the_guest_path(svc: Service) -> None:
    assert str(_run(svc, M, ["frostpoint-agent", "version"])["stdout"]).strip()
    r = _run(svc, M, ["frostpoint-agent", "restart"])
    assert r["returncode"] == 0, r
    svc.wait_agent_ready(M)
    r = _run(svc, M, ["frostpoint-agent", "collect-logs"])
    assert r["returncode"] == 0, r
    path = str(r["stdout"]).strip().splitlines()[-1]
    assert path.startswith("/tmp/") and not Path(path).exists(), "written on the host"
    assert _sh(svc, f"test -s {path}")["returncode"] == 0  # in the guest's own /tmp


def test_extension_package_carries_its_own_code(svc: Service) -> None:
    pkg = next((svc.data_dir / "packages").glob("Frostpoint.Backup.Snapshot-*.tar.gz"))
    with tarfile.open(pkg) as tar:
        names = tar.getnames()
        launcher = tar.extractfile("bin/frostpoint-snapshot").read().decode()  # type: ignore[union-attr]
    assert launcher.startswith("#!/usr/bin/python3\n"), launcher
    assert "lib/frostpoint/extension/main.py" in names and "vendor/httpx/__init__.py" in names
    assert not any(n.endswith(".so") for n in names)


# -- the host never follows a path the guest controls ---------------------------------
def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_planted_symlinks_are_not_followed(svc: Service) -> None:
    """The guest replaces every file the host writes or appends to in its folders with a
    symlink to a host file; the host operations go on and the host file is unchanged."""
    target = Path(f"/tmp/fp-iso-target-{uuid.uuid4().hex}")
    target.write_text("host file\n")
    before = _digest(target)
    planted = ["/etc/frostpoint/agent.installed", "/var/log/frostpoint/init.log",
               "/etc/frostpoint/agent.conf", "/etc/frostpoint/vmbackup.json"]
    try:
        # From inside the guest: its own folders are all it can write.
        script = "; ".join(f"rm -f {p}; ln -s {target} {p}" for p in planted)
        assert _sh(svc, script, OTHER)["returncode"] == 0
        svc.client.post(f"/machines/{OTHER}/stop", {})
        svc.client.post(f"/machines/{OTHER}/start", {})  # appends to init.log
        svc.cli("vm", "agent", "install", OTHER, check=False)  # writes agent.installed
        r = svc.cli("vm", "exec", OTHER, "--", "true", check=False)
        assert r.returncode == 0, r.stderr
        assert _digest(target) == before, "the host wrote through a guest's symlink"
        assert target.read_text() == "host file\n"
    finally:
        target.unlink(missing_ok=True)


def test_planted_links_on_bind_targets_stay_in_the_guest(svc: Service) -> None:
    """A symlink where the machine's own folders are mounted does not move the mount
    onto a host folder at the next start. (Here the guest cannot move /var/log away,
    mount and all: overlayfs without redirect_dir refuses to rename an image folder.
    With it, it could; the link is planted in its writable layer as it would be.)"""
    hostdir = Path(f"/tmp/fp-iso-dir-{uuid.uuid4().hex}")
    hostdir.mkdir()
    try:
        svc.client.post(f"/machines/{OTHER}/stop", {})
        upper = svc.data_dir / "machines" / OTHER / "layer" / "var" / "upper"
        subprocess.run(["rm", "-rf", str(upper / "log")], check=True)
        (upper / "log").symlink_to(hostdir)
        svc.client.post(f"/machines/{OTHER}/start", {})
        assert list(hostdir.iterdir()) == [], "the host mounted or wrote on its folder"
        out = str(_sh(svc, "grep ' /var/log/frostpoint ' /proc/mounts", OTHER)["stdout"])
        assert out.strip(), "the machine's log folder is mounted again"
        svc.wait_agent_ready(OTHER)
    finally:
        subprocess.run(["rm", "-rf", str(hostdir)], check=False)


def test_exec_reports_the_commands_exit_and_signal(svc: Service) -> None:
    """vm exec goes through a restricted helper, yet reports as if it ran the command."""
    assert _sh(svc, "exit 7")["returncode"] == 7
    assert _sh(svc, "kill -9 $$")["returncode"] == -9  # the CLI exits 256 - 9
    assert _run(svc, M, ["no-such-program"])["returncode"] == 127
    assert _sh(svc, "cat")["stdout"] == ""  # stdin is not the service's


# FIFREEZE from a guest, of a file on each of its filesystems that is not one of its
# disks. Were one to work, it would freeze a host filesystem (the image's, the data
# directory's: the host's root here), so a host thread thaws them all meanwhile.
FREEZE_TRY = """
import errno, fcntl, os, sys
for path in sys.argv[1:]:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, 0xC0045877, 0)
        fcntl.ioctl(fd, 0xC0045878, 0)
        print(path, "FROZE")
    except OSError as e:
        print(path, errno.errorcode[e.errno])
"""
NOT_ITS_DISKS = ("/", "/usr", "/etc", "/etc/frostpoint", "/var/lib/frostpoint-agent",
                 "/var/log/frostpoint", "/tmp", "/proc", "/dev/null", "/mnt")


@contextlib.contextmanager
def _host_kept_thawed(svc: Service) -> Iterator[None]:
    paths = ["/", str(svc.data_dir), str(svc.data_dir / "pool"), "/var/cache"]
    done = threading.Event()

    def thaw() -> None:
        while not done.wait(0.2):
            for p in paths:
                subprocess.run(["fsfreeze", "-u", p], capture_output=True)

    t = threading.Thread(target=thaw, daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join()
        for p in paths:
            subprocess.run(["fsfreeze", "-u", p], capture_output=True)


def _try_freeze(svc: Service, paths: tuple[str, ...]) -> dict[str, str]:
    with _host_kept_thawed(svc):
        r = _run(svc, M, ["python3", "-c", FREEZE_TRY, *paths])
    assert r["returncode"] == 0, r
    return dict(line.split() for line in str(r["stdout"]).splitlines())


def test_guest_cannot_freeze_a_filesystem_that_is_not_its_disk(svc: Service) -> None:
    init = int((svc.data_dir / "run" / "init" / M).read_text())  # its PID 1, host pid
    status = Path(f"/proc/{init}/status").read_text()
    cap_eff = int(next(ln for ln in status.splitlines() if ln.startswith("CapEff:"))
                  .split()[1], 16)
    assert not cap_eff & (1 << 21), "the guest's PID 1 has CAP_SYS_ADMIN"
    got = _try_freeze(svc, NOT_ITS_DISKS)
    assert got == {p: "EPERM" for p in NOT_ITS_DISKS}, got
    assert _try_freeze(svc, ("/mnt/data",)) == {"/mnt/data": "FROZE"}


# A detached copy of a host mount (open_tree) is attached in the machine (move_mount):
# what the guest cannot do, done by the host for the test.
LEAK_MOUNT = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
tree = libc.syscall(428, -100, sys.argv[1].encode(), 1 | 0x80000)  # OPEN_TREE_CLONE|CLOEXEC
assert tree >= 0, os.strerror(ctypes.get_errno())
assert libc.setns(os.open(sys.argv[2], os.O_RDONLY), 0x20000) == 0
os.makedirs("/mnt/leak", exist_ok=True)
ret = libc.syscall(429, tree, b"", -100, b"/mnt/leak", 4)  # MOVE_MOUNT_F_EMPTY_PATH
assert ret == 0, os.strerror(ctypes.get_errno())
"""


def test_freeze_broker_checks_the_disk_is_the_machines(svc: Service) -> None:
    """A host loop filesystem made visible in the guest (the disk pool, as a future
    mount mistake might) is still not the guest's to freeze."""
    pool = svc.data_dir / "pool"
    assert subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(pool)], capture_output=True,
                          text=True).stdout.startswith("/dev/loop"), "the pool is a loop fs"
    subprocess.run([sys.executable, "-c", LEAK_MOUNT, str(pool),
                    str(svc.data_dir / "run" / "mntns" / M)], check=True, timeout=30)
    try:
        assert _try_freeze(svc, ("/mnt/leak",)) == {"/mnt/leak": "EPERM"}
    finally:
        svc.in_mounts(M, "umount('/mnt/leak'); os.rmdir('/mnt/leak')")


def test_without_its_broker_a_freeze_fails_at_once(svc: Service) -> None:
    pid_file = svc.data_dir / "run" / "broker" / f"{OTHER}.pid"
    os.kill(int(pid_file.read_text()), 9)
    started = time.monotonic()
    r = _sh(svc, "fsfreeze -f /mnt/data", machine=OTHER)
    assert r["returncode"] != 0 and time.monotonic() - started < 10, r
    assert "Function not implemented" in str(r["stderr"]), r
    c = svc.client
    c.post(f"/machines/{OTHER}/stop", {})
    c.post(f"/machines/{OTHER}/start", {})
    r = _sh(svc, "fsfreeze -f /mnt/data && fsfreeze -u /mnt/data", machine=OTHER)
    assert r["returncode"] == 0, r


# Run in the guest: stop each process the host starts in the machine (`vm exec`: the
# host's guestns.py, before it executes the command), step it until it has dropped to
# the guest's capabilities, and try to open its memory for writing. A guest that can
# write there runs its own code in a process the host made, before that process has
# closed the broker socket and listener, or (a few instructions earlier) before its
# seccomp filter is loaded.
CATCH_HOST_EXEC = r"""
import os, signal, sys, time
KEEP = "00000000a00415fb"
def status(p):
    with open(f"/proc/{p}/status") as f:
        return dict(ln.split(":\t", 1) for ln in f.read().splitlines() if ":\t" in ln)
def host_made(p):
    with open(f"/proc/{p}/cmdline", "rb") as f:
        return b"guestns.py\x00exec\x00" in f.read()
seen, end = set(), time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    for p in os.listdir("/proc"):
        if not p.isdigit() or p in seen:
            continue
        seen.add(p)
        try:
            if not host_made(p):
                continue
            os.kill(int(p), signal.SIGSTOP)
            for _ in range(2000):
                while status(p)["State"][0] != "T":
                    pass
                st = status(p)
                if st["CapEff"].strip() == KEEP or not host_made(p):
                    break
                os.kill(int(p), signal.SIGCONT)
                os.kill(int(p), signal.SIGSTOP)
            if host_made(p):
                try:
                    os.close(os.open(f"/proc/{p}/mem", os.O_RDWR))
                    print("WROTE", p, "seccomp", st["Seccomp"].strip(), flush=True)
                except OSError as e:
                    print("refused", p, e.strerror, flush=True)
        except (OSError, KeyError):
            pass
        finally:
            try:
                os.kill(int(p), signal.SIGCONT)
            except OSError:
                pass
"""


def test_guest_cannot_write_into_a_host_exec_before_it_runs_the_command(svc: Service) -> None:
    out = "/tmp/catch-host-exec.out"
    r = _run(svc, M, ["sh", "-c", f'setsid python3 -c "$1" 25 >{out} 2>&1 </dev/null &',
                      "sh", CATCH_HOST_EXEC])
    assert r["returncode"] == 0, r
    time.sleep(1)
    caught = ""
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline and caught.count("\n") < 3:
        _sh(svc, "true")  # a host-made process for the catcher to stop
        caught = str(_sh(svc, f"cat {out}")["stdout"])
    assert caught, "the catcher saw no host-made process (it should stop one and be refused)"
    assert "WROTE" not in caught, f"the guest could write into a host exec:\n{caught}"


# Run in the guest: overwrite the instruction PID 1 returns to from its sigwaitinfo
# with exit_group(0) (/proc/1/syscall names it), then let an orphan end so it returns.
EXIT_PID1 = r"""
import os, subprocess
pc = int(open("/proc/1/syscall").read().split()[-1], 16)
fd = os.open("/proc/1/mem", os.O_RDWR)
os.pwrite(fd, bytes([0xB8, 0xE7, 0, 0, 0, 0x31, 0xFF, 0x0F, 0x05]), pc)
subprocess.run(["sh", "-c", "(sleep 0.2 &)"])
"""


def test_guest_cannot_write_its_init_to_power_it_off(svc: Service) -> None:
    init = int((svc.data_dir / "run" / "init" / OTHER).read_text())
    try:
        _run(svc, OTHER, ["python3", "-c", EXIT_PID1])
        time.sleep(1.5)
        assert Path(f"/proc/{init}").exists(), "the guest made its PID 1 exit"
        assert _sh(svc, "true", machine=OTHER)["returncode"] == 0
    finally:
        if not Path(f"/proc/{init}").exists():
            svc.client.post(f"/machines/{OTHER}/stop", {})
            svc.client.post(f"/machines/{OTHER}/start", {})


def test_an_exec_past_its_timeout_is_a_catalog_error(svc: Service) -> None:
    """A guest can stop its own exec (SIGSTOP) or run one forever: the caller gets
    VmExecTimedOut, not an internal error, and the machine goes on."""
    with pytest.raises(ApiError) as e:
        svc.client.post(f"/machines/{M}/exec", {"argv": ["sh", "-c", "kill -STOP $$"],
                                                "timeout": 2})
    assert e.value.status == 504 and e.value.error["code"] == "VmExecTimedOut", e.value.error
    assert _sh(svc, "true")["returncode"] == 0
