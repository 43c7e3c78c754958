"""The OpenAI-compatible API: routes, auth, the error handler, and the per-request record.

``create_app(settings)`` builds everything; clients, engines and the router
live in the application's state and are opened and closed by its lifespan.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from ark.config import Settings
from ark.engines import build_engines
from ark.engines.base import ChatRequest, CompletionRequest, EmbeddingRequest, Engine, Json
from ark.errors import ApiError, AuthenticationError, BodyTooLarge, InvalidRequest, QueueFull, UpstreamTimeout
from ark.gateway import requests as parse
from ark.gateway.accesslog import AccessLog
from ark.gateway.metrics import Metrics
from ark.gateway.router import ModelRouter, Route

log = logging.getLogger("ark.gateway")

_JSON = "application/json"
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_LOOPBACK = ("127.0.0.1", "::1")
UNKNOWN_MODEL = "unknown"


def error_body(exc: ApiError) -> bytes:
    """The one place that shapes errors: OpenAI's ``{"error": {message, type, param, code}}``."""
    return orjson.dumps({"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}})


def error_response(exc: ApiError) -> web.Response:
    headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if exc.retry_after is not None else None
    return web.Response(status=exc.status, body=error_body(exc), content_type=_JSON, headers=headers)


@dataclass(slots=True)
class Exchange:
    """What one API request did; recorded in metrics and the access log when it ends."""

    path: str
    started: float
    model: str = UNKNOWN_MODEL
    alias: str | None = None
    status: int = 200
    stream: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft: float | None = None
    error: str | None = None
    prompt: Any = None
    output: str | None = None


class Gateway:
    """Holds the gateway's live state; its bound methods are the aiohttp handlers."""

    def __init__(self, settings: Settings, engines: Sequence[Engine] | None = None) -> None:
        self.settings = settings
        self.engines: list[Engine] = list(engines) if engines is not None else build_engines(settings)
        self.router = ModelRouter(self.engines, settings)
        self.metrics = Metrics()
        self.metrics.watch_engines(
            lambda: self.engines,
            lambda name: self.router.state.get(name) is not None and self.router.state[name].up,
        )
        self._master = settings.master_key.value.encode()
        self._max_body = settings.gateway.max_body_bytes
        self._max_inflight = settings.gateway.max_inflight
        self._log_prompts = settings.gateway.log_prompts
        self.inflight = 0
        self.access_log: AccessLog | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifespan ---------------------------------------------------------------------------------
    async def startup(self, app: web.Application) -> None:
        self.access_log = AccessLog(self.settings.gateway.access_log, self.settings.logs_dir)
        for engine in self.engines:
            await engine.start()
        # Probing engines runs beside serving: /health/ready turns 200 once it is done.
        self._tasks.append(asyncio.create_task(self._first_refresh(), name="ark-router-first-refresh"))
        self._tasks.append(
            asyncio.create_task(
                self.router.run_refresh(self.settings.gateway.model_refresh_s), name="ark-router-refresh"
            )
        )

    async def _first_refresh(self) -> None:
        try:
            await self.router.refresh()
        except Exception:
            log.exception("probing the engines failed")
            self.router.ready.set()

    async def cleanup(self, app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for engine in self.engines:
            await engine.close()
        if self.access_log is not None:
            self.access_log.close()

    # -- helpers ----------------------------------------------------------------------------------
    def _authenticate(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError(
                "Missing API key. Send it as 'Authorization: Bearer <key>'.",
            )
        # compare_digest takes time independent of where the strings differ
        if not self._master or not hmac.compare_digest(token.strip().encode(), self._master):
            raise AuthenticationError("Incorrect API key provided.")

    async def _body(self, request: web.Request) -> Json:
        length = request.content_length
        if length is not None and length > self._max_body:
            raise BodyTooLarge(f"The request body is {length} bytes; the limit is {self._max_body} bytes.")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise BodyTooLarge(f"The request body exceeds the limit of {self._max_body} bytes.") from None
        return parse.parse_body(raw)

    def _record(self, ex: Exchange) -> None:
        elapsed = time.perf_counter() - ex.started
        self.metrics.observe(ex.model, ex.status, elapsed, ex.ttft, ex.prompt_tokens, ex.completion_tokens)
        if self.access_log is None:
            return
        record: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z",
            "key": "master",
            "path": ex.path,
            "model": ex.model,
            "alias": ex.alias,
            "status": ex.status,
            "stream": ex.stream,
            "prompt_tokens": ex.prompt_tokens,
            "completion_tokens": ex.completion_tokens,
            "latency_ms": round(elapsed * 1000, 3),
            "ttft_ms": None if ex.ttft is None else round(ex.ttft * 1000, 3),
        }
        if ex.error:
            record["error"] = ex.error
        if self._log_prompts:
            record["prompt"] = ex.prompt
            record["output"] = ex.output
        self.access_log.write(record)

    def api(
        self, handler: Callable[[web.Request, Exchange], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """Wrap an API handler: auth, admission, the one error handler, metrics and the access log."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            ex = Exchange(request.path, time.perf_counter())
            self.inflight += 1
            self.metrics.inflight.inc()
            try:
                self._authenticate(request)
                if self.inflight > self._max_inflight:
                    raise QueueFull(
                        f"The gateway is serving {self._max_inflight} requests; retry shortly.",
                        retry_after=1.0,
                    )
                return await handler(request, ex)
            except ApiError as exc:
                ex.status, ex.error = exc.status, exc.code
                return error_response(exc)
            except asyncio.CancelledError:
                ex.status, ex.error = 499, "client_closed_request"  # nginx's code for it
                raise
            except Exception as exc:
                log.exception("unexpected error serving %s", request.path)
                ex.status, ex.error = 500, "internal_error"
                return error_response(ApiError(f"Internal error: {type(exc).__name__}"))
            finally:
                self.inflight -= 1
                self.metrics.inflight.dec()
                self._record(ex)

        return wrapped

    async def _resolve(self, body: Json, ex: Exchange) -> Route:
        route = await self.router.resolve(parse.model_name(body))
        ex.model, ex.alias = route.model, route.requested if route.requested != route.model else None
        return route

    # -- generation -------------------------------------------------------------------------------
    async def chat_completions(self, request: web.Request, ex: Exchange) -> web.StreamResponse:
        body = await self._body(request)
        common = parse.common(body)
        messages = parse.messages(body)
        route = await self._resolve(body, ex)
        if self._log_prompts:
            ex.prompt = messages
        engine_body = {**body, "model": route.model}
        engine_body.pop("keep_alive", None)
        req = ChatRequest(route.model, messages, common.sampling, common.stream, engine_body, common.keep_alive)
        engine = route.engine
        if common.stream:
            return await self._stream(request, ex, route, engine.chat_stream(req), common.include_usage, chat=True)
        async with engine.limiter, _deadline(engine):
            result = await engine.chat(req)
        return self._answer(ex, route, result, chat=True)

    async def completions(self, request: web.Request, ex: Exchange) -> web.StreamResponse:
        body = await self._body(request)
        common = parse.common(body)
        prompt = parse.prompt(body)
        route = await self._resolve(body, ex)
        if self._log_prompts:
            ex.prompt = prompt
        engine_body = {**body, "model": route.model}
        engine_body.pop("keep_alive", None)
        req = CompletionRequest(route.model, prompt, common.sampling, common.stream, engine_body, common.keep_alive)
        engine = route.engine
        if common.stream:
            return await self._stream(request, ex, route, engine.complete_stream(req), common.include_usage, chat=False)
        async with engine.limiter, _deadline(engine):
            result = await engine.complete(req)
        return self._answer(ex, route, result, chat=False)

    async def embeddings(self, request: web.Request, ex: Exchange) -> web.StreamResponse:
        body = await self._body(request)
        inputs, encoding = parse.embedding_inputs(body)
        keep_alive = parse.keep_alive(body)
        route = await self._resolve(body, ex)
        engine_body = {k: v for k, v in body.items() if k not in ("keep_alive", "encoding_format")}
        engine_body["model"] = route.model
        engine = route.engine
        async with engine.limiter, _deadline(engine):
            result = await engine.embed(EmbeddingRequest(route.model, inputs, engine_body, keep_alive))
        result["model"] = route.requested
        if encoding == "base64":
            for item in result.get("data") or []:
                item["embedding"] = _base64_floats(item["embedding"])
        ex.prompt_tokens = int((result.get("usage") or {}).get("prompt_tokens") or 0)
        return web.Response(body=orjson.dumps(result), content_type=_JSON)

    def _answer(self, ex: Exchange, route: Route, result: Json, *, chat: bool) -> web.Response:
        result["model"] = route.requested
        usage = result.get("usage") or {}
        ex.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        ex.completion_tokens = int(usage.get("completion_tokens") or 0)
        if self._log_prompts:
            choice = (result.get("choices") or [{}])[0]
            ex.output = (choice.get("message") or {}).get("content") if chat else choice.get("text")
        return web.Response(body=orjson.dumps(result), content_type=_JSON)

    async def _stream(
        self,
        request: web.Request,
        ex: Exchange,
        route: Route,
        chunks: AsyncIterator[Json],
        include_usage: bool,
        *,
        chat: bool,
    ) -> web.StreamResponse:
        """Relay an engine's stream as server-sent events.

        The first chunk is awaited before any byte is sent, so that errors up to the first
        token (unknown model, engine down, first-token timeout) keep their HTTP status.
        Errors after it arrive as an SSE error event, as OpenAI sends them.
        """
        ex.stream = True
        engine = route.engine
        first_timeout, total_timeout = _timeouts(engine)
        # the total deadline counts from the request's start, on the event loop's clock
        deadline = asyncio.get_running_loop().time() + total_timeout - (time.perf_counter() - ex.started)
        response: web.StreamResponse | None = None
        output: list[str] = []
        async with engine.limiter, aclosing(chunks):  # type: ignore[type-var]
            iterator = chunks.__aiter__()
            try:
                async with asyncio.timeout(first_timeout):
                    chunk: Json | None = await anext(iterator)
            except StopAsyncIteration:
                chunk = None
            except TimeoutError:
                raise UpstreamTimeout(f"Engine '{engine.name}' sent no token within {first_timeout:g} s.") from None
            response = web.StreamResponse(headers=_SSE_HEADERS)
            await response.prepare(request)
            write = response.write
            requested = route.requested
            try:
                while chunk is not None:
                    if "usage" in chunk:
                        usage = chunk["usage"]
                        if usage:
                            ex.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                            ex.completion_tokens = int(usage.get("completion_tokens") or 0)
                        if not include_usage:
                            del chunk["usage"]
                    choices = chunk.get("choices")
                    if choices or include_usage:
                        if choices:
                            text = _chunk_text(choices[0], chat)
                            if text:
                                if ex.ttft is None:
                                    ex.ttft = time.perf_counter() - ex.started
                                if self._log_prompts:
                                    output.append(text)
                        chunk["model"] = requested
                        await write(b"data: " + orjson.dumps(chunk) + b"\n\n")
                    try:
                        async with asyncio.timeout_at(deadline):
                            chunk = await anext(iterator)
                    except StopAsyncIteration:
                        chunk = None
                await write(b"data: [DONE]\n\n")
            except TimeoutError:
                exc: ApiError = UpstreamTimeout(f"Engine '{engine.name}' did not finish within the total timeout.")
                ex.status, ex.error = exc.status, exc.code
                await write(b"data: " + error_body(exc) + b"\n\n")
            except ApiError as exc:
                ex.status, ex.error = exc.status, exc.code
                await write(b"data: " + error_body(exc) + b"\n\n")
            finally:
                if self._log_prompts:
                    ex.output = "".join(output)
        await response.write_eof()
        return response

    # -- the rest of the API ----------------------------------------------------------------------
    async def list_models(self, request: web.Request, ex: Exchange) -> web.StreamResponse:
        data = []
        for name, info, target in self.router.names():
            owned_by = info.owned_by if info else (f"alias of {target}" if target else "ark")
            data.append({"id": name, "object": "model", "created": info.created if info else 0, "owned_by": owned_by})
        return web.Response(body=orjson.dumps({"object": "list", "data": data}), content_type=_JSON)

    async def retrieve_model(self, request: web.Request, ex: Exchange) -> web.StreamResponse:
        route = await self.router.resolve(request.match_info["model"])
        info = next((m for m in self.router.models if m.id == route.model), None)
        return web.Response(
            body=orjson.dumps(
                {
                    "id": route.requested,
                    "object": "model",
                    "created": info.created if info else 0,
                    "owned_by": info.owned_by if info else "ark",
                }
            ),
            content_type=_JSON,
        )

    async def live(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=b'{"status":"ok"}', content_type=_JSON)

    async def ready(self, request: web.Request) -> web.StreamResponse:
        ready = self.router.ready.is_set()
        body = {
            "status": "ready" if ready else "starting",
            "engines": {
                name: {"up": s.up, "models": s.models, **({"error": s.error} if s.error else {})}
                for name, s in self.router.state.items()
            },
        }
        return web.Response(status=200 if ready else 503, body=orjson.dumps(body), content_type=_JSON)

    async def prometheus(self, request: web.Request) -> web.StreamResponse:
        if request.remote not in _LOOPBACK:  # Prometheus scrapes locally; anyone else needs the key
            try:
                self._authenticate(request)
            except ApiError as exc:
                return error_response(exc)
        return web.Response(body=self.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"})

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        exc = InvalidRequest(f"Unknown request URL: {request.method} {request.path}.")
        exc.status, exc.code = 404, "unknown_url"
        return error_response(exc)


def _chunk_text(choice: Json, chat: bool) -> str:
    if chat:
        delta = choice.get("delta") or {}
        text: str = delta.get("content") or ("<tool_call>" if delta.get("tool_calls") else "")
        return text
    return str(choice.get("text") or "")


def _base64_floats(vector: list[float]) -> str:
    import array

    return base64.b64encode(array.array("f", vector).tobytes()).decode()


@asynccontextmanager
async def _deadline(engine: Engine) -> AsyncIterator[None]:
    """The engine's total timeout around a non-streamed request, as a 504 that names the engine."""
    seconds = _timeouts(engine)[1]
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise UpstreamTimeout(f"Engine '{engine.name}' did not answer within {seconds:g} s.") from None


def _timeouts(engine: Engine) -> tuple[float, float]:
    """(first token, total) seconds for an engine; engines built from settings carry their own."""
    settings = getattr(engine, "settings", None)
    return getattr(settings, "first_token_timeout", 300.0), getattr(settings, "total_timeout", 900.0)


def create_app(settings: Settings, engines: Sequence[Engine] | None = None) -> web.Application:
    """The gateway as an aiohttp application (run it with handler_cancellation=True)."""
    gateway = Gateway(settings, engines)
    app = web.Application(client_max_size=settings.gateway.max_body_bytes)
    app[GATEWAY] = gateway
    app.on_startup.append(gateway.startup)
    app.on_cleanup.append(gateway.cleanup)
    api = gateway.api
    app.router.add_post("/v1/chat/completions", api(gateway.chat_completions))
    app.router.add_post("/v1/completions", api(gateway.completions))
    app.router.add_post("/v1/embeddings", api(gateway.embeddings))
    app.router.add_get("/v1/models", api(gateway.list_models))
    app.router.add_get("/v1/models/{model:.+}", api(gateway.retrieve_model))
    # The same API without the /v1 prefix, as OpenAI-compatible servers commonly accept.
    app.router.add_post("/chat/completions", api(gateway.chat_completions))
    app.router.add_post("/completions", api(gateway.completions))
    app.router.add_post("/embeddings", api(gateway.embeddings))
    app.router.add_get("/models", api(gateway.list_models))
    app.router.add_get("/health/live", gateway.live)
    app.router.add_get("/health/ready", gateway.ready)
    app.router.add_get("/metrics", gateway.prometheus)
    app.router.add_route("*", "/{tail:.*}", gateway.not_found)
    return app


GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)
