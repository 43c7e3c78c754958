"""The OpenAI-compatible API (a component): chat and text completions, embeddings, the model list.

Routes under ``/v1`` and at the root (OpenAI-compatible servers commonly accept both); every handler
runs inside :meth:`ark.gateway.front.Front.api` (key, admission, budgets, the record).
"""

from __future__ import annotations

import array
import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import orjson

from ark.engines.base import ChatRequest, CompletionRequest, EmbeddingRequest, Engine, Json
from ark.errors import ModelNotFound, UpstreamTimeout
from ark.gateway import requests as parse
from ark.gateway.exchange import JSON_HEADERS, Exchange
from ark.gateway.front import Front
from ark.gateway.router import Route
from ark.gateway.streaming import relay
from ark.runtime import Component, Runtime
from ark.wire import Request, Responder


class OpenAIApi(Component):
    name = "openai-api"

    async def start(self, rt: Runtime) -> None:
        self.rt = rt
        self.front: Front = rt.front
        self._fixed_options = {m.id: m.fixed_options for m in rt.settings.models if m.fixed_options}
        api = rt.front.api
        for prefix in ("/v1", ""):
            rt.http.add("POST", prefix + "/chat/completions", api(self.chat_completions))
            rt.http.add("POST", prefix + "/completions", api(self.completions))
            rt.http.add("POST", prefix + "/embeddings", api(self.embeddings))
            rt.http.add("GET", prefix + "/models", api(self.list_models))
            rt.http.add("GET", prefix + "/models/{model:path}", api(self.retrieve_model))

    async def chat_completions(self, request: Request, responder: Responder, ex: Exchange) -> None:
        await self._complete(request, responder, ex, chat=True)

    async def completions(self, request: Request, responder: Responder, ex: Exchange) -> None:
        await self._complete(request, responder, ex, chat=False)

    async def _complete(self, request: Request, responder: Responder, ex: Exchange, *, chat: bool) -> None:
        """A chat (messages) or a text completion (prompt): checked, routed, reserved, then generated."""
        body = parse.parse_body(request.body)
        common = parse.common(body)
        prompt: Any = parse.messages(body) if chat else parse.prompt(body)
        route = await self.front.resolve(body, ex, len(request.body), common.sampling.max_tokens)
        ex.prompt = prompt if self.front.log_prompts else None
        engine_body = _engine_body(body, route, self._fixed_options)
        engine = route.engine
        if chat:
            req = ChatRequest(route.model, prompt, common.sampling, common.stream, engine_body, common.keep_alive)
            stream, call = (lambda: engine.chat_stream(req)), (lambda: engine.chat(req))
        else:
            text = CompletionRequest(
                route.model, prompt, common.sampling, common.stream, engine_body, common.keep_alive
            )
            stream, call = (lambda: engine.complete_stream(text)), (lambda: engine.complete(text))
        await self._generate(responder, ex, route, common, stream, call, chat=chat)

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
        if self.rt.gpu is not None:  # the model is resident and held until the response ends
            ex.lease = await self.rt.gpu.lease(route.model, route.engine.managed)
        if common.stream:
            await relay(
                responder, ex, route, stream(), common.include_usage, chat=chat, keep_text=self.front.log_prompts
            )
            return
        async with route.engine.limiter, _deadline(route.engine):
            result = await call()
        result["model"] = route.requested
        usage = result.get("usage") or {}
        ex.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        ex.completion_tokens = int(usage.get("completion_tokens") or 0)
        if self.front.log_prompts:
            choice = (result.get("choices") or [{}])[0]
            ex.output = (choice.get("message") or {}).get("content") if chat else choice.get("text")
        await responder.send(200, orjson.dumps(result), JSON_HEADERS)

    async def embeddings(self, request: Request, responder: Responder, ex: Exchange) -> None:
        body = parse.parse_body(request.body)
        inputs, encoding = parse.embedding_inputs(body)
        keep_alive = parse.keep_alive(body)
        route = await self.front.resolve(body, ex, len(request.body), 0)
        engine_body = _engine_body(body, route, self._fixed_options)
        engine_body.pop("encoding_format", None)  # engines answer floats; base64 is encoded here
        engine = route.engine
        if self.rt.gpu is not None:
            ex.lease = await self.rt.gpu.lease(route.model, route.engine.managed)
        async with engine.limiter, _deadline(engine):
            result = await engine.embed(EmbeddingRequest(route.model, inputs, engine_body, keep_alive))
        result["model"] = route.requested
        if encoding == "base64":
            for item in result.get("data") or []:
                item["embedding"] = base64.b64encode(array.array("f", item["embedding"]).tobytes()).decode()
        ex.prompt_tokens = int((result.get("usage") or {}).get("prompt_tokens") or 0)
        await responder.send(200, orjson.dumps(result), JSON_HEADERS)

    # -- the rest of the API ----------------------------------------------------------------------
    async def list_models(self, request: Request, responder: Responder, ex: Exchange) -> None:
        data = []
        for name, info, target in self.rt.models.names():
            if not self.front.may_use(ex.key, name, target or name):
                continue  # a key sees the models it may use
            owned_by = info.owned_by if info else (f"alias of {target}" if target else "ark")
            data.append({"id": name, "object": "model", "created": info.created if info else 0, "owned_by": owned_by})
        await responder.send(200, orjson.dumps({"object": "list", "data": data}), JSON_HEADERS)

    async def retrieve_model(self, request: Request, responder: Responder, ex: Exchange) -> None:
        name = request.params["model"]
        route = await self.rt.models.resolve(name)
        if not self.front.may_use(ex.key, route.requested, route.model):
            raise ModelNotFound(name)  # as OpenAI: "does not exist or you do not have access to it"
        info = next((m for m in self.rt.models.models if m.id == route.model), None)
        model = {
            "id": route.requested,
            "object": "model",
            "created": info.created if info else 0,
            "owned_by": info.owned_by if info else "ark",
        }
        await responder.send(200, orjson.dumps(model), JSON_HEADERS)


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
