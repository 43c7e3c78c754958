"""Ollama through its native API (/api/chat, /api/generate, /api/embed, /api/tags, /api/ps).

The native API (not Ollama's /v1 compatibility layer) is used because it
carries ``keep_alive``, which the GPU arbiter uses to decide what stays
loaded, and reports exact token counts and load times. Requests and answers
are translated to and from OpenAI's shapes here; see Ollama's docs/api.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from ark.config import EngineSettings
from ark.engines._http import JsonUpstream, upstream_status_error
from ark.engines.base import (
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    Json,
    Limiter,
    ModelInfo,
    Sampling,
    completion_id,
    finish_reason,
    now,
    usage,
)
from ark.errors import InvalidRequest, UpstreamError
from ark.wire import Upstream

# OpenAI fields with a direct Ollama option.
_PASSTHROUGH_OPTIONS = ("frequency_penalty", "presence_penalty")


@dataclass(frozen=True, slots=True)
class Loaded:
    """A model Ollama holds in memory, as ``/api/ps`` reports it: ``size`` bytes in all, ``size_vram`` of
    them on the GPU (fewer when Ollama put part of the model on the CPU)."""

    name: str
    size: int
    size_vram: int


def parse_ps(data: Any) -> dict[str, Loaded]:
    """An ``/api/ps`` answer: the models in memory, by name (read by the engine and the GPU arbiter alike)."""
    models = data.get("models") if isinstance(data, dict) else None
    return {
        m["name"]: Loaded(m["name"], _bytes(m.get("size")), _bytes(m.get("size_vram")))
        for m in models or []
        if isinstance(m, dict) and isinstance(m.get("name"), str)
    }


def _bytes(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


class OllamaEngine:
    kind = "ollama"

    def __init__(self, settings: EngineSettings, *, upstream: Upstream | None = None) -> None:
        self.name = settings.name
        self.settings = settings
        self.limiter = Limiter(settings.max_parallel, settings.max_queue, name=settings.name)
        self.http = JsonUpstream(settings, None, upstream)
        self.managed = False  # set by the gateway when the GPU arbiter manages this engine

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        self.http.close()

    def stats(self) -> dict[str, float]:
        return {}

    async def _get(self, path: str) -> Json:
        result: Json = await self.http.get(path)
        return result

    async def _post(self, path: str, body: Json, model: str) -> Json:
        result: Json = await self.http.post(path, body, model)
        return result

    async def _lines(self, path: str, body: Json, model: str) -> AsyncIterator[Json]:
        """Ollama streams one JSON object per line (application/x-ndjson)."""
        done = False
        # Read to the end of the body even after the "done" line, so the connection can be reused.
        async for line in self.http.post_lines(path, body, model):
            if done or not line.strip():
                continue
            try:
                data: Json = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise UpstreamError(f"Engine '{self.name}' sent a line that is not JSON") from None
            if "error" in data:  # errors after the 200 arrive as a line of their own
                raise upstream_status_error(self.name, 500, line, model)
            yield data
            done = bool(data.get("done"))

    def _keep_alive(self, requested: float | None) -> int | str | None:
        """What Ollama gets: under the arbiter its own -1, whatever the client asked (a client neither pins nor
        unloads a model there); else the client's value lowered to max_keep_alive_s, or the engine's default."""
        if self.managed:  # the GPU arbiter decides when a model goes: Ollama's own timer never fires
            return -1
        if requested is None:
            return _keep_alive_value(self.settings.keep_alive) if self.settings.keep_alive else None
        seconds = min(requested, self.settings.max_keep_alive_s)
        return int(seconds) if seconds == int(seconds) else f"{seconds * 1000:.0f}ms"

    # -- the interface ------------------------------------------------------------------------------
    async def list_models(self) -> list[ModelInfo]:
        data = await self._get("/api/tags")
        return [
            ModelInfo(id=m["name"], engine=self.name, owned_by="ollama", details=m.get("details") or {})
            for m in data.get("models") or []
            if isinstance(m, dict) and isinstance(m.get("name"), str)
        ]

    async def running(self) -> dict[str, Loaded]:
        """Models Ollama holds in memory now (``/api/ps``), by name."""
        return parse_ps(await self.http.get("/api/ps"))

    def _chat_body(self, request: ChatRequest, stream: bool) -> Json:
        body: Json = {
            "model": request.model,
            "messages": [_message(m) for m in request.messages],
            "stream": stream,
            "options": _options(request.sampling, request.body),
        }
        _copy_common(request.body, body, self._keep_alive(request.keep_alive))
        if request.body.get("tools"):
            body["tools"] = request.body["tools"]
        return body

    async def chat(self, request: ChatRequest) -> Json:
        data = await self._post("/api/chat", self._chat_body(request, False), request.model)
        message = data.get("message") or {}
        reply: Json = {"role": "assistant", "content": message.get("content", "")}
        if message.get("tool_calls"):
            reply["tool_calls"] = _tool_calls(message["tool_calls"])
        return {
            "id": completion_id(),
            "object": "chat.completion",
            "created": now(),
            "model": request.model,
            "choices": [{"index": 0, "message": reply, "finish_reason": _reason(data, reply)}],
            "usage": usage(data.get("prompt_eval_count", 0), data.get("eval_count", 0)),
        }

    async def chat_stream(self, request: ChatRequest) -> AsyncIterator[Json]:
        ident, created = completion_id(), now()

        def chunk(delta: Json, reason: str | None) -> Json:
            return {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": request.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
            }

        first = True
        async for data in self._lines("/api/chat", self._chat_body(request, True), request.model):
            message = data.get("message") or {}
            delta: Json = {"content": message.get("content", "")}
            if first:
                delta["role"] = "assistant"
                first = False
            if message.get("tool_calls"):
                delta["tool_calls"] = _tool_calls(message["tool_calls"])
            if not data.get("done"):
                yield chunk(delta, None)
                continue
            if delta.get("content") or delta.get("tool_calls") or "role" in delta:
                yield chunk(delta, None)
            yield chunk({}, _reason(data, delta))
            yield {
                **chunk({}, None),
                "choices": [],
                "usage": usage(data.get("prompt_eval_count", 0), data.get("eval_count", 0)),
            }

    def _generate_body(self, request: CompletionRequest, stream: bool) -> Json:
        body: Json = {
            "model": request.model,
            "prompt": request.prompt,
            "stream": stream,
            "options": _options(request.sampling, request.body),
        }
        if isinstance(request.body.get("suffix"), str):
            body["suffix"] = request.body["suffix"]
        _copy_common(request.body, body, self._keep_alive(request.keep_alive))
        return body

    async def complete(self, request: CompletionRequest) -> Json:
        data = await self._post("/api/generate", self._generate_body(request, False), request.model)
        return {
            "id": completion_id("cmpl"),
            "object": "text_completion",
            "created": now(),
            "model": request.model,
            "choices": [
                {
                    "index": 0,
                    "text": data.get("response", ""),
                    "logprobs": None,
                    "finish_reason": finish_reason(data.get("done_reason")),
                }
            ],
            "usage": usage(data.get("prompt_eval_count", 0), data.get("eval_count", 0)),
        }

    async def complete_stream(self, request: CompletionRequest) -> AsyncIterator[Json]:
        ident, created = completion_id("cmpl"), now()

        def chunk(text: str, reason: str | None) -> Json:
            return {
                "id": ident,
                "object": "text_completion",
                "created": created,
                "model": request.model,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}],
            }

        async for data in self._lines("/api/generate", self._generate_body(request, True), request.model):
            if not data.get("done"):
                yield chunk(data.get("response", ""), None)
                continue
            yield chunk(data.get("response", ""), finish_reason(data.get("done_reason")))
            yield {
                **chunk("", None),
                "choices": [],
                "usage": usage(data.get("prompt_eval_count", 0), data.get("eval_count", 0)),
            }

    async def embed(self, request: EmbeddingRequest) -> Json:
        body: Json = {"model": request.model, "input": request.inputs}
        if isinstance(request.body.get("dimensions"), int):
            body["dimensions"] = request.body["dimensions"]
        if (keep_alive := self._keep_alive(request.keep_alive)) is not None:
            body["keep_alive"] = keep_alive
        data = await self._post("/api/embed", body, request.model)
        prompt_tokens = data.get("prompt_eval_count", 0)
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data["embeddings"])],
            "model": request.model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }


def _options(sampling: Sampling, body: Json) -> Json:
    options: Json = {}
    if sampling.max_tokens is not None:
        options["num_predict"] = sampling.max_tokens
    if sampling.temperature is not None:
        options["temperature"] = sampling.temperature
    if sampling.top_p is not None:
        options["top_p"] = sampling.top_p
    if sampling.stop:
        options["stop"] = list(sampling.stop)
    if sampling.seed is not None:
        options["seed"] = sampling.seed
    for key in _PASSTHROUGH_OPTIONS:
        if isinstance(body.get(key), int | float):
            options[key] = body[key]
    if isinstance(body.get("options"), dict):  # Ollama-native options (num_ctx...) win
        options.update(body["options"])
    return options


def _copy_common(source: Json, body: Json, keep_alive: int | str | None) -> None:
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    fmt = source.get("response_format")
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_object":
            body["format"] = "json"
        elif fmt.get("type") == "json_schema" and isinstance(fmt.get("json_schema"), dict):
            body["format"] = fmt["json_schema"].get("schema") or "json"


def _keep_alive_value(value: str) -> int | str:
    # Ollama reads a bare number as seconds, a string as a Go duration ("5m"); the setting allows "-1".
    try:
        return int(value)
    except ValueError:
        return value


def _message(message: Json) -> Json:
    """OpenAI message -> Ollama message: content parts become text plus base64 images."""
    content = message.get("content")
    out: Json = {"role": message["role"]}
    if isinstance(content, list):
        texts, images = [], []
        for part in content:
            if part.get("type") == "text":
                texts.append(part.get("text", ""))
            elif part.get("type") == "image_url":
                url = (part.get("image_url") or {}).get("url", "")
                if not url.startswith("data:") or "," not in url:
                    raise InvalidRequest("Only data: URLs are supported for images", param="messages")
                images.append(url.split(",", 1)[1])
        out["content"] = "\n".join(texts)
        if images:
            out["images"] = images
    else:
        out["content"] = content or ""
    if message.get("tool_calls"):
        out["tool_calls"] = [
            {
                "function": {
                    "name": c["function"]["name"],
                    "arguments": _arguments(c["function"].get("arguments")),
                }
            }
            for c in message["tool_calls"]
        ]
    return out


def _arguments(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return orjson.loads(arguments)
        except orjson.JSONDecodeError:
            return {}
    return arguments or {}


def _tool_calls(calls: list[Json]) -> list[Json]:
    return [
        {
            "index": i,
            "id": f"call_{completion_id('')[1:13]}",
            "type": "function",
            "function": {
                "name": call.get("function", {}).get("name", ""),
                "arguments": orjson.dumps(call.get("function", {}).get("arguments", {})).decode(),
            },
        }
        for i, call in enumerate(calls)
    ]


def _reason(data: Json, message: Json) -> str:
    if message.get("tool_calls"):
        return "tool_calls"
    return finish_reason(data.get("done_reason"))
