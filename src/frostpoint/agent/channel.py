"""The guest's end of the host channel of a QEMU guest (docs/protocol.md "The channel").

A virtio-serial port, /dev/virtio-ports/org.frostpoint.channel.0, served by this
process (frostpoint-channel.service, Restart=always; independent of the agent, so the
host can still run programs and thaw disks when the agent is stopped or crashed).
One JSON object per line each way; requests are answered in order:

  {"id": N, "op": "ping"}                                  -> {"id": N, "ok": true}
  {"id": N, "op": "exec", "argv": [...], "input": B64, "timeout_s": S}
        -> {"id": N, "ok": true, "returncode": R, "stdout": B64, "stderr": B64}
  {"id": N, "op": "read", "path": P}            -> {"id": N, "ok": true, "data": B64|null}
  {"id": N, "op": "write", "path": P, "data": B64, "mode": M}  -> {"id": N, "ok": true}
  {"id": N, "op": "thaw"}                       -> {"id": N, "ok": true, "thawed": [...]}

Anything wrong is {"id": N, "ok": false, "error": TEXT}. No ssh, no keys: only the host
can reach this port.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from frostpoint.agent.frozen import FITHAW
from frostpoint.protocol import DISK_ROOT, GUEST_ETC, GUEST_LIB, GUEST_LOG

PORT = "/dev/virtio-ports/org.frostpoint.channel.0"
MAX_OUTPUT = 1 << 20  # per stream of a program; the host refuses longer lines anyway
MAX_REQUEST = 8 << 20
SHARED = (GUEST_ETC, GUEST_LIB, GUEST_LOG)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _shared_path(path: str) -> str:
    norm = os.path.normpath(path)
    if not any(norm == p or norm.startswith(p + "/") for p in SHARED):
        raise ValueError(f"{path} is not under {', '.join(SHARED)}")
    return norm


def _exec(req: dict[str, Any]) -> dict[str, Any]:
    argv = [str(a) for a in req["argv"]]
    data = base64.b64decode(req.get("input") or "")
    try:
        p = subprocess.run(argv, input=data, capture_output=True,
                           timeout=float(req.get("timeout_s", 300)))
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = 124, e.stdout or b"", (e.stderr or b"") + b"timed out\n"
    except OSError as e:
        rc, out, err = 127, b"", f"{e}\n".encode()
    return {"returncode": rc, "stdout": _b64(out[-MAX_OUTPUT:]),
            "stderr": _b64(err[-MAX_OUTPUT:])}


def _read(req: dict[str, Any]) -> dict[str, Any]:
    path = _shared_path(str(req["path"]))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return {"data": None}
    with os.fdopen(fd, "rb") as f:
        return {"data": _b64(f.read(MAX_OUTPUT))}


def _write(req: dict[str, Any]) -> dict[str, Any]:
    path = _shared_path(str(req["path"]))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.channel-tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                 int(req.get("mode", 0o644)))
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64decode(req["data"]))
    os.chmod(tmp, int(req.get("mode", 0o644)))
    os.replace(tmp, path)
    return {}


def _thaw(_req: dict[str, Any]) -> dict[str, Any]:
    """FITHAW every disk mount (EINVAL: it was not frozen)."""
    thawed = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        mnt = line.split()[1]
        if os.path.dirname(mnt) != DISK_ROOT:
            continue
        try:
            fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            fcntl.ioctl(fd, FITHAW, 0)
            thawed.append(os.path.basename(mnt))
        except OSError:
            pass
        finally:
            os.close(fd)
    return {"thawed": thawed}


OPS = {"ping": lambda _r: {}, "exec": _exec, "read": _read, "write": _write, "thaw": _thaw}


def handle(line: bytes) -> dict[str, Any]:
    try:
        req = json.loads(line)
        rid = req.get("id")
    except (ValueError, AttributeError):
        return {"id": None, "ok": False, "error": "not a JSON object"}
    try:
        return {"id": rid, "ok": True, **OPS[str(req.get("op"))](req)}
    except Exception as e:  # noqa: BLE001  # every failure is an answer
        return {"id": rid, "ok": False, "error": f"{type(e).__name__}: {e}"}


def _send(port: Any, data: bytes) -> None:
    """All of data: a write to the port may take only part of it."""
    view = memoryview(data)
    while view:
        n = port.write(view)
        view = view[n or 0:]
        if not n:
            time.sleep(0.05)


def main() -> None:
    while not os.path.exists(PORT):  # udev makes the link shortly after boot
        time.sleep(0.2)
    with open(PORT, "r+b", buffering=0) as port:
        buf = b""
        while True:
            chunk = port.read(65536)
            if not chunk:  # no host connected: the port reads EOF; wait for one
                time.sleep(0.1)
                continue
            buf += chunk
            if len(buf) > MAX_REQUEST and b"\n" not in buf:
                buf = b""
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    _send(port, json.dumps(handle(line)).encode() + b"\n")


if __name__ == "__main__":
    main()
