"""The OpenAI-compatible API: routes, auth, the error handler and the per-request record.

``Gateway(settings)`` holds the live state (engines, router, metrics, access
log); ``start()`` / ``close()`` are its lifespan, and the instance itself is
the request handler that :class:`ark.wire.Server` calls.
"""

from __future__ import annotations

import array
import asyncio
import base64
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import orjson

from ark.arbiter import service as gpu_service
from ark.arbiter.drivers import DriverError
from ark.arbiter.policy import GB
from ark.arbiter.service import GpuService
from ark.auth.identity import IdentityCollector, IdentityVerifier
from ark.auth.revocation import LiveSessions
from ark.auth.signing import load_secret
from ark.auth.users import UserStore
from ark.config import Settings
from ark.edge.certs import certbot_live
from ark.edge.forwarded import direct_local
from ark.engines import build_engines
from ark.engines.base import ChatRequest, CompletionRequest, EmbeddingRequest, Engine, Json
from ark.engines.ollama import OllamaEngine
from ark.errors import (
    AdminOnly,
    ApiError,
    AuthenticationError,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    PermissionDenied,
    QueueFull,
    UnknownUrl,
    UpstreamError,
    UpstreamTimeout,
)
from ark.gateway import requests as parse
from ark.gateway.accesslog import FLUSH_S as ACCESS_LOG_FLUSH_S
from ark.gateway.accesslog import AccessLog
from ark.gateway.admin import Admin
from ark.gateway.budgets import FREE, Budgets, Shortfall, prices
from ark.gateway.exchange import JSON_HEADERS, UNKNOWN_MODEL, Exchange, error_body, request_id
from ark.gateway.leases import STALE_S, Leases
from ark.gateway.leases import TICK_S as LEASE_TICK_S
from ark.gateway.metrics import LATENCY_BUCKETS, Metrics
from ark.gateway.ratelimits import RateLimits
from ark.gateway.ratelimits import Shortfall as RateShortfall
from ark.gateway.ratelimits import headers as rate_headers
from ark.gateway.router import ModelRouter, Route
from ark.gateway.streaming import relay
from ark.monitor.recent import Recent, Sample
from ark.periodic import every
from ark.store import Key, Store, Team, key_id
from ark.store.ledger import Ledger, prune
from ark.supervisor import Supervisor
from ark.wire import Request, Responder

log = logging.getLogger("ark.gateway")
_PS_POLL_S = 15.0  # how often (at most) Ollama engines are asked what they hold in memory

_KEYS_RELOAD_S = 5.0
_KEY_LOOKUPS_PER_S = 10.0  # unknown keys looked up in the database (a key made on another gateway)
_PRUNE_EVERY_S = 6 * 3600.0
Handler = Callable[[Request, Responder, Exchange], Awaitable[None]]


class UnknownKey(AuthenticationError):
    """Not among the keys in memory; perhaps made a moment ago on another gateway."""

    def __init__(self, ident: str) -> None:
        super().__init__("Incorrect API key provided.")
        self.ident = ident


async def send_error(responder: Responder, exc: ApiError) -> None:
    headers = [*JSON_HEADERS, *exc.headers]
    if exc.retry_after is not None:
        headers.append(("retry-after", str(max(1, round(exc.retry_after)))))
    await responder.send(exc.status, error_body(exc), headers)


