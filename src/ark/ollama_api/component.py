"""The Ollama-compatible API on the gateway (a component), for tools that speak only Ollama.

``/api/chat``, ``/api/generate``, ``/api/embed``, ``/api/embeddings``, ``/api/tags``, ``/api/show``,
``/api/ps`` and ``/api/version``, answered for every engine ARK serves (Ollama, llama.cpp, OpenAI-
compatible upstreams) with the same keys (``Authorization: Bearer``), budgets, aliases, ledger and GPU
arbiter as the OpenAI API: every handler runs inside :meth:`ark.gateway.front.Front.api`, with errors in
Ollama's shape. Models are ARK's to manage: pulling, pushing, creating, copying and deleting answer 403.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import orjson

from ark import __version__
from ark.engines.base import ChatRequest, CompletionRequest, EmbeddingRequest, Json, ModelInfo
from ark.errors import ApiError, ModelNotFound
from ark.gateway import requests as parse
from ark.gateway.exchange import JSON_HEADERS, Exchange
from ark.gateway.front import ApiHandler, Front, Handler
from ark.gateway.generate import capped, count, engine_body, fixed_options, lease, whole
from ark.gateway.router import Route
from ark.gateway.streaming import relay
from ark.ollama_api import shapes
from ark.ollama_api.ndjson import Lines
from ark.runtime import Component, Runtime
from ark.wire import Request, Responder

# The Ollama release whose API this follows; clients that check /api/version compare against it.
OLLAMA_VERSION = "0.12.6"
_MANAGED = ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/blobs/{digest}")


class ModelsManaged(ApiError):
    status = 403
    type = "permission_error"
    code = "models_managed_by_ark"


class OllamaApi(Component):
    name = "ollama-api"

    async def start(self, rt: Runtime) -> None:
        self.rt = rt
        self.front: Front = rt.front
        self._fixed = fixed_options(rt)
        add, api = rt.http.add, self._api
        add("POST", "/api/chat", api(self.chat))
        add("POST", "/api/generate", api(self.generate))
        add("POST", "/api/embed", api(self.embed))
        add("POST", "/api/embeddings", api(self.embeddings))
        add("GET", "/api/tags", api(self.tags))
        add("POST", "/api/show", api(self.show))
        add("GET", "/api/ps", api(self.ps))
        add("GET", "/api/version", self.version)
        for path in _MANAGED:
            add("POST", path, api(self.managed))
        add("DELETE", "/api/delete", api(self.managed))

    def _api(self, handler: ApiHandler) -> Handler:
        return self.front.api(handler, shapes.error_body)

    # -- generation ---------------------------------------------------------------------------------
    async def chat(self, request: Request, responder: Responder, ex: Exchange) -> None:
        await self._generate(request, responder, ex, shapes.chat(parse.parse_body(request.body)), chat=True)

    async def generate(self, request: Request, responder: Responder, ex: Exchange) -> None:
        await self._generate(request, responder, ex, shapes.generate(parse.parse_body(request.body)), chat=False)

    async def _generate(
        self, request: Request, responder: Responder, ex: Exchange, gen: shapes.Generation, *, chat: bool
    ) -> None:
        completion = 0 if gen.load_only else gen.sampling.max_tokens
        route = await self.front.resolve(gen.body, ex, len(request.body), completion)
        if gen.load_only:  # Ollama's way to load (or, keep_alive 0, unload) a model; the arbiter decides
            unload = gen.keep_alive == 0
            if not unload:  # made resident; an unload is left to the arbiter's idle timeout
                await lease(self.rt, ex, route)
            answer = shapes.load_answer(route.requested, chat, unload)
            await responder.send(200, orjson.dumps(answer), JSON_HEADERS)
            return
        ex.prompt = (gen.messages if gen.messages is not None else gen.prompt) if self.front.log_prompts else None
        to_engine = engine_body(gen.body, route, self._fixed)
        sampling = capped(ex, gen.sampling, to_engine)
        engine, texts = route.engine, gen.messages is not None
        stream: Callable[[], AsyncIterator[Json]]
        call: Callable[[], Awaitable[Json]]
        if gen.messages is not None:
            req = ChatRequest(route.model, gen.messages, sampling, gen.stream, to_engine, gen.keep_alive)
            stream, call = (lambda: engine.chat_stream(req)), (lambda: engine.chat(req))
        else:
            text = CompletionRequest(route.model, gen.prompt, sampling, gen.stream, to_engine, gen.keep_alive)
            stream, call = (lambda: engine.complete_stream(text)), (lambda: engine.complete(text))
        await lease(self.rt, ex, route)
        if gen.stream:
            framing = Lines(route.requested, chat=chat)
            await relay(
                responder, ex, route, stream(), False, chat=texts, keep_text=self.front.log_prompts, framing=framing
            )
            return
        result = count(ex, await whole(engine, call))
        timings = shapes.Timings.of(time.perf_counter() - ex.started, None)
        shape = shapes.chat_answer if chat else shapes.generate_answer
        answer = shape(route.requested, result, timings)
        if self.front.log_prompts:
            ex.output = answer["message"]["content"] if chat else answer["response"]
        await responder.send(200, orjson.dumps(answer), JSON_HEADERS)

    # -- embeddings ---------------------------------------------------------------------------------
    async def embed(self, request: Request, responder: Responder, ex: Exchange) -> None:
        body = parse.parse_body(request.body)
        model, inputs = shapes.model_of(body), shapes.embed_inputs(body)
        route = await self.front.resolve({"model": model}, ex, len(request.body), 0)
        if not inputs:
            await lease(self.rt, ex, route)
            await responder.send(200, orjson.dumps({"model": route.requested, "embeddings": []}), JSON_HEADERS)
            return
        dimensions = body.get("dimensions")
        if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)):
            raise shapes.bad("dimensions", "an integer", dimensions)
        result = await self._embed(ex, route, inputs, body, {"dimensions": dimensions} if dimensions else {})
        answer = {
            "model": route.requested,
            "embeddings": [item["embedding"] for item in result.get("data") or []],
            "total_duration": int((time.perf_counter() - ex.started) * 1e9),
            "load_duration": 0,
            "prompt_eval_count": ex.prompt_tokens,
        }
        await responder.send(200, orjson.dumps(answer), JSON_HEADERS)

    async def embeddings(self, request: Request, responder: Responder, ex: Exchange) -> None:
        body = parse.parse_body(request.body)
        model, prompt = shapes.model_of(body), shapes.embeddings_prompt(body)
        route = await self.front.resolve({"model": model}, ex, len(request.body), 0)
        if not prompt:
            await responder.send(200, b'{"embedding":[]}', JSON_HEADERS)
            return
        result = await self._embed(ex, route, [prompt], body, {})
        embedding = (result.get("data") or [{}])[0].get("embedding") or []
        await responder.send(200, orjson.dumps({"embedding": embedding}), JSON_HEADERS)

    async def _embed(self, ex: Exchange, route: Route, inputs: list[str], body: Json, extra: Json) -> Json:
        options = body.get("options")
        engine_in: Json = {"model": route.model, "input": inputs, **extra}
        if isinstance(options, dict):
            engine_in["options"] = options
        keep_alive = parse.keep_alive(body)
        await lease(self.rt, ex, route)
        engine = route.engine
        request = EmbeddingRequest(route.model, inputs, engine_body(engine_in, route, self._fixed), keep_alive)
        result = await whole(engine, lambda: engine.embed(request))
        ex.prompt_tokens = int((result.get("usage") or {}).get("prompt_tokens") or 0)
        return result

    # -- models -------------------------------------------------------------------------------------
    def _visible(self, ex: Exchange) -> list[tuple[str, ModelInfo | None, str]]:
        """(name, info, served model) of every name the key may use."""
        out = []
        by_id = {m.id: m for m in self.rt.models.models}
        for name, info, target in self.rt.models.names():
            served = target or name
            if self.front.may_use(ex.key, name, served, ex.person_id):
                out.append((name, info or by_id.get(served), served))
        return out

    async def tags(self, request: Request, responder: Responder, ex: Exchange) -> None:
        models = [_tag(name, info) for name, info, _ in self._visible(ex)]
        await responder.send(200, orjson.dumps({"models": models}), JSON_HEADERS)

    async def show(self, request: Request, responder: Responder, ex: Exchange) -> None:
        body = parse.parse_body(request.body)
        name = shapes.model_of(body)
        route = await self.rt.models.resolve(name)
        if not self.front.may_use(ex.key, route.requested, route.model, ex.person_id):
            raise ModelNotFound(name)
        info = next((m for m in self.rt.models.models if m.id == route.model), None)
        details = _details(info)
        answer = {
            "modelfile": f"# served by ARK from engine {route.engine.name}\nFROM {route.model}\n",
            "parameters": "",
            "template": "",
            "details": details,
            "model_info": {"general.architecture": details["family"]},
            "capabilities": ["completion"],
            "modified_at": _modified(info),
        }
        await responder.send(200, orjson.dumps(answer), JSON_HEADERS)

    async def ps(self, request: Request, responder: Responder, ex: Exchange) -> None:
        """What is in memory: the GPU arbiter's resident models, with their memory."""
        running = []
        gpu = self.rt.gpu
        if gpu is not None:
            visible = {served: (name, info) for name, info, served in self._visible(ex) if name == served}
            for entry in gpu.status()["models"]:
                if entry["resident"] and entry["model"] in visible:
                    name, info = visible[entry["model"]]
                    idle = entry["idle_timeout_s"]
                    running.append(
                        {
                            **_tag(name, info),
                            "size": entry["memory_bytes"],
                            "size_vram": entry["memory_bytes"],
                            "expires_at": _expires(idle),
                        }
                    )
        await responder.send(200, orjson.dumps({"models": running}), JSON_HEADERS)

    async def version(self, request: Request, responder: Responder) -> None:
        """No key needed, as on Ollama: clients probe it to find the server."""
        await responder.send(200, orjson.dumps({"version": OLLAMA_VERSION, "ark": __version__}), JSON_HEADERS)

    async def managed(self, request: Request, responder: Responder, ex: Exchange) -> None:
        raise ModelsManaged(
            "ARK manages its models: an operator pulls one with `ark models pull NAME` and the GPU arbiter "
            "loads it; this API serves the models listed by GET /api/tags."
        )


