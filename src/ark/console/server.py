"""The console on ``[console] listen``, beside the gateway in the same process and event loop.

It shares the gateway's database connection pool and Prometheus registry; its own server has small
limits (a sign-in form is a few hundred bytes) so that nothing big reaches the handlers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from prometheus_client import CollectorRegistry

from ark.auth.revocation import LiveSessions
from ark.auth.service import AuthService
from ark.auth.signing import load_secret
from ark.auth.users import UserStore
from ark.config import Settings
from ark.console.api import Gateway
from ark.console.app import Console, ConsoleCollector, Overview
from ark.errors import ConsoleError
from ark.periodic import every
from ark.store import Store
from ark.wire import Limits, Server

log = logging.getLogger("ark.console")

MAX_BODY = 64 * 1024
MAX_CONNECTIONS = 512  # browsers through Nginx, a few at a time each: a small share of the open files
_PRUNE_EVERY_S = 3600.0


class ConsoleServer:
    """Start with :meth:`open`, stop with :meth:`close`."""

    def __init__(
        self, settings: Settings, auth: AuthService, overview: Overview | None = None, gateway: Gateway | None = None
    ) -> None:
        self.settings = settings
        self.auth = auth
        self.console = Console(settings, auth, overview, gateway)
        self.server = Server(
            self.console, Limits(max_body=MAX_BODY, idle_timeout=30.0, max_connections=MAX_CONNECTIONS)
        )
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def open(
        cls,
        settings: Settings,
        store: Store,
        registry: CollectorRegistry | None = None,
        overview: Overview | None = None,
        secret: bytes | None = None,
        sessions: LiveSessions | None = None,
        gateway: Gateway | None = None,
    ) -> ConsoleServer:
        """``secret``: DATA/auth.key when the caller has read it already (the gateway has).

        ``sessions``: the gateway's view of live sessions when it runs in this process; every sign-out
        and every session found gone is reported to it, so its identity check refuses them at once.

        ``gateway``: the gateway's router when it runs in this process: ``/console/api`` serves it to the
        signed-in person (ark.console.api).
        """
        if secret is None:
            secret = await asyncio.to_thread(load_secret, settings.data_dir)
        auth = AuthService(UserStore(store.engine), secret, settings.auth, sessions=sessions)
        await auth.start()
        console = cls(settings, auth, overview, gateway)
        listen = settings.console.listen
        try:
            await console.server.start(listen.host, listen.port)
        except OSError as exc:
            raise ConsoleError(f"cannot listen on {listen} ([console] listen): {exc.strerror}") from None
        if registry is not None:
            registry.register(ConsoleCollector(auth))
        failure = "console: deleting expired sessions failed"
        console._background(every(_PRUNE_EVERY_S, auth.prune, log=log, failure=failure, at_once=True))
        return console

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.create_task(work, name="ark-console-prune"))

    @property
    def port(self) -> int:
        return self.server.port

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.server.close(grace=2.0)
