"""Run the gateway on its port until SIGINT/SIGTERM, then shut down cleanly."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from ark.config import Settings
from ark.gateway.app import GATEWAY, Gateway, create_app


async def serve(
    settings: Settings,
    *,
    on_started: Callable[[Gateway], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    app = create_app(settings)
    # handler_cancellation: a client that goes away cancels its handler, and with it the
    # engine request, so the GPU stops generating for nobody.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    listen = settings.gateway.listen
    site = web.TCPSite(runner, listen.host, listen.port, backlog=1024, reuse_address=True)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await site.start()
        if on_started is not None:
            on_started(app[GATEWAY])
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await runner.cleanup()


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run the event loop (uvloop when installed: it is faster on the hot path)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