def _details(info: ModelInfo | None) -> dict[str, object]:
    details = info.details if info is not None else {}
    family = str(details.get("family") or "")
    return {
        "parent_model": str(details.get("parent_model") or ""),
        "format": str(details.get("format") or "gguf"),
        "family": family,
        "families": details.get("families") or ([family] if family else None),
        "parameter_size": str(details.get("parameter_size") or ""),
        "quantization_level": str(details.get("quantization_level") or ""),
    }


def _modified(info: ModelInfo | None) -> str:
    return shapes.created_at(float(info.created) if info is not None and info.created else 0.0)


def _tag(name: str, info: ModelInfo | None) -> dict[str, object]:
    details = info.details if info is not None else {}
    size = details.get("size")
    return {
        "name": name,
        "model": name,
        "modified_at": _modified(info),
        "size": size if isinstance(size, int) else 0,
        # Ollama's is its manifest's digest; ARK's is a stable id of the engine and model that serve the name
        "digest": hashlib.sha256(f"{info.engine if info else ''}/{name}".encode()).hexdigest(),
        "details": _details(info),
    }


def _expires(idle_timeout_s: float | None) -> str:
    """When the arbiter may unload an idle model (it stays longer while in use); far ahead when never."""
    if not idle_timeout_s:
        return "2318-01-01T00:00:00Z"  # what Ollama answers for keep_alive -1 (it adds its maximum duration)
    return datetime.fromtimestamp(time.time() + idle_timeout_s, UTC).isoformat().replace("+00:00", "Z")
