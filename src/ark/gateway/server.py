"""Run the gateway and the console on their ports until SIGINT/SIGTERM, then shut down cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from ark.config import Settings
from ark.console import ConsoleServer
from ark.gateway.app import Gateway
from ark.monitor import embedded
from ark.supervisor import Supervisor
from ark.wire import Limits, Server

log = logging.getLogger("ark.gateway")


async def serve(
    settings: Settings, *, on_started: Callable[[Gateway], None] | None = None, stop: asyncio.Event | None = None
) -> None:
    gateway = Gateway(settings)
    limits = Limits(
        max_body=settings.gateway.max_body_bytes,
        head_timeout=settings.gateway.head_timeout_s,
        write_timeout=settings.gateway.write_timeout_s,
        max_connections=settings.gateway.max_connections,
        max_per_client=settings.gateway.max_connections_per_client,
    )
    server = Server(gateway, limits, on_refused=gateway.refused)
    # every connection is a file: a client's, and an engine's for each request in flight
    _open_files(settings.gateway.max_connections + settings.gateway.max_inflight + 1024)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await gateway.start()
    console: ConsoleServer | None = None
    supervisor = Supervisor(settings.logs_dir)
    monitoring: asyncio.Task[None] | None = None
    try:
        listen = settings.gateway.listen
        await server.start(listen.host, listen.port)
        assert gateway.store is not None and gateway.identity is not None
        # the console shares the gateway's database pool, /metrics and view of live sessions (X-Ark-Identity)
        console = await ConsoleServer.open(
            settings,
            gateway.store,
            gateway.metrics.registry,
            gateway.overview,
            gateway.secret,
            gateway.identity.sessions,
        )
        # third-party services start beside serving: Prometheus takes seconds to get ready
        monitoring = asyncio.create_task(_monitoring(settings, supervisor, gateway), name="ark-monitoring")
        if on_started is not None:
            on_started(gateway)
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if monitoring is not None:
            monitoring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitoring
        await supervisor.close()
        if console is not None:
            await console.close()
        await server.close()
        await gateway.close()


async def _monitoring(settings: Settings, supervisor: Supervisor, gateway: Gateway) -> None:
    gateway.supervisor = supervisor
    try:
        gateway.services = await embedded.start(settings, supervisor)
    except Exception as exc:  # [monitor] embedded = yes and something is missing: say so, serve on
        log.error("monitoring: %s", exc)
        gateway.services = [{"name": "monitoring", "state": "failed", "why": str(exc).splitlines()[0]}]


def _open_files(wanted: int) -> None:
    """Raise the soft limit on open files toward ``wanted`` (as far as the hard limit allows; nginx:
    worker_rlimit_nofile): Debian's soft default of 1024 would refuse connections long before the caps."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        log.warning(
            "open files are limited to %d, fewer than [gateway] max_connections needs (%d): raise LimitNOFILE",
            target,
            wanted,
        )


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run the event loop (uvloop when installed: it is faster on the hot path)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
