"""The host's end of a QEMU guest's channel (virtio-serial; the guest's end is
frostpoint.agent.channel; docs/protocol.md "The channel").

Everything that comes back is the guest's and so hostile: a reply line is at most
MAX_LINE bytes, must be a JSON object with the request's id (a stale reply left by an
earlier, timed-out request is skipped, at most MAX_SKIPPED of them), its fields are
checked for type, and every request has a deadline. One request at a time per guest
(a lock file), since a virtio-serial port is one byte stream.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import secrets
import socket
import time
from pathlib import Path
from typing import Any

from frostpoint.errors.catalog import FrostpointError

MAX_LINE = 4 << 20  # a reply holds at most 2 x 1 MiB of output, base64
MAX_SKIPPED = 16


class ChannelError(FrostpointError):
    pass


def _fail(machine: str, why: str) -> ChannelError:
    return ChannelError("GuestChannelUnavailable",
                        f"the host channel of {machine} {why}", {"machine": machine})


def request(sock_path: Path, machine: str, op: str, timeout: float = 30,
            **fields: Any) -> dict[str, Any]:
    """Send one request, return its (checked) reply; ChannelError on any fault."""
    rid = secrets.token_hex(8)
    deadline = time.monotonic() + timeout
    with open(sock_path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                s.settimeout(max(0.1, deadline - time.monotonic()))
                s.connect(str(sock_path))
                s.sendall(json.dumps({"id": rid, "op": op, **fields}).encode() + b"\n")
            except OSError as e:
                raise _fail(machine, f"cannot be reached ({e}): is the VM running?") from e
            return _read_reply(s, machine, rid, deadline)
        finally:
            s.close()


def _read_reply(s: socket.socket, machine: str, rid: str, deadline: float) -> dict[str, Any]:
    buf = b""
    skipped = 0
    while True:
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _fail(machine, "did not answer in time (the guest's channel "
                            "service is not running, or the guest hangs)")
            if len(buf) > MAX_LINE:
                raise _fail(machine, f"sent a reply over {MAX_LINE} bytes: refused")
            s.settimeout(left)
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                continue
            except OSError as e:
                raise _fail(machine, f"failed: {e}") from e
            if not chunk:
                raise _fail(machine, "closed (QEMU went away)")
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        if len(line) > MAX_LINE:
            raise _fail(machine, f"sent a reply over {MAX_LINE} bytes: refused")
        try:
            reply = json.loads(line)
        except ValueError:
            reply = None
        if isinstance(reply, dict) and reply.get("id") == rid:
            if reply.get("ok") is not True:
                err = str(reply.get("error", "no reason given"))[:500]
                raise _fail(machine, f"refused the request: {err}")
            return reply
        skipped += 1  # a stale reply, or garbage
        if skipped > MAX_SKIPPED:
            raise _fail(machine, "sent garbage (no reply to the request): refused")


def b64field(reply: dict[str, Any], key: str, machine: str, limit: int = 1 << 20) -> bytes:
    value = reply.get(key)
    if not isinstance(value, str):
        raise _fail(machine, f"sent a reply whose {key!r} is not base64 text")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise _fail(machine, f"sent a reply whose {key!r} is not base64") from e
    return data[-limit:]
