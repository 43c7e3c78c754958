"""Run the gateway on its port until SIGINT/SIGTERM, then shut down cleanly."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from ark.config import Settings
from ark.gateway.app import Gateway
from ark.wire import Limits, Server


async def serve(
    settings: Settings, *, on_started: Callable[[Gateway], None] | None = None, stop: asyncio.Event | None = None
) -> None:
    gateway = Gateway(settings)
    server = Server(gateway, Limits(max_body=settings.gateway.max_body_bytes), on_refused=gateway.refused)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await gateway.start()
    try:
        listen = settings.gateway.listen
        await server.start(listen.host, listen.port)
        if on_started is not None:
            on_started(gateway)
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await server.close()
        await gateway.close()


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run the event loop (uvloop when installed: it is faster on the hot path)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