class Gateway:
    """The gateway's live state; calling it handles one HTTP request."""

    def __init__(self, settings: Settings, engines: Sequence[Engine] | None = None, store: Store | None = None) -> None:
        self.settings = settings
        self.store = store
        self._keys: dict[str, Key] = {}  # key id (sha256) -> key, reloaded from the store
        self._lookups, self._lookups_at = _KEY_LOOKUPS_PER_S, 0.0  # a bucket of database lookups of unknown keys
        self._teams: dict[str, Team] = {}
        self.ledger: Ledger | None = None
        self.leases: Leases | None = None  # several gateways on one database
        self.gpu: GpuService | None = None  # the GPU arbiter, when it manages an engine
        self.services: list[dict[str, str]] = []  # third-party services `ark up` runs (absent ones too)
        self.recent = Recent(settings.console.overview_sample_s, LATENCY_BUCKETS)  # the console's last hour
        self.supervisor: Supervisor | None = None
        self._shared = settings.store.is_shared
        self.budgets = Budgets(shared=self._shared)
        self.prices = prices(settings.models)
        self._fixed_options = {m.id: m.fixed_options for m in settings.models if m.fixed_options}
        self.engines: list[Engine] = list(engines) if engines is not None else build_engines(settings)
        self.router = ModelRouter(self.engines, settings, announce=True)
        self.metrics = Metrics()
        self.engine_models: dict[str, list[Json]] = {}  # engine -> what it has loaded (Ollama's /api/ps)
        self.metrics.watch_engines(lambda: self.engines, self._engine_up, lambda: self.engine_models)
        self.metrics.watch_budgets(self.budgets)
        self.metrics.watch_gpu(lambda: self.gpu)
        self.metrics.watch_certificates(
            settings.monitor.certificates or str(certbot_live(settings.data_dir) / "*" / "cert.pem")
        )
        self.identity: IdentityVerifier | None = None  # X-Ark-Identity tokens: who a UI's request is for
        self.secret: bytes | None = None  # DATA/auth.key, read at start
        self.metrics.registry.register(IdentityCollector(lambda: self.identity))
        self.rates = RateLimits(self.metrics.count_rate_limited, shared=self._shared)
        self._master = settings.master_key.value.encode()
        self._max_inflight = settings.gateway.max_inflight
        self._log_prompts = settings.gateway.log_prompts
        self.access_log: AccessLog | None = None
        self._tasks: list[asyncio.Task[None]] = []
        api = self._api
        self._routes: dict[tuple[str, str], Callable[[Request, Responder], Awaitable[None]]] = {}
        for prefix in ("/v1", ""):  # OpenAI-compatible servers commonly accept both
            self._routes[("POST", prefix + "/chat/completions")] = api(self.chat_completions)
            self._routes[("POST", prefix + "/completions")] = api(self.completions)
            self._routes[("POST", prefix + "/embeddings")] = api(self.embeddings)
            self._routes[("GET", prefix + "/models")] = api(self.list_models)
        self._retrieve_model = api(self.retrieve_model)
        self._routes[("GET", "/health/live")] = self.live
        self._routes[("GET", "/health/ready")] = self.ready
        self._routes[("GET", "/metrics")] = self.prometheus

    def _engine_up(self, name: str) -> bool:
        state = self.router.state.get(name)
        return state is not None and state.up

    # -- lifespan ---------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.store is None:
            self.store = await asyncio.to_thread(Store.open, self.settings)
        await self.reload_keys()
        self.secret = await asyncio.to_thread(load_secret, self.settings.data_dir)  # the console signs with it too
        # tokens count while their session lives: the console in this process reports sign-outs to the same view
        self.identity = IdentityVerifier(self.secret, LiveSessions(UserStore(self.store.engine).is_live))
        self.ledger = Ledger(
            self.store.engine, self.settings.data_dir / "ledger", shared=self._shared, on_ingested=self.budgets.ingested
        )
        await asyncio.to_thread(self.ledger.open)
        if self._shared:
            self.leases = Leases(self.store.engine, self.ledger, self.budgets, self.rates)
            await self.leases.start()
            self._background(
                every(LEASE_TICK_S, self.leases.tick, log=log, failure="leases: talking to the database failed"),
                "ark-leases",
            )
        for method_path, handler in Admin(self.store, self.reload_keys).routes().items():
            self._routes[method_path] = self._admin(handler)
        self._routes[("GET", "/admin/services")] = self._admin(self.services_status)
        self._routes[("GET", "/admin/gpu")] = self._admin(self.gpu_status)
        self._routes[("POST", "/admin/gpu/load")] = self._admin(self.gpu_load)
        self._routes[("POST", "/admin/gpu/unload")] = self._admin(self.gpu_unload)
        self._routes[("POST", "/admin/gpu/leases")] = self._admin(self.gpu_lease)
        self._routes[("POST", "/admin/gpu/free-comfyui")] = self._admin(self.gpu_free_comfy)
        self._release_lease = self._admin(self.gpu_release)
        gateway = self.settings.gateway
        self.access_log = AccessLog(
            gateway.access_log, self.settings.logs_dir, gateway.access_log_max_bytes, gateway.access_log_keep
        )
        for engine in self.engines:
            await engine.start()
        try:
            self.gpu = await gpu_service.start(self.settings, self.engines)
        except Exception:
            log.exception("GPU arbiter: could not start; requests go to the engines without it")
        # Probing engines runs beside serving: /health/ready turns 200 once it is done.
        self._background(self._first_refresh(), "ark-router-first-refresh")
        self._background(
            every(
                self.recent.interval, lambda: self.recent.take(self), log=log, failure="sampling failed", at_once=True
            ),
            "ark-recent",
        )
        self._background(
            every(
                min(_PS_POLL_S, self.settings.gateway.model_refresh_s),
                self._poll_loaded,
                log=log,
                failure="polling /api/ps failed",
                at_once=True,
            ),
            "ark-engine-ps",
        )
        refresh_s = self.settings.gateway.model_refresh_s
        if self.gpu is not None:  # models installed since the start join the arbiter's catalog
            self._background(
                every(refresh_s, self.gpu.refresh, log=log, failure="GPU arbiter: refreshing the catalog failed"),
                "ark-gpu-refresh",
            )
        self._background(
            every(refresh_s, self.router.refresh, log=log, failure="refreshing the model list failed"),
            "ark-router-refresh",
        )
        # Other processes (a second gateway on the same database) change keys too.
        self._background(
            every(_KEYS_RELOAD_S, self.reload_keys, log=log, failure="reloading keys failed; keeping the last ones"),
            "ark-keys-reload",
        )
        self._background(self.ledger.run(), "ark-ledger")
        self._background(
            every(_PRUNE_EVERY_S, self._prune, log=log, failure="ledger: pruning failed", at_once=True),
            "ark-ledger-prune",
        )
        self._background(
            every(ACCESS_LOG_FLUSH_S, self.access_log.flush, log=log, failure="access log: writing failed"),
            "ark-access-log",
        )

    def _background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.create_task(work, name=name))

    async def _prune(self) -> None:
        assert self.store is not None
        days = self.settings.store.retention_days
        deleted = await asyncio.to_thread(prune, self.store.engine, days)
        if deleted:
            log.info("ledger: pruned %d rows older than %d days", deleted, days)

    async def reload_keys(self) -> None:
        """Read every key and team (a few thousand rows at most) into memory: auth is a dict lookup."""
        assert self.store is not None
        store = self.store.keys
        self.budgets.roll_all(datetime.now(UTC))
        if self.budgets.rolled:
            rolled, self.budgets.rolled = self.budgets.rolled, {}
            await asyncio.to_thread(store.reset_periods, rolled)
        keys, teams = await asyncio.to_thread(lambda: (store.list_keys(), store.list_teams()))
        self._keys = {k.id: k for k in keys}
        self._teams = {t.id: t for t in teams}
        self.budgets.sync(keys, teams)
        self.rates.sync(keys, teams, time.monotonic())

    async def _first_refresh(self) -> None:
        try:
            await self.router.refresh()
        except Exception:
            log.exception("probing the engines failed")
            self.router.ready.set()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.gpu is not None:
            await self.gpu.close()
        for engine in self.engines:
            await engine.close()
        if self.access_log is not None:
            self.access_log.close()
        if self.ledger is not None:
            await self.ledger.close()
        if self.leases is not None:
            try:
                await self.leases.close()
            except Exception:
                log.exception("giving back the leases failed; other gateways reclaim them in %.0f s", STALE_S)
        if self.store is not None:
            self.store.close()

    def refused(self, status: int) -> None:
        """The server refused a request before it reached a handler (413, 400): count it anyway."""
        self.metrics.refused(UNKNOWN_MODEL, status)

    # -- dispatch ---------------------------------------------------------------------------------
    async def __call__(self, request: Request, responder: Responder) -> None:
        handler = self._routes.get((request.method, request.path))
        if handler is not None:
            await handler(request, responder)
        elif request.method == "GET" and request.path.startswith(("/v1/models/", "/models/")):
            await self._retrieve_model(request, responder)
        elif request.method == "DELETE" and request.path.startswith("/admin/gpu/leases/"):
            await self._release_lease(request, responder)
        else:
            await send_error(responder, UnknownUrl(f"Unknown request URL: {request.method} {request.path}."))

    def _authenticate(self, request: Request) -> Key | None:
        """The caller's virtual key, or None for the master key; 401 for anything else."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError("Missing API key. Send it as 'Authorization: Bearer <key>'.")
        # compare_digest takes time independent of where the strings differ
        if self._master and hmac.compare_digest(token.encode(), self._master):
            return None
        ident = key_id(token)
        key = self._keys.get(ident)  # a dict lookup by SHA-256: no timing signal about the key
        if key is None:
            raise UnknownKey(ident)
        if key.blocked:
            raise AuthenticationError(f"The key {key.key_prefix}… is blocked.")
        if key.expires_at is not None and key.expired(datetime.now(UTC)):
            raise AuthenticationError(f"The key {key.key_prefix}… expired at {key.expires_at:%Y-%m-%d %H:%M} UTC.")
        team = self._teams.get(key.team_id) if key.team_id else None
        if team is not None and team.blocked:
            raise AuthenticationError(f"The team of key {key.key_prefix}… is blocked.")
        return key

    async def _authenticate_new(self, request: Request, miss: UnknownKey) -> Key | None:
        """Look an unknown key up in the database, a few times a second at most: if it is there, reload."""
        now = time.monotonic()
        self._lookups = min(_KEY_LOOKUPS_PER_S, self._lookups + (now - self._lookups_at) * _KEY_LOOKUPS_PER_S)
        self._lookups_at = now
        if self._lookups < 1 or self.store is None:
            raise miss
        self._lookups -= 1
        if await asyncio.to_thread(self.store.keys.get_key, miss.ident) is None:
            raise miss
        await self.reload_keys()
        return self._authenticate(request)

    def _admin(
        self, handler: Callable[[Request, Responder], Awaitable[None]]
    ) -> Callable[[Request, Responder], Awaitable[None]]:
        """Management routes: the master key only, errors in OpenAI's shape."""

        async def wrapped(request: Request, responder: Responder) -> None:
            try:
                if self._authenticate(request) is not None:
                    raise AdminOnly("Only the master key may manage keys and teams.")
                await handler(request, responder)
            except ApiError as exc:
                await send_error(responder, exc)

        return wrapped

    def _api(self, handler: Handler) -> Callable[[Request, Responder], Awaitable[None]]:
        """Wrap an API handler: auth, admission, the one error handler, metrics and the access log."""

        async def wrapped(request: Request, responder: Responder) -> None:
            ex = Exchange(request.path, time.perf_counter(), request_id())
            responder.on_finish = lambda status: self._record(ex)
            responder.extra_head = b"x-request-id: %s\r\n" % ex.request_id.encode()
            self.metrics.inflight += 1
            try:
                try:
                    ex.key = self._authenticate(request)
                except UnknownKey as miss:
                    ex.key = await self._authenticate_new(request, miss)
                ex.authenticated = True
                token = request.headers.get("x-ark-identity")
                if token is not None and self.identity is not None:  # attribution only: it grants nothing
                    identity = await self.identity.verify(token)
                    ex.person = identity.name if identity is not None else None
                if self.leases is not None:
                    ex.admission = await self.leases.admit(ex.key)
                else:
                    admission = self.rates.admit(ex.key, time.monotonic())
                    assert not isinstance(admission, RateShortfall)  # only with a shared database
                    ex.admission = admission
                if ex.admission is not None:
                    responder.extra_head += rate_headers(ex.admission.states[0])
                if self.metrics.inflight > self._max_inflight:
                    raise QueueFull(
                        f"The gateway is serving {self._max_inflight} requests; retry shortly.", retry_after=1.0
                    )
                await handler(request, responder, ex)
            except ApiError as exc:
                ex.fail(exc)
                if not responder.started:
                    await send_error(responder, exc)
            except (asyncio.CancelledError, ConnectionResetError):
                ex.status, ex.error = 499, "client_closed_request"  # nginx's code for it
                raise
            except Exception as exc:
                log.exception("unexpected error serving %s", request.path)
                ex.status, ex.error = 500, "internal_error"
                if responder.started:
                    raise
                await send_error(responder, ApiError(f"Internal error: {type(exc).__name__}"))
            finally:
                self.metrics.inflight -= 1
                if responder.on_finish is not None:  # no response went out (the client left): record now
                    responder.on_finish = None
                    self._record(ex)

        return wrapped

    def _record(self, ex: Exchange) -> None:
        elapsed = time.perf_counter() - ex.started
        ex.cost = ex.price.cost(ex.prompt_tokens, ex.completion_tokens, elapsed)
        tokens = ex.prompt_tokens + ex.completion_tokens
        self.budgets.settle(ex.reservation, ex.cost, tokens)
        if ex.lease is not None:
            ex.lease.release()
            if ex.status == 504 and self.gpu is not None:  # the engine may hang: the arbiter checks it
                self.gpu.arbiter.suspect(ex.model)
        RateLimits.finish(ex.admission, tokens, time.monotonic())
        if ex.cost:
            self.metrics.add_spend(ex.key_label, ex.cost)
        self.metrics.observe(ex.model, ex.status, elapsed, ex.ttft, ex.prompt_tokens, ex.completion_tokens)
        if self.access_log is not None:
            self.access_log.write(ex.record(elapsed, self._log_prompts))
        if self.ledger is not None and ex.authenticated:
            self.ledger.record(ex.usage_row(elapsed))

    async def _resolve(self, body: Json, ex: Exchange, prompt_bytes: int, max_completion: int | None) -> Route:
        """Route the model, check the key may use it, and reserve what the request can cost on its budgets."""
        route = await self.router.resolve(parse.model_name(body))
        ex.model, ex.alias = route.model, route.requested if route.requested != route.model else None
        key = ex.key
        if key is not None and not self._may_use(key, route.requested, route.model):
            raise PermissionDenied(
                f"The key {key.key_prefix}… is not allowed to use the model '{route.requested}'.", param="model"
            )
        ex.price = self.prices.get(route.model, FREE)
        if key is None:
            return route  # the master key has no budget
        # prompt tokens <= prompt bytes for the byte-fallback tokenizers of LLMs: a safe upper bound
        timeout, now = route.engine.settings.total_timeout, datetime.now(UTC)
        if self.leases is not None:
            ex.reservation = await self.leases.reserve(key, ex.price, prompt_bytes, max_completion, timeout, now)
        else:
            reservation = self.budgets.reserve(key, ex.price, prompt_bytes, max_completion, timeout, now)
            assert not isinstance(reservation, Shortfall)  # only with a shared database
            ex.reservation = reservation
        return route

    # -- generation -------------------------------------------------------------------------------
    async def chat_completions(self, request: Request, responder: Responder, ex: Exchange) -> None:
        body = parse.parse_body(request.body)
        common = parse.common(body)
        messages = parse.messages(body)
        route = await self._resolve(body, ex, len(request.body), common.sampling.max_tokens)
        ex.prompt = messages if self._log_prompts else None
        req = ChatRequest(
            route.model,
            messages,
            common.sampling,
            common.stream,
            _engine_body(body, route, self._fixed_options),
            common.keep_alive,
        )
        engine = route.engine
        await self._generate(
            responder, ex, route, common, lambda: engine.chat_stream(req), lambda: engine.chat(req), chat=True
        )

    async def completions(self, request: Request, responder: Responder, ex: Exchange) -> None:
        body = parse.parse_body(request.body)
        common = parse.common(body)
        prompt = parse.prompt(body)
        route = await self._resolve(body, ex, len(request.body), common.sampling.max_tokens)
        ex.prompt = prompt if self._log_prompts else None
        req = CompletionRequest(
            route.model,
            prompt,
            common.sampling,
            common.stream,
            _engine_body(body, route, self._fixed_options),
            common.keep_alive,
        )
        engine = route.engine
        await self._generate(
            responder, ex, route, common, lambda: engine.complete_stream(req), lambda: engine.complete(req), chat=False
        )

    async def _generate(
        self,
        responder: Responder,
        ex: Exchange,
        route: Route,
        common: parse.Common,
        stream: Callable[[], AsyncIterator[Json]],
        call: Callable[[], Awaitable[Json]],
        *,
        chat: bool,
    ) -> None:
        """Answer a chat or text completion: relayed as SSE, or whole under the engine's deadline."""
        if self.gpu is not None:  # the model is resident and held until the response ends
            ex.lease = await self.gpu.lease(route.model, route.engine.managed)
        if common.stream:
            await relay(responder, ex, route, stream(), common.include_usage, chat=chat, keep_text=self._log_prompts)
            return
        async with route.engine.limiter, _deadline(route.engine):
            result = await call()
        result["model"] = route.requested
        usage = result.get("usage") or {}
        ex.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        ex.completion_tokens = int(usage.get("completion_tokens") or 0)
        if self._log_prompts:
            choice = (result.get("choices") or [{}])[0]
            ex.output = (choice.get("message") or {}).get("content") if chat else choice.get("text")
        await responder.send(200, orjson.dumps(result), JSON_HEADERS)

    async def embeddings(self, request: Request, responder: Responder, ex: Exchange) -> None:
        body = parse.parse_body(request.body)
        inputs, encoding = parse.embedding_inputs(body)
        keep_alive = parse.keep_alive(body)
        route = await self._resolve(body, ex, len(request.body), 0)
        engine_body = _engine_body(body, route, self._fixed_options)
        engine_body.pop("encoding_format", None)  # engines answer floats; base64 is encoded here
        engine = route.engine
        if self.gpu is not None:
            ex.lease = await self.gpu.lease(route.model, route.engine.managed)
        async with engine.limiter, _deadline(engine):
            result = await engine.embed(EmbeddingRequest(route.model, inputs, engine_body, keep_alive))
        result["model"] = route.requested
        if encoding == "base64":
            for item in result.get("data") or []:
                item["embedding"] = base64.b64encode(array.array("f", item["embedding"]).tobytes()).decode()
        ex.prompt_tokens = int((result.get("usage") or {}).get("prompt_tokens") or 0)
        await responder.send(200, orjson.dumps(result), JSON_HEADERS)

    # -- the rest of the API ----------------------------------------------------------------------
    def _may_use(self, key: Key | None, requested: str, served: str) -> bool:
        if key is None:
            return True
        team = self._teams.get(key.team_id) if key.team_id else None
        return key.allows(requested, served) and (team is None or team.allows(requested, served))

    async def list_models(self, request: Request, responder: Responder, ex: Exchange) -> None:
        data = []
        for name, info, target in self.router.names():
            if not self._may_use(ex.key, name, target or name):
                continue  # a key sees the models it may use
            owned_by = info.owned_by if info else (f"alias of {target}" if target else "ark")
            data.append({"id": name, "object": "model", "created": info.created if info else 0, "owned_by": owned_by})
        await responder.send(200, orjson.dumps({"object": "list", "data": data}), JSON_HEADERS)

    async def retrieve_model(self, request: Request, responder: Responder, ex: Exchange) -> None:
        name = request.path.split("/models/", 1)[1]
        route = await self.router.resolve(name)
        if not self._may_use(ex.key, route.requested, route.model):
            raise ModelNotFound(name)  # as OpenAI: "does not exist or you do not have access to it"
        info = next((m for m in self.router.models if m.id == route.model), None)
        model = {
            "id": route.requested,
            "object": "model",
            "created": info.created if info else 0,
            "owned_by": info.owned_by if info else "ark",
        }
        await responder.send(200, orjson.dumps(model), JSON_HEADERS)

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

    def sample(self) -> Sample:
        """Now, for the console's last hour: counters, and what holds the GPU."""
        requests, errors, tokens, latency = self.metrics.totals()
        gpu = None
        if self.gpu is not None:
            status = self.gpu.status()
            reading = status["reading"]
            gpu = {
                "device": status["device"],
                "capacity_bytes": status["capacity_bytes"],
                "models": {m["model"]: m["memory_bytes"] for m in status["models"] if m["resident"]},
                "comfyui_bytes": (status["comfyui"] or {}).get("used_bytes", 0),
                "leases_bytes": status["held_bytes"],
                "external_bytes": status["external_bytes"],
                "queue": status["queue"],
                "temperature_c": reading["temperature_c"],
                "power_w": reading["power_w"],
                "utilization": reading["utilization"],
            }
        spend = sum(self.metrics.spend.values())
        return Sample(time.time(), requests, errors, tokens, self.metrics.inflight, latency, spend, gpu)

    def overview(self) -> dict[str, Any]:
        """The console's live overview: the last hour, and whether each part of ARK is up."""
        health = [{"name": "gateway", "state": "running" if self.router.ready.is_set() else "starting", "why": ""}]
        health += [
            {"name": f"engine {name}", "state": "running" if s.up else "down", "why": s.error or ""}
            for name, s in self.router.state.items()
        ]
        return {**self.recent.overview(), "health": [*health, *self._services()]}

    async def services_status(self, request: Request, responder: Responder) -> None:
        """The third-party services `ark up` runs: running (with pid, restarts), failed, or absent and why."""
        await responder.send(200, orjson.dumps({"services": self._services()}), JSON_HEADERS)

    def _services(self) -> list[dict[str, Any]]:
        """What `ark up` said of each service at start (absent and why), with the supervisor's live state."""
        live = {s["name"]: s for s in self.supervisor.status()} if self.supervisor is not None else {}
        return [{**entry, **live.get(entry["name"], {})} for entry in self.services]

    async def gpu_status(self, request: Request, responder: Responder) -> None:
        """The arbiter's view (master key): resident models, leases, queue, counters."""
        status = self.gpu.status() if self.gpu is not None else {"enabled": False, "models": []}
        await responder.send(200, orjson.dumps(status), JSON_HEADERS)

    async def gpu_load(self, request: Request, responder: Responder) -> None:
        await self._gpu_action(request, responder, "load")

    async def gpu_unload(self, request: Request, responder: Responder) -> None:
        await self._gpu_action(request, responder, "unload")

    async def _gpu_action(self, request: Request, responder: Responder, action: str) -> None:
        body = parse.parse_body(request.body)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("'model' must be the name of a model.", param="model")
        if self.gpu is None or model not in self.gpu.arbiter.catalog:
            raise ModelNotFound(model)  # the arbiter manages no such model
        result = await (self.gpu.load(model) if action == "load" else self.gpu.unload(model))
        await responder.send(200, orjson.dumps(result), JSON_HEADERS)

    async def gpu_lease(self, request: Request, responder: Responder) -> None:
        """An external lease (a render, a ComfyUI job): answered once the memory is set aside."""
        body = parse.parse_body(request.body)
        if self.gpu is None:
            raise InvalidRequest("The GPU arbiter is off: there is no memory to lease.")
        holder, memory_gb, priority, seconds = parse.gpu_lease(body)
        hold = await self.gpu.arbiter.hold(holder, int(memory_gb * GB), priority, seconds)
        await responder.send(200, orjson.dumps(hold.describe(self.gpu.arbiter.clock.now())), JSON_HEADERS)

    async def gpu_free_comfy(self, request: Request, responder: Responder) -> None:
        if self.gpu is None or self.gpu.drivers.comfy is None:
            raise InvalidRequest("No ComfyUI is configured: set [gpu] comfyui_url.")
        try:
            result = await self.gpu.free_comfy()
        except DriverError as exc:
            raise UpstreamError(f"Freeing ComfyUI failed: {exc}") from None
        await responder.send(200, orjson.dumps(result), JSON_HEADERS)

    async def gpu_release(self, request: Request, responder: Responder) -> None:
        lease_id = request.path.rsplit("/", 1)[1]
        hold = self.gpu.arbiter.holds.get(lease_id) if self.gpu is not None else None
        if hold is None:
            raise NotFound(f"No GPU lease '{lease_id[:40]}' is held (it may have expired).", param="id")
        hold.release()
        await responder.send(200, orjson.dumps({"id": hold.id, "released": True}), JSON_HEADERS)

    async def live(self, request: Request, responder: Responder) -> None:
        await responder.send(200, b'{"status":"ok"}', JSON_HEADERS)

    async def ready(self, request: Request, responder: Responder) -> None:
        ready = self.router.ready.is_set()
        engines = {
            name: {"up": s.up, "models": s.models, **({"error": s.error} if s.error else {})}
            for name, s in self.router.state.items()
        }
        body = orjson.dumps({"status": "ready" if ready else "starting", "engines": engines})
        await responder.send(200 if ready else 503, body, JSON_HEADERS)

    async def prometheus(self, request: Request, responder: Responder) -> None:
        # Prometheus scrapes locally; anyone else, and anything through Nginx (llm.D), needs the master key
        if not direct_local(request):
            try:
                if self._authenticate(request) is not None:
                    raise AdminOnly("Only the master key may read /metrics from another host or through a proxy.")
            except ApiError as exc:
                await send_error(responder, exc)
                return
        await responder.send(200, self.metrics.render(), [("content-type", "text/plain; version=0.0.4")])


def _engine_body(body: Json, route: Route, fixed: Mapping[str, dict[str, int]] | None = None) -> Json:
    """The client's body as an engine receives it: the engine's model id, no ARK-only fields, and the
    options the model's config fixes (num_ctx...) over the client's, so that no client makes Ollama reload."""
    engine_body = {**body, "model": route.model}
    engine_body.pop("keep_alive", None)
    options = fixed.get(route.model) if fixed else None
    if options:
        client = body.get("options")
        engine_body["options"] = {**(client if isinstance(client, dict) else {}), **options}
    return engine_body


@asynccontextmanager
async def _deadline(engine: Engine) -> AsyncIterator[None]:
    """The engine's total timeout around a non-streamed request, as a 504 that names the engine."""
    seconds = engine.settings.total_timeout
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise UpstreamTimeout(f"Engine '{engine.name}' did not answer within {seconds:g} s.") from None
