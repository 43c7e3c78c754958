"""The one small interface every engine implements, and the typed requests it takes.

Requests arrive parsed and validated (see :mod:`ark.gateway.requests`); engines
answer in OpenAI's response shapes (plain dicts, serialised by the gateway), so
the gateway does not care whether Ollama, llama.cpp or a cloud API answered.
Streams are async iterators of ``chat.completion.chunk`` / ``text_completion``
objects; an engine ends a stream with a usage-only chunk (``choices: []``)
when it knows the token counts, and the gateway forwards it only when the
client asked for ``stream_options.include_usage``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ark.config import EngineSettings
from ark.errors import QueueFull

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Sampling:
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str  # the engine's own model id (aliases already resolved)
    messages: list[Json]
    sampling: Sampling
    stream: bool
    body: Json  # the client's body (model replaced), for engines that pass it through
    keep_alive: float | None = None  # the client's keep_alive in seconds (math.inf: forever); Ollama's call


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    model: str
    prompt: str
    sampling: Sampling
    stream: bool
    body: Json
    keep_alive: float | None = None


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    model: str
    inputs: list[str]
    body: Json
    keep_alive: float | None = None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    engine: str
    owned_by: str
    created: int = 0
    details: Json = field(default_factory=dict)


class Engine(Protocol):
    """What the gateway needs from an inference engine."""

    name: str
    kind: str
    settings: EngineSettings
    limiter: Limiter
    managed: bool  # the GPU arbiter decides what this engine has loaded (set when it takes the engine on)

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def list_models(self) -> list[ModelInfo]: ...

    async def chat(self, request: ChatRequest) -> Json: ...

    def chat_stream(self, request: ChatRequest) -> AsyncIterator[Json]: ...

    async def complete(self, request: CompletionRequest) -> Json: ...

    def complete_stream(self, request: CompletionRequest) -> AsyncIterator[Json]: ...

    async def embed(self, request: EmbeddingRequest) -> Json: ...

    def stats(self) -> dict[str, float]: ...


class Limiter:
    """At most ``parallel`` requests at once and ``max_queue`` waiting; beyond that, fail fast.

    A full queue answers 429 at once (as Ollama's ErrMaxQueue does) instead of
    letting requests pile up until every client times out.
    """

    def __init__(self, parallel: int, max_queue: int, *, name: str) -> None:
        self._sem = asyncio.Semaphore(parallel)
        self.parallel = parallel
        self.max_queue = max_queue
        self.name = name
        self.waiting = 0
        self.active = 0

    async def __aenter__(self) -> None:
        if self._sem.locked():
            if self.waiting >= self.max_queue:
                raise QueueFull(
                    f"Engine '{self.name}' is busy: {self.active} running and {self.waiting} queued. Retry later.",
                    retry_after=1.0,
                )
            self.waiting += 1
            try:
                await self._sem.acquire()
            finally:
                self.waiting -= 1
        else:
            await self._sem.acquire()
        self.active += 1

    async def __aexit__(self, *exc_info: object) -> None:
        self.active -= 1
        self._sem.release()


def completion_id(prefix: str = "chatcmpl") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> Json:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def finish_reason(reason: str | None) -> str:
    """OpenAI knows stop, length, tool_calls, content_filter; engines say more ("load", "eos", None)."""
    return reason if reason in ("length", "tool_calls", "content_filter") else "stop"
