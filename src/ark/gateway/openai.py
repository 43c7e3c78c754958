"""The OpenAI-compatible API (a component): chat and text completions, embeddings, the model list.

Routes under ``/v1`` and at the root (OpenAI-compatible servers commonly accept both); every handler
runs inside :meth:`ark.gateway.front.Front.api` (key, admission, budgets, the record).
"""

from __future__ import annotations

import array
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from ark.engines.base import ChatRequest, CompletionRequest, EmbeddingRequest, Json
from ark.errors import ModelNotFound
from ark.gateway import requests as parse
from ark.gateway.exchange import JSON_HEADERS, Exchange
from ark.gateway.front import Front
from ark.gateway.generate import capped, count, engine_body, fixed_options, lease, whole
from ark.gateway.router import Route
from ark.gateway.streaming import relay, spent
from ark.runtime import Component, Runtime
from ark.wire import Request, Responder


class OpenAIApi(Component):
    name = "openai-api"

    async def start(self, rt: Runtime) -> None:
        self.rt = rt
        self.front: Front = rt.front
        self._fixed_options = fixed_options(rt)
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
        to_engine = engine_body(body, route, self._fixed_options)
        sampling = capped(ex, common.sampling, to_engine)
        engine = route.engine
        if chat:
            req = ChatRequest(route.model, prompt, sampling, common.stream, to_engine, common.keep_alive)
            stream, call = (lambda: engine.chat_stream(req)), (lambda: engine.chat(req))
        else:
            text = CompletionRequest(route.model, prompt, sampling, common.stream, to_engine, common.keep_alive)
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
        await lease(self.rt, ex, route)
        if common.stream:
            await relay(
                responder, ex, route, stream(), common.include_usage, chat=chat, keep_text=self.front.log_prompts
            )
            return
        result = count(ex, await whole(route.engine, call))
        result["model"] = route.requested
        if isinstance(result.get("usage"), dict):
            result["usage"]["cost"] = spent(ex)
        if self.front.log_prompts:
            choice = (result.get("choices") or [{}])[0]
            ex.output = (choice.get("message") or {}).get("content") if chat else choice.get("text")
        await responder.send(200, orjson.dumps(result), JSON_HEADERS)

    async def embeddings(self, request: Request, responder: Responder, ex: Exchange) -> None:
        body = parse.parse_body(request.body)
        inputs, encoding = parse.embedding_inputs(body)
        keep_alive = parse.keep_alive(body)
        route = await self.front.resolve(body, ex, len(request.body), 0)
        to_engine = engine_body(body, route, self._fixed_options)
        to_engine.pop("encoding_format", None)  # engines answer floats; base64 is encoded here
        engine = route.engine
        await lease(self.rt, ex, route)
        request_ = EmbeddingRequest(route.model, inputs, to_engine, keep_alive)
        result = await whole(engine, lambda: engine.embed(request_))
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
            if not self.front.may_use(ex.key, name, target or name, ex.person_id):
                continue  # a key sees the models it may use
            owned_by = info.owned_by if info else (f"alias of {target}" if target else "ark")
            created = info.created if info else 0
            data.append({"id": name, "object": "model", "created": created, "owned_by": owned_by, "kind": "text"})
        for model in self._other_models():
            if self.front.may_use(ex.key, model["id"], model["id"], ex.person_id):
                data.append({"object": "model", **model})
        await responder.send(200, orjson.dumps({"object": "list", "data": data}), JSON_HEADERS)

    def _other_models(self) -> list[dict[str, Any]]:
        return [model for listed in self.rt.other_models for model in listed()]

    async def retrieve_model(self, request: Request, responder: Responder, ex: Exchange) -> None:
        name = request.params["model"]
        other = next((m for m in self._other_models() if m["id"] == name), None)
        if other is not None:
            if not self.front.may_use(ex.key, name, name, ex.person_id):
                raise ModelNotFound(name)
            await responder.send(200, orjson.dumps({"object": "model", **other}), JSON_HEADERS)
            return
        route = await self.rt.models.resolve(name)
        if not self.front.may_use(ex.key, route.requested, route.model, ex.person_id):
            raise ModelNotFound(name)  # as OpenAI: "does not exist or you do not have access to it"
        info = next((m for m in self.rt.models.models if m.id == route.model), None)
        model = {
            "id": route.requested,
            "object": "model",
            "created": info.created if info else 0,
            "owned_by": info.owned_by if info else "ark",
            "kind": "text",
        }
        await responder.send(200, orjson.dumps(model), JSON_HEADERS)
