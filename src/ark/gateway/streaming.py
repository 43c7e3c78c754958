"""Relay an engine's stream to the client: as server-sent events (OpenAI) or in another framing.

Engines stream OpenAI's chunks; a :class:`Framing` turns each into the bytes its API sends (SSE here,
NDJSON for the Ollama API), ends the stream and reports an error that comes after the first byte.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Protocol

import orjson

from ark.engines.base import Json
from ark.errors import ApiError, UpstreamTimeout
from ark.gateway.exchange import Exchange, error_body
from ark.gateway.router import Route
from ark.wire import Responder

SSE_HEADERS = [("content-type", "text/event-stream"), ("cache-control", "no-cache"), ("x-accel-buffering", "no")]


class Framing(Protocol):
    """How one API frames a stream: its headers, one chunk, the end, an error after the first byte."""

    headers: list[tuple[str, str]]

    def chunk(self, chunk: Json) -> bytes | None:
        """The bytes for one engine chunk (``None``: nothing goes out for it). Called for every chunk with
        choices, and for the usage-only chunk when the client asked for usage."""
        ...

    def end(self, ex: Exchange) -> bytes: ...

    def error(self, exc: ApiError) -> bytes: ...


class Sse:
    """OpenAI's framing: ``data: {chunk}`` events, then ``data: [DONE]``; an error as a last event."""

    headers = SSE_HEADERS

    def __init__(self, requested: str) -> None:
        self.requested = requested

    def chunk(self, chunk: Json) -> bytes | None:
        chunk["model"] = self.requested
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def end(self, ex: Exchange) -> bytes:
        return b"data: [DONE]\n\n"

    def error(self, exc: ApiError) -> bytes:
        return b"data: " + error_body(exc) + b"\n\n"


async def relay(
    responder: Responder,
    ex: Exchange,
    route: Route,
    chunks: AsyncIterator[Json],
    include_usage: bool,
    *,
    chat: bool,
    keep_text: bool,
    framing: Framing | None = None,
) -> None:
    """Stream ``chunks`` in ``framing`` (SSE by default) under the engine's limiter and deadlines.

    The first chunk is awaited before any byte is sent, so errors up to the first token
    (engine down, first-token timeout, unknown model upstream) keep their HTTP status.
    After that an error arrives as the framing's last message (SSE: a ``data: {"error": ...}`` event, as
    OpenAI sends it).
    A client that leaves cancels this coroutine; closing ``chunks`` then stops the engine.
    A stream that ends before the engine's usage (the client left or was cut off, the engine failed) is
    charged for the tokens that went out (one per event, as Ollama, llama.cpp and vLLM stream them) and
    for its prompt as estimated from its size (the engine read all of it).
    """
    ex.stream = True
    engine = route.engine
    first_timeout, total_timeout = engine.settings.first_token_timeout, engine.settings.total_timeout
    # the total deadline counts from the request's arrival, on the event loop's clock
    deadline = asyncio.get_running_loop().time() + total_timeout - (time.perf_counter() - ex.started)
    frame = framing if framing is not None else Sse(route.requested)
    output: list[str] = []
    events = 0  # token events that went out
    async with engine.limiter, aclosing(chunks):  # type: ignore[type-var]
        try:
            async with asyncio.timeout(first_timeout):
                chunk: Json | None = await anext(chunks, None)
        except TimeoutError:
            raise UpstreamTimeout(f"Engine '{engine.name}' sent no token within {first_timeout:g} s.") from None
        await responder.start(200, frame.headers)
        try:
            async with asyncio.timeout_at(deadline):  # one timer for the whole stream, not one per chunk
                while chunk is not None:
                    if "usage" in chunk:
                        usage = chunk["usage"]
                        if usage:
                            ex.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                            ex.completion_tokens = int(usage.get("completion_tokens") or 0)
                            events = -1  # counted by the engine
                        if not include_usage:
                            del chunk["usage"]
                        elif usage:  # what it costs (OpenRouter's usage.cost); a price per GPU second adds the
                            # moments until the stream ends in the ledger
                            usage["cost"] = spent(ex)
                    choices = chunk.get("choices")
                    if choices or include_usage:
                        if (choices and ex.ttft is None) or keep_text:
                            text = _text(choices[0], chat) if choices else ""
                            if text and ex.ttft is None:
                                ex.ttft = time.perf_counter() - ex.started
                            if keep_text:
                                output.append(text)
                        data = frame.chunk(chunk)
                        if data is not None:
                            await responder.write(data)
                        if choices and events >= 0:
                            events += 1
                    chunk = await anext(chunks, None)
            if events > 0:  # the engine never said: counted as it streamed, before the end reports it
                ex.completion_tokens, ex.prompt_tokens, events = events, ex.prompt_estimate, -1
            await responder.write(frame.end(ex))
        except TimeoutError:
            exc: ApiError = UpstreamTimeout(f"Engine '{engine.name}' did not finish within the total timeout.")
            ex.fail(exc)
            await responder.write(frame.error(exc))
        except ApiError as exc:
            ex.fail(exc)
            await responder.write(frame.error(exc))
        finally:
            if keep_text:
                ex.output = "".join(output)
            if events > 0:
                ex.completion_tokens = events
                ex.prompt_tokens = ex.prompt_estimate
    await responder.end()


def spent(ex: Exchange) -> float:
    """What the request costs so far: its tokens, and the seconds since it arrived."""
    return round(ex.price.cost(ex.prompt_tokens, ex.completion_tokens, time.perf_counter() - ex.started), 12)


def _text(choice: Json, chat: bool) -> str:
    if chat:
        delta = choice.get("delta") or {}
        text: str = delta.get("content") or ("<tool_call>" if delta.get("tool_calls") else "")
        return text
    return str(choice.get("text") or "")
