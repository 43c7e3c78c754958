"""Any OpenAI-compatible upstream: vLLM, llama.cpp's server, LM Studio, a cloud API.

Bodies pass through untouched except for the model id (an alias resolves to the
upstream's id) and ``stream_options.include_usage``, which ARK always asks for
so that it can count tokens; the gateway hides the usage chunk from clients
that did not ask for it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from ark.config import EngineSettings
from ark.engines._http import make_session, upstream_errors, upstream_status_error
from ark.engines.base import ChatRequest, CompletionRequest, EmbeddingRequest, Json, Limiter, ModelInfo


class OpenAIEngine:
    kind = "openai"

    def __init__(self, settings: EngineSettings, *, session: aiohttp.ClientSession | None = None) -> None:
        self.name = settings.name
        self.settings = settings
        self.base_url = settings.url
        self.limiter = Limiter(settings.max_parallel, settings.max_queue, name=settings.name)
        self._session = session
        self._headers = {"Content-Type": "application/json"}
        if settings.api_key:
            self._headers["Authorization"] = f"Bearer {settings.api_key.value}"

    async def start(self) -> None:
        if self._session is None:
            self._session = make_session(self.settings)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "engine used before start()"
        return self._session

    def stats(self) -> dict[str, float]:
        return {}

    async def list_models(self) -> list[ModelInfo]:
        url = self.base_url + "/models"
        async with upstream_errors(self.name, url), self.session.get(url, headers=self._headers) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise upstream_status_error(self.name, resp.status, body)
            data = orjson.loads(body).get("data") or []
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
        url = self.base_url + path
        async with (
            upstream_errors(self.name, url),
            self.session.post(url, data=orjson.dumps(body), headers=self._headers) as resp,
        ):
            raw = await resp.read()
            if resp.status != 200:
                raise upstream_status_error(self.name, resp.status, raw, model)
            result: Json = orjson.loads(raw)
            return result

    async def _stream(self, path: str, body: Json, model: str) -> AsyncIterator[Json]:
        url = self.base_url + path
        body = {
            **body,
            "stream": True,
            "stream_options": {**(body.get("stream_options") or {}), "include_usage": True},
        }
        async with (
            upstream_errors(self.name, url),
            self.session.post(url, data=orjson.dumps(body), headers=self._headers) as resp,
        ):
            if resp.status != 200:
                raise upstream_status_error(self.name, resp.status, await resp.read(), model)
            async for line in resp.content:
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments, "event:" lines
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    return
                chunk: Any = orjson.loads(payload)
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
