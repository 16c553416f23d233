"""frostpoint server: the management API on loopback, the wire and host endpoints on
the fabric address, and the background loops, in one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

import uvicorn

from frostpoint.fabric.endpoints import host_app, wire_app
from frostpoint.fabric.system import bind_in_netns
from frostpoint.protocol import FABRIC_ADDRESS, HOST_PORT, WIRE_PORT
from frostpoint.service.api import create_app
from frostpoint.service.runtime import Runtime
from frostpoint.service.services import Services


class _Server(uvicorn.Server):
    # Three servers share one loop; the process handles signals once, below.
    def capture_signals(self):  # type: ignore[no-untyped-def,override]
        return contextlib.nullcontext()


def serve(data_dir: Path, listen: str, db_url: str | None = None) -> None:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rt = Runtime(data_dir, db_url)
    rt.start_fabric()
    svc = Services(rt)
    svc.backups.runner.reap_orphans()
    host, port = listen.rsplit(":", 1)
    wire_sock = bind_in_netns(rt.network.fabric_ns, FABRIC_ADDRESS, WIRE_PORT)
    host_sock = bind_in_netns(rt.network.fabric_ns, FABRIC_ADDRESS, HOST_PORT)
    quiet = {"log_level": "warning", "access_log": False, "timeout_keep_alive": 75}
    mgmt = _Server(uvicorn.Config(create_app(svc), host=host, port=int(port), **quiet))
    wire = _Server(uvicorn.Config(wire_app(svc.machines), **quiet))
    hostep = _Server(uvicorn.Config(host_app(svc.machines), **quiet))
    svc.start_background()

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def stop() -> None:
            svc.stopping.set()
            for srv in (mgmt, wire, hostep):
                srv.should_exit = True

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        await asyncio.gather(mgmt.serve(), wire.serve(sockets=[wire_sock]),
                             hostep.serve(sockets=[host_sock]))

    logging.getLogger("frostpoint.service").info(
        "frostpoint server on %s, fabric %s (wire %d, host %d), data %s",
        listen, FABRIC_ADDRESS, WIRE_PORT, HOST_PORT, data_dir)
    asyncio.run(main())
