"""The composition root: what every subsystem shares, opened once, and the components `ark up` starts.

:class:`Runtime` opens the shared parts (the store, the secret and identity check, the metrics
registry, budgets and rate limits behind one admission object (in memory, or allotments through a
shared database), the ledger, the access log, the engines and the model router, the
GPU arbiter, the supervisor) and the gateway's listener with its router. Each subsystem is a
:class:`Component`: on ``start`` it adds its routes (``rt.http``), opens its own listeners
(``rt.listen``) and starts its background work (``rt.background``); ``services`` names the
third-party programs it asks the supervisor to run; ``status`` says how it is, for ``/health/ready``,
``/admin/services`` and the console. :data:`COMPONENTS` is the list `ark up` starts, and the only
place that knows it: a new subsystem is a new package plus one line here (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from ark.arbiter import service as gpu_service
from ark.arbiter.service import GpuService
from ark.auth.identity import IdentityCollector, IdentityVerifier
from ark.auth.revocation import LiveSessions
from ark.auth.signing import load_secret
from ark.auth.users import UserStore
from ark.clock import SYSTEM, Clock
from ark.config import Settings
from ark.console.server import MAX_CONNECTIONS as CONSOLE_CONNECTIONS
from ark.edge.certs import certbot_live
from ark.engines import build_engines
from ark.engines.base import Engine, Json
from ark.engines.ollama import OllamaEngine
from ark.errors import ApiError, ListenError, UnknownUrl
from ark.gateway.accesslog import FLUSH_S as ACCESS_LOG_FLUSH_S
from ark.gateway.accesslog import AccessLog
from ark.gateway.admission import Gate, LocalAdmission
from ark.gateway.allotments import STALE_S, Allotments
from ark.gateway.allotments import TICK_S as ALLOTMENT_TICK_S
from ark.gateway.budgets import Budgets
from ark.gateway.exchange import UNKNOWN_MODEL, send_error
from ark.gateway.front import Front
from ark.gateway.metrics import Metrics
from ark.gateway.ratelimits import RateLimits
from ark.gateway.router import ModelRouter
from ark.periodic import every
from ark.store import Store
from ark.store.ledger import Ledger, prune
from ark.supervisor import ServiceSpec, StartFailed, Supervisor
from ark.wire import Limits, Request, Responder, Router, Server

log = logging.getLogger("ark.runtime")
_PS_POLL_S = 15.0  # how often (at most) Ollama engines are asked what they hold in memory
_KEYS_RELOAD_S = 5.0
_PRUNE_EVERY_S = 6 * 3600.0


@dataclass(frozen=True, slots=True)
class Status:
    """One part of a component, as health checks and the console show it."""

    name: str
    state: str  # running, starting, absent, failed, stopped
    why: str = ""
    ready: bool = True  # False holds /health/ready at 503 (a part the component cannot serve without)


class Component:
    """A subsystem. Override what it needs; every method has a default that does nothing."""

    name = "component"

    async def start(self, rt: Runtime) -> None:
        """Add routes (``rt.http.add``), open listeners (``rt.listen``), start work (``rt.background``)."""

    async def close(self) -> None:
        """Stop what ``start`` began (listeners and background tasks the runtime closes itself)."""

    def services(self, rt: Runtime) -> Sequence[ServiceSpec]:
        """Third-party programs the supervisor runs for this component (started after ``start``)."""
        return ()

    def status(self) -> list[Status]:
        return []


class ServicesComponent(Component):
    """A component whose parts are third-party programs the supervisor runs: what it found at start
    (``report``, until the supervisor's live state replaces it) and what it asks to run (``specs``)."""

    def __init__(self) -> None:
        self.report: list[Status] = []
        self.specs: list[ServiceSpec] = []

    def services(self, rt: Runtime) -> Sequence[ServiceSpec]:
        return self.specs

    def status(self) -> list[Status]:
        return list(self.report)

    def not_installed(self, mode: str, names: Sequence[str], install: str) -> None:
        """Reported absent (``mode`` auto) or failed (yes) with the command that installs them."""
        state = "failed" if mode == "yes" else "absent"
        self.report = [Status(name, state, f"not installed: run {install}") for name in names]


async def _unknown_url(request: Request, responder: Responder, allowed: tuple[str, ...]) -> None:
    await send_error(responder, UnknownUrl(f"Unknown request URL: {request.method} {request.path}."))


class Runtime:
    """What the components share. ``open()`` / ``close()`` are its lifespan."""

    def __init__(
        self,
        settings: Settings,
        engines: Sequence[Engine] | None = None,
        store: Store | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        self.settings = settings
        self.clock = clock  # key expiry, budget periods, rate-limit windows: a test moves it on
        self.store = store
        self.shared = settings.store.is_shared  # several gateways on one database: budgets allotted from it
        self.metrics = Metrics()
        self.budgets = Budgets(shared=self.shared)
        self.rates = RateLimits(self.metrics.count_rate_limited, shared=self.shared)
        self.engines: list[Engine] = list(engines) if engines is not None else build_engines(settings)
        self.models = ModelRouter(self.engines, settings, announce=True)
        self.engine_models: dict[str, list[Json]] = {}  # engine -> what it has loaded (Ollama's /api/ps)
        self.supervisor = Supervisor(settings.logs_dir)
        self.secret: bytes | None = None  # DATA/auth.key, read at open
        self.identity: IdentityVerifier | None = None  # X-Ark-Identity tokens: who a UI's request is for
        self.ledger: Ledger | None = None
        self.allotments: Allotments | None = None  # only with a shared database
        # may a key's request start, and what may it cost: in memory, or shared through the database
        self.admission: Gate = LocalAdmission(self.rates, self.budgets, clock)
        self.access_log: AccessLog | None = None
        self.gpu: GpuService | None = None  # the GPU arbiter, when it manages an engine
        self.front = Front(self)  # authentication, admission, budgets, metrics and the access log of API requests
        self.http = Router(not_found=_unknown_url)  # the gateway listener's routes ([gateway] listen)
        self.components: list[Component] = []
        # models that no engine serves (image models): each component that has some lists them here, for
        # GET /v1/models; an entry is {"id", "kind", "owned_by", "created"}
        self.other_models: list[Callable[[], list[dict[str, Any]]]] = []
        self.started = False  # every component started
        self.listeners: dict[str, Server] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._service_failures: dict[str, str] = {}  # service -> why it could not start
        self.metrics.watch_engines(lambda: self.engines, self._engine_up, lambda: self.engine_models)
        self.metrics.watch_budgets(self.budgets)
        self.metrics.watch_gpu(lambda: self.gpu)
        self.metrics.watch_certificates(
            settings.monitor.certificates or str(certbot_live(settings.data_dir) / "*" / "cert.pem")
        )
        self.metrics.registry.register(IdentityCollector(lambda: self.identity))

    def _engine_up(self, name: str) -> bool:
        state = self.models.state.get(name)
        return state is not None and state.up

    # -- lifespan ---------------------------------------------------------------------------------
    async def open(self) -> None:
        settings = self.settings
        if self.store is None:
            self.store = await asyncio.to_thread(Store.open, settings)
        await self.front.reload_keys()
        self.secret = await asyncio.to_thread(load_secret, settings.data_dir)  # the console signs with it too
        # tokens count while their session lives: the console in this process reports sign-outs to the same view
        self.identity = IdentityVerifier(self.secret, LiveSessions(UserStore(self.store.engine).is_live))
        self.ledger = Ledger(
            self.store.engine, settings.data_dir / "ledger", shared=self.shared, on_ingested=self.budgets.ingested
        )
        await asyncio.to_thread(self.ledger.open)
        if self.shared:
            self.allotments = Allotments(self.store.engine, self.ledger, self.budgets, self.rates, self.clock)
            await self.allotments.start()
            self.admission = self.allotments
            failure = "allotments: talking to the database failed"
            tick = every(ALLOTMENT_TICK_S, self.allotments.tick, log=log, failure=failure)
            self.background(tick, "ark-allotments")
        gateway = settings.gateway
        self.access_log = AccessLog(
            gateway.access_log, settings.logs_dir, gateway.access_log_max_bytes, gateway.access_log_keep
        )
        for engine in self.engines:
            await engine.start()
        try:
            self.gpu = await gpu_service.start(settings, self.engines)
        except Exception:
            log.exception("GPU arbiter: could not start; requests go to the engines without it")
        # Probing engines runs beside serving: /health/ready turns 200 once it is done.
        self.background(self._first_refresh(), "ark-router-first-refresh")
        refresh_s = gateway.model_refresh_s
        poll_s = min(_PS_POLL_S, refresh_s)
        self.background(
            every(poll_s, self._poll_loaded, log=log, failure="polling /api/ps failed", at_once=True), "ark-engine-ps"
        )
        if self.gpu is not None:  # models installed since the start join the arbiter's catalog
            failure = "GPU arbiter: refreshing the catalog failed"
            self.background(every(refresh_s, self.gpu.refresh, log=log, failure=failure), "ark-gpu-refresh")
        failure = "refreshing the model list failed"
        self.background(every(refresh_s, self.models.refresh, log=log, failure=failure), "ark-router-refresh")
        # Other processes (a second gateway on the same database) change keys too.
        failure = "reloading keys failed; keeping the last ones"
        self.background(every(_KEYS_RELOAD_S, self.front.reload_keys, log=log, failure=failure), "ark-keys-reload")
        self.background(self.ledger.run(), "ark-ledger")
        self.background(
            every(_PRUNE_EVERY_S, self._prune, log=log, failure="ledger: pruning failed", at_once=True),
            "ark-ledger-prune",
        )
        flush = self.access_log.flush
        self.background(
            every(ACCESS_LOG_FLUSH_S, flush, log=log, failure="access log: writing failed"), "ark-access-log"
        )

    async def start(self, components: Sequence[Component]) -> None:
        """Start each component in order, then the services each asks for (beside serving: they may take
        seconds to get ready)."""
        for component in components:
            await component.start(self)
            self.components.append(component)
            for spec in component.services(self):
                self.background(self._supervise(spec), f"ark-service-{spec.name}")
        self.started = True  # /health/ready waits for it: every component's routes are there

    async def _supervise(self, spec: ServiceSpec) -> None:
        try:
            await self.supervisor.start(spec)
        except (StartFailed, ValueError, OSError) as exc:
            log.error("%s", exc)
            self._service_failures[spec.name] = str(exc).splitlines()[0]

    async def listen(self, name: str, host: str, port: int, handler: Any, limits: Limits | None = None) -> Server:
        """Serve ``handler`` on host:port until the runtime closes; ListenError when the port is taken."""
        server = Server(handler, limits, on_refused=self.refused)
        try:
            await server.start(host, port)
        except OSError as exc:
            raise ListenError(f"cannot listen on {host}:{port} ([{name}] listen): {exc.strerror}") from None
        self.listeners[name] = server
        return server

    def background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """A task that runs until the runtime closes (cancelled then); a failure is logged when it happens."""
        task = asyncio.create_task(work, name=name)
        task.add_done_callback(_log_failure)
        self._tasks.append(task)

    async def close(self) -> None:
        """Stop accepting and let requests in flight finish (a grace period), then close the components in
        reverse, the background work, the supervised services, the arbiter and the engines, and last what
        keeps records (access log, ledger, allotments, store). Each step runs whatever the one before did."""
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            *((f"listener {name}", server.close) for name, server in reversed(list(self.listeners.items()))),
            *((component.name, component.close) for component in reversed(self.components)),
            ("background tasks", self._cancel_tasks),
            ("supervised services", self.supervisor.close),
        ]
        if self.gpu is not None:
            steps.append(("GPU arbiter", self.gpu.close))
        steps += [(f"engine {engine.name}", engine.close) for engine in self.engines]
        if self.access_log is not None:
            steps.append(("access log", _call(self.access_log.close)))
        if self.ledger is not None:
            steps.append(("ledger", self.ledger.close))
        if self.allotments is not None:
            steps.append(("allotments", self.allotments.close))
        if self.store is not None:
            steps.append(("store", _call(self.store.close)))
        for what, step in steps:
            try:
                await step()
            except Exception:
                if what == "allotments":
                    log.exception("giving back the allotments failed; other gateways reclaim them in %.0f s", STALE_S)
                else:
                    log.exception("closing %s failed", what)

    async def _cancel_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- shared views -----------------------------------------------------------------------------
    def refused(self, status: int) -> None:
        """A listener refused a request before it reached a handler (413, 400, 429...): count it anyway."""
        self.metrics.refused(UNKNOWN_MODEL, status)

    def status(self) -> list[Status]:
        """Every component's parts, then each supervised service as the supervisor sees it."""
        found: list[Status] = []
        for component in self.components:
            try:
                found += component.status()
            except Exception as exc:  # one component's report must not take health down with it
                log.exception("%s: status failed", component.name)
                found.append(Status(component.name, "failed", f"status failed: {exc}", ready=False))
        live = {service["name"]: service["state"] for service in self.supervisor.status()}
        found = [replace(part, state=live[part.name]) if part.name in live else part for part in found]
        seen = {part.name for part in found}
        for name, state in live.items():
            if name not in seen:
                found.append(Status(name, state))
        for name, why in self._service_failures.items():
            if name not in seen and name not in self.supervisor.services:
                found.append(Status(name, "failed", why))
        return found

    def core_parts(self) -> list[dict[str, Any]]:
        """The gateway and each engine, as :meth:`services` shows a part: name, state (running, starting,
        down) and why."""
        parts = [{"name": "gateway", "state": "running" if self.models.ready.is_set() else "starting", "why": ""}]
        return parts + [
            {"name": f"engine {name}", "state": "running" if s.up else "down", "why": s.error or ""}
            for name, s in self.models.state.items()
        ]

    def services(self) -> list[dict[str, Any]]:
        """What `ark status` and /admin/services show of the components' parts: state and why, with the
        supervisor's live view (pid, restarts, log) for the ones it runs."""
        live = {s["name"]: s for s in self.supervisor.status()}
        return [
            {**{k: v for k, v in asdict(part).items() if k != "ready"}, **live.get(part.name, {})}
            for part in self.status()
        ]

    async def _first_refresh(self) -> None:
        try:
            await self.models.refresh()
        except Exception:
            log.exception("probing the engines failed")
            self.models.ready.set()

    async def _prune(self) -> None:
        assert self.store is not None
        days = self.settings.store.retention_days
        deleted = await asyncio.to_thread(prune, self.store.engine, days)
        if deleted:
            log.info("ledger: pruned %d rows older than %d days", deleted, days)

    async def _poll_loaded(self) -> None:
        """What each Ollama engine holds in memory (``/api/ps``), for ark_engine_model_memory_bytes."""
        for engine in self.engines:
            if not isinstance(engine, OllamaEngine):
                continue
            try:
                async with asyncio.timeout(5):
                    loaded = await engine.running()
            except (ApiError, OSError, TimeoutError):
                self.engine_models.pop(engine.name, None)  # down: it holds nothing we can see
            else:
                self.engine_models[engine.name] = [asdict(m) for m in loaded.values()]


def _call(fn: Callable[[], None]) -> Callable[[], Awaitable[None]]:
    async def step() -> None:
        fn()

    return step


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s failed", task.get_name(), exc_info=task.exception())


def _components() -> list[Component]:
    from ark.arbiter.api import GpuApi
    from ark.auth.api import AccountsApi
    from ark.automation.component import Automation
    from ark.backup.component import Backups
    from ark.chat import Chat
    from ark.console.component import ConsoleComponent
    from ark.events.component import Events
    from ark.gateway.admin import AdminApi
    from ark.gateway.health import HealthApi
    from ark.gateway.me import SelfServiceApi
    from ark.gateway.openai import OpenAIApi
    from ark.images.component import Images
    from ark.monitor.component import Monitoring
    from ark.ollama_api import OllamaApi

    return [
        OpenAIApi(),
        OllamaApi(),
        AdminApi(),
        AccountsApi(),
        SelfServiceApi(),
        GpuApi(),
        HealthApi(),
        Events(),
        ConsoleComponent(),
        Monitoring(),
        Chat(),
        Images(),
        Automation(),
        Backups(),
    ]


# What `ark up` starts, in order (each may use what the ones before it opened); closed in reverse.
COMPONENTS: Callable[[], list[Component]] = _components


async def serve(
    settings: Settings,
    *,
    components: Sequence[Component] | None = None,
    on_started: Callable[[Runtime], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run ARK until SIGINT/SIGTERM (or ``stop``): the runtime, the gateway's listener, the components."""
    rt = Runtime(settings)
    gateway = settings.gateway
    limits = Limits(
        max_body=gateway.max_body_bytes,
        head_timeout=gateway.head_timeout_s,
        write_timeout=gateway.write_timeout_s,
        max_connections=gateway.max_connections,
        max_per_client=gateway.max_connections_per_client,
    )
    # every connection is a file: a client's, and an engine's for each request in flight
    _open_files(gateway.max_connections + gateway.max_inflight + CONSOLE_CONNECTIONS + 1024)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
    for sig in signals:  # (a test runs ARK in a thread of its own: it stops it with ``stop``)
        loop.add_signal_handler(sig, stop.set)
    try:
        await rt.open()
        await rt.listen("gateway", gateway.listen.host, gateway.listen.port, rt.http, limits)
        await rt.start(COMPONENTS() if components is None else components)
        if on_started is not None:
            on_started(rt)
        await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        with contextlib.suppress(asyncio.CancelledError):
            await rt.close()


def _open_files(wanted: int) -> None:
    """Raise the soft limit on open files toward ``wanted`` (as far as the hard limit allows; nginx:
    worker_rlimit_nofile): Debian's soft default of 1024 would refuse connections long before the caps."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:  # a platform that reports a limit it does not let us reach
            log.warning("could not raise the open-files limit to %d: %s", target, exc)
            target = soft
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
