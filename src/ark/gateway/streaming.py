"""Relay an engine's stream to the client as server-sent events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing

import orjson

from ark.engines.base import Json
from ark.errors import ApiError, UpstreamTimeout
from ark.gateway.exchange import Exchange, error_body
from ark.gateway.router import Route
from ark.wire import Responder

SSE_HEADERS = [("content-type", "text/event-stream"), ("cache-control", "no-cache"), ("x-accel-buffering", "no")]


async def relay(
    responder: Responder,
    ex: Exchange,
    route: Route,
    chunks: AsyncIterator[Json],
    include_usage: bool,
    *,
    chat: bool,
    keep_text: bool,
) -> None:
    """Stream ``chunks`` as SSE under the engine's limiter and deadlines.

    The first chunk is awaited before any byte is sent, so errors up to the first token
    (engine down, first-token timeout, unknown model upstream) keep their HTTP status.
    After that an error arrives as a last ``data: {"error": ...}`` event, as OpenAI sends it.
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
    requested = route.requested
    output: list[str] = []
    events = 0  # token events that went out
    async with engine.limiter, aclosing(chunks):  # type: ignore[type-var]
        try:
            async with asyncio.timeout(first_timeout):
                chunk: Json | None = await anext(chunks, None)
        except TimeoutError:
            raise UpstreamTimeout(f"Engine '{engine.name}' sent no token within {first_timeout:g} s.") from None
        await responder.start(200, SSE_HEADERS)
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
                    choices = chunk.get("choices")
                    if choices or include_usage:
                        if (choices and ex.ttft is None) or keep_text:
                            text = _text(choices[0], chat) if choices else ""
                            if text and ex.ttft is None:
                                ex.ttft = time.perf_counter() - ex.started
                            if keep_text:
                                output.append(text)
                        chunk["model"] = requested
                        await responder.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
                        if choices and events >= 0:
                            events += 1
                    chunk = await anext(chunks, None)
            await responder.write(b"data: [DONE]\n\n")
        except TimeoutError:
            exc: ApiError = UpstreamTimeout(f"Engine '{engine.name}' did not finish within the total timeout.")
            ex.fail(exc)
            await responder.write(b"data: " + error_body(exc) + b"\n\n")
        except ApiError as exc:
            ex.fail(exc)
            await responder.write(b"data: " + error_body(exc) + b"\n\n")
        finally:
            if keep_text:
                ex.output = "".join(output)
            if events > 0:
                ex.completion_tokens = events
                ex.prompt_tokens = ex.prompt_estimate
    await responder.end()


def _text(choice: Json, chat: bool) -> str:
    if chat:
        delta = choice.get("delta") or {}
        text: str = delta.get("content") or ("<tool_call>" if delta.get("tool_calls") else "")
        return text
    return str(choice.get("text") or "")
