"""frostpoint server: the management API on loopback, the wire and host endpoints on
the fabric address, and the background loops, in one process."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
from pathlib import Path
from typing import Any

import uvicorn

from frostpoint.errors.catalog import FrostpointError
from frostpoint.fabric.endpoints import host_app, wire_app
from frostpoint.protocol import FABRIC_ADDRESS, HOST_PORT, WIRE_PORT
from frostpoint.service import clock
from frostpoint.service.api import create_app
from frostpoint.service.runtime import Runtime, lock_data_dir
from frostpoint.service.services import Services


class _Server(uvicorn.Server):
    # Three servers share one loop; the process handles signals once, below.
    # uvicorn declares a generator context manager; any context manager does.
    def capture_signals(self) -> Any:
        return contextlib.nullcontext()


def parse_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT (or [IPv6]:PORT) for the management API, checked before anything."""
    host, sep, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]") if host.startswith("[") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FrostpointError("ServiceStartFailed",
                              f"--listen {listen!r} is not HOST:PORT (e.g. 127.0.0.1:8420)",
                              {"listen": listen})
    return host, int(port)


def bind_listen(host: str, port: int) -> socket.socket:
    """The management socket, bound before the fabric is made: a busy port then costs
    nothing to undo."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as e:
        raise FrostpointError("ServiceStartFailed", f"--listen {where}: {e}",
                              {"listen": where}) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        why = ("is already in use" if e.errno == errno.EADDRINUSE
               else f"cannot be bound ({e.strerror})")
        raise FrostpointError("ServiceStartFailed", f"--listen {where} {why}",
                              {"listen": where}) from None
    return sock


def serve(data_dir: Path, listen: str, db_url: str | None = None,
          metrics_no_auth_loopback: bool = False) -> None:
    """Start in an order where each refusal leaves nothing behind: the address is
    checked, the data directory locked (before it is migrated, reaped or written),
    the management port bound, and only then the fabric made (released again if the
    rest of the start fails)."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = parse_listen(listen)
    test_clock = clock.clock()
    if test_clock.offset_file is not None:  # tests only (service/clock.py)
        test_clock.check_offset_file()
        logging.getLogger("frostpoint.service").warning(
            "%s is set: the service's clock is moved by %s (a test clock; never in "
            "production)", clock.TEST_CLOCK_ENV, test_clock.offset())
    lock_data_dir(data_dir)
    mgmt_sock = bind_listen(host, port)
    rt = Runtime(data_dir, db_url)
    rt.metrics_no_auth_loopback |= metrics_no_auth_loopback
    try:
        rt.start_fabric()
        svc = Services(rt)
        svc.reconcile_machines()
        svc.browser.clean_mounts()  # restore mounts an earlier process left
        for job_id in svc.backups.runner.reap_orphans():  # jobs a crash left running
            svc.backups.runner.announce_end(job_id)  # their `failed` event
        rt.platform.attach_backend(svc.machines)
        wire_sock, host_sock = rt.platform.endpoint_sockets(FABRIC_ADDRESS,
                                                            (WIRE_PORT, HOST_PORT))
    except BaseException:
        rt.release_fabric()
        raise
    # On SIGTERM open requests (agents' polls among them) get a second to finish, not
    # as long as they like: a stop is then over in a second or two.
    quiet: dict[str, Any] = {"log_level": "warning", "access_log": False,
                             "timeout_keep_alive": 75, "timeout_graceful_shutdown": 1}
    mgmt = _Server(uvicorn.Config(create_app(svc), **quiet))
    wire = _Server(uvicorn.Config(wire_app(svc.machines), **quiet))
    hostep = _Server(uvicorn.Config(host_app(svc.machines), **quiet))
    svc.start_background()

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def stop() -> None:
            log.info("frostpoint server stopping (signal)")
            svc.stopping.set()
            for srv in (mgmt, wire, hostep):
                srv.should_exit = True

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        await asyncio.gather(mgmt.serve(sockets=[mgmt_sock]), wire.serve(sockets=[wire_sock]),
                             hostep.serve(sockets=[host_sock]))

    log = logging.getLogger("frostpoint.service")
    log.info("frostpoint server on %s, fabric %s (wire %d, host %d), data %s",
             listen, FABRIC_ADDRESS, WIRE_PORT, HOST_PORT, data_dir)
    if rt.metrics_no_auth_loopback:
        log.warning("/metrics answers clients on loopback without a token")
    asyncio.run(main())
    log.info("frostpoint server stopped")
