"""QMP, the QEMU Monitor Protocol, over a guest's unix socket: the power and device
control of QEMU guests (fabric/qemu.py). The qemu.qmp library's client; each call
connects, negotiates, runs one command and disconnects, all within a time bound (a
hung QEMU must not hang the service)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient, QMPError

TIMEOUT_S = 5.0


class QMPUnavailable(Exception):
    """No QEMU answers on the socket (it is not running, or it hangs)."""


async def _run(socket_path: Path, name: str, args: dict[str, Any], timeout: float) -> Any:
    client = QMPClient("frostpoint")
    await asyncio.wait_for(client.connect(str(socket_path)), timeout)
    try:
        return await asyncio.wait_for(client.execute(name, args or None), timeout)
    finally:
        await client.disconnect()


def command(socket_path: Path, name: str, timeout: float = TIMEOUT_S, **args: Any) -> Any:
    """Run one QMP command; its "return" value. QMPUnavailable if QEMU is not there."""
    try:
        return asyncio.run(_run(socket_path, name, args, timeout))
    except (OSError, EOFError, TimeoutError, QMPError) as e:
        raise QMPUnavailable(f"QMP {name} on {socket_path}: {type(e).__name__} {e}") from e
