"""What every API that generates shares once a request is parsed: the engine's body, the model's lease,
the engine's deadline, and a whole (not streamed) answer under the engine's limiter.

The OpenAI API (gateway/openai.py) and the Ollama API (ollama_api/) differ only in the shapes they parse
and answer; the path from a route to an engine's answer is this one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

from ark.engines.base import Engine, Json, Sampling
from ark.errors import UpstreamTimeout
from ark.gateway.exchange import Exchange
from ark.gateway.router import Route

if TYPE_CHECKING:
    from ark.runtime import Runtime


def fixed_options(rt: Runtime) -> dict[str, dict[str, int]]:
    """The engine options each model's config fixes (num_ctx...), by model id."""
    return {m.id: m.fixed_options for m in rt.settings.models if m.fixed_options}


def engine_body(body: Json, route: Route, fixed: Mapping[str, dict[str, int]] | None = None) -> Json:
    """The client's body as an engine receives it: the engine's model id, no ARK-only fields, and the
    options the model's config fixes (num_ctx...) over the client's, so that no client makes Ollama reload."""
    out = {**body, "model": route.model}
    out.pop("keep_alive", None)
    options = fixed.get(route.model) if fixed else None
    if options:
        client = body.get("options")
        out["options"] = {**(client if isinstance(client, dict) else {}), **options}
    return out


def capped(ex: Exchange, sampling: Sampling, to_engine: Json) -> Sampling:
    """A request on a budget that sets no max_tokens gets the model's ``max_output_tokens``: what its
    reservation assumed (an answer that ran on to the end of the context would cost more than was reserved).
    Requests no budget covers keep the engine's own limit."""
    if sampling.max_tokens is not None or ex.reservation is None:
        return sampling
    to_engine["max_tokens"] = ex.price.max_output_tokens
    return replace(sampling, max_tokens=ex.price.max_output_tokens)


async def lease(rt: Runtime, ex: Exchange, route: Route) -> None:
    """Under the GPU arbiter: the model resident and held until the response ends (released by the record)."""
    if rt.gpu is not None:
        ex.lease = await rt.gpu.lease(route.model, route.engine.managed)


async def whole(engine: Engine, call: Callable[[], Awaitable[Json]]) -> Json:
    """A non-streamed answer: under the engine's limiter and its total timeout."""
    async with engine.limiter, deadline(engine):
        return await call()


def count(ex: Exchange, result: Json) -> Json:
    """Take an engine's usage into the exchange (what the record charges); the result, for chaining."""
    usage = result.get("usage") or {}
    ex.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    ex.completion_tokens = int(usage.get("completion_tokens") or 0)
    return result


@asynccontextmanager
async def deadline(engine: Engine) -> AsyncIterator[None]:
    """The engine's total timeout around a non-streamed request, as a 504 that names the engine."""
    seconds = engine.settings.total_timeout
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise UpstreamTimeout(f"Engine '{engine.name}' did not answer within {seconds:g} s.") from None
