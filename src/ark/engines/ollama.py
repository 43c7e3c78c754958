"""Ollama through its native API (/api/chat, /api/generate, /api/embed, /api/tags, /api/ps).

The native API (not Ollama's /v1 compatibility layer) is used because it
carries ``keep_alive``, which the GPU arbiter uses to decide what stays
loaded, and reports exact token counts and load times. Requests and answers
are translated to and from OpenAI's shapes here; see Ollama's docs/api.md.
"""

from __future__ import annotations

import contextlib
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
            "messages": _messages(request.messages),
            "stream": stream,
            "options": _options(request.sampling, request.body),
        }
        _copy_common(request.body, body, self._keep_alive(request.keep_alive))
        if tools := _offered_tools(request.body):
            body["tools"] = tools
        return body

    async def chat(self, request: ChatRequest) -> Json:
        try:
            data = await self._post("/api/chat", self._chat_body(request, False), request.model)
        except InvalidRequest as exc:
            raise _tools_refused(exc) from None
        message = data.get("message") or {}
        calls = _tool_calls(message.get("tool_calls"), 0, stream=False)
        reply: Json = {"role": "assistant", "content": message.get("content", "")}
        if calls:
            reply["content"] = reply["content"] or None  # OpenAI's shape of a turn that only calls tools
            reply["tool_calls"] = calls
        return {
            "id": completion_id(),
            "object": "chat.completion",
            "created": now(),
            "model": request.model,
            "choices": [{"index": 0, "message": reply, "finish_reason": _reason(data, calls)}],
            "usage": usage(data.get("prompt_eval_count", 0), data.get("eval_count", 0)),
        }

    async def chat_stream(self, request: ChatRequest) -> AsyncIterator[Json]:
        """Ollama sends each tool call whole, in a line of its own (``done: false``); each becomes one delta
        with the next ``index``, its id, name and all its arguments, and the stream ends with ``tool_calls``."""
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
        sent = 0  # tool calls streamed so far: the next one's index
        try:
            async for data in self._lines("/api/chat", self._chat_body(request, True), request.model):
                message = data.get("message") or {}
                calls = _tool_calls(message.get("tool_calls"), sent, stream=True)
                sent += len(calls)
                delta: Json = {"content": message.get("content", "")}
                if calls:
                    delta = {"tool_calls": calls, **({"content": delta["content"]} if delta["content"] else {})}
                if first:
                    delta["role"] = "assistant"
                    first = False
                if not data.get("done"):
                    yield chunk(delta, None)
                    continue
                if delta.get("content") or delta.get("tool_calls") or "role" in delta:
                    yield chunk(delta, None)
                yield chunk({}, "tool_calls" if sent else _reason(data, []))
                yield {
                    **chunk({}, None),
                    "choices": [],
                    "usage": usage(data.get("prompt_eval_count", 0), data.get("eval_count", 0)),
                }
        except InvalidRequest as exc:
            raise _tools_refused(exc) from None

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
    if sampling.max_tokens is not None:  # but not over the limit the gateway checked and reserved for
        options["num_predict"] = sampling.max_tokens
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


def _offered_tools(body: Json) -> list[Json] | None:
    """The tools Ollama is given. Its API has no ``tool_choice``: "none" offers no tool, a named function
    offers that one alone; "required" cannot be enforced (the model may still answer in text)."""
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools:
        return None
    choice = body.get("tool_choice")
    if choice == "none":
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return [t for t in tools if isinstance(t, dict) and (t.get("function") or {}).get("name") == name] or None
    return tools


def _tools_refused(exc: InvalidRequest) -> InvalidRequest:
    """Ollama's 400 for tools sent to a model without that capability names ``tools`` as the culprit."""
    if exc.param is None and "does not support tools" in exc.message:
        exc.param = "tools"
    return exc


def _messages(messages: list[Json]) -> list[Json]:
    """OpenAI's messages as Ollama's; a tool's answer also names its function (``tool_name``), which Ollama's
    chat templates show the model, found from the call it answers (as Ollama's own /v1 layer does)."""
    names: dict[str, str] = {}  # tool call id -> function name, from the assistant turns so far
    out = []
    for i, message in enumerate(messages):
        converted = _message(message, f"messages[{i}]")
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict) and isinstance(call.get("id"), str):
                names[call["id"]] = str((call.get("function") or {}).get("name", ""))
        if message.get("role") == "tool":
            call_id = message.get("tool_call_id")
            name = message.get("name") or (names.get(call_id) if isinstance(call_id, str) else None)
            if name:
                converted["tool_name"] = name
            if isinstance(call_id, str):
                converted["tool_call_id"] = call_id
        out.append(converted)
    return out


def _message(message: Json, where: str) -> Json:
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
        out["tool_calls"] = [_call_in(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(message["tool_calls"])]
    return out


def _call_in(call: Json, where: str) -> Json:
    """An OpenAI tool call (arguments as JSON text) as Ollama's (arguments an object)."""
    function = call.get("function") or {}
    arguments: Any = function.get("arguments")
    if isinstance(arguments, str):
        with contextlib.suppress(orjson.JSONDecodeError):  # not JSON: stays text, refused below
            arguments = orjson.loads(arguments) if arguments.strip() else {}
    if not isinstance(arguments, dict | None):  # as Ollama's own /v1 layer refuses it
        raise InvalidRequest(
            f"Invalid value for '{where}.function.arguments': expected a JSON object, which Ollama needs.",
            param=f"{where}.function.arguments",
        )
    out: Json = {"function": {"name": function.get("name", ""), "arguments": arguments or {}}}
    if isinstance(call.get("id"), str):
        out["id"] = call["id"]
    return out


def _tool_calls(calls: Any, first: int, *, stream: bool) -> list[Json]:
    """Ollama's tool calls (arguments an object) as OpenAI's (JSON text, an id each); streamed ones carry the
    ``index`` that ties a call's deltas together, counted here from ``first`` (Ollama's own ``function.index``
    is not relied on: some of its parsers leave it 0)."""
    out: list[Json] = []
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        ident = call.get("id")
        converted: Json = {
            "id": ident if isinstance(ident, str) and ident else f"call_{completion_id('')[1:25]}",
            "type": "function",
            "function": {
                "name": str(function.get("name", "")),
                "arguments": orjson.dumps(function.get("arguments") or {}).decode(),
            },
        }
        out.append({"index": first + len(out), **converted} if stream else converted)
    return out


def _reason(data: Json, calls: list[Json]) -> str:
    if calls:
        return "tool_calls"
    return finish_reason(data.get("done_reason"))
