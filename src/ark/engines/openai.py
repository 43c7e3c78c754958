"""Any OpenAI-compatible upstream: vLLM, llama.cpp's server, LM Studio, a cloud API.

Bodies pass through untouched except for the model id (an alias resolves to the
upstream's id) and ``stream_options.include_usage``, which ARK always asks for
so that it can count tokens; the gateway hides the usage chunk from clients
that did not ask for it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from ark.config import EngineSettings
from ark.engines._http import JsonUpstream, upstream_status_error
from ark.engines.base import ChatRequest, CompletionRequest, EmbeddingRequest, Json, Limiter, ModelInfo
from ark.errors import UpstreamError
from ark.wire import Upstream


class OpenAIEngine:
    kind = "openai"

    def __init__(self, settings: EngineSettings, *, upstream: Upstream | None = None) -> None:
        self.name = settings.name
        self.settings = settings
        self.limiter = Limiter(settings.max_parallel, settings.max_queue, name=settings.name)
        self.managed = False  # a remote API: its GPU, if any, is not this box's
        headers = {"authorization": f"Bearer {settings.api_key.value}"} if settings.api_key else {}
        self.http = JsonUpstream(settings, headers, upstream)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        self.http.close()

    def stats(self) -> dict[str, float]:
        return {}

    async def list_models(self) -> list[ModelInfo]:
        data = (await self.http.get("/models")).get("data") or []
        return [
            ModelInfo(
                id=m["id"],
                engine=self.name,
                owned_by=str(m.get("owned_by") or self.name),
                created=int(m.get("created") or 0),
            )
            for m in data
            if isinstance(m, dict) and isinstance(m.get("id"), str)
        ]

    async def _post(self, path: str, body: Json, model: str) -> Json:
        result: Json = await self.http.post(path, body, model)
        return result

    async def _stream(self, path: str, body: Json, model: str) -> AsyncIterator[Json]:
        body = {**body, "stream": True, "stream_options": {**(body.get("stream_options") or {}), "include_usage": True}}
        done = False
        # Read to the end of the body even after [DONE], so the connection can be reused.
        async for line in self.http.post_lines(path, body, model):
            if done or not line.startswith(b"data:"):
                continue  # blank separators, comments, "event:" lines
            payload = line[5:].strip()
            if payload == b"[DONE]":
                done = True
                continue
            try:
                chunk: Any = orjson.loads(payload)
            except orjson.JSONDecodeError:
                raise UpstreamError(f"Engine '{self.name}' sent an event that is not JSON") from None
            if isinstance(chunk, dict) and "error" in chunk:
                raise upstream_status_error(self.name, 500, payload, model)
            yield chunk

    async def chat(self, request: ChatRequest) -> Json:
        return await self._post("/chat/completions", {**request.body, "stream": False}, request.model)

    def chat_stream(self, request: ChatRequest) -> AsyncIterator[Json]:
        return self._stream("/chat/completions", request.body, request.model)

    async def complete(self, request: CompletionRequest) -> Json:
        return await self._post("/completions", {**request.body, "stream": False}, request.model)

    def complete_stream(self, request: CompletionRequest) -> AsyncIterator[Json]:
        return self._stream("/completions", request.body, request.model)

    async def embed(self, request: EmbeddingRequest) -> Json:
        return await self._post("/embeddings", request.body, request.model)
