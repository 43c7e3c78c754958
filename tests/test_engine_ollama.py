"""The Ollama engine against the stand-in, directly: request translation and answers in OpenAI's shapes."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from ark.config import load_settings
from ark.engines.base import ChatRequest, CompletionRequest, EmbeddingRequest, Sampling
from ark.engines.ollama import Loaded, OllamaEngine, parse_ps
from ark.errors import InvalidRequest, ModelNotFound, UpstreamError
from tests.fakes.ollama import FakeOllama

HELLO = [{"role": "user", "content": "hello"}]


def run(scenario: Callable[[OllamaEngine, FakeOllama], Awaitable[None]], keep_alive: str = "", **settings: Any) -> None:
    async def main() -> None:
        async with FakeOllama(reply_tokens=5) as fake:
            defaults = load_settings(env={}).engines[0]
            engine = OllamaEngine(replace(defaults, url=fake.url, keep_alive=keep_alive, **settings))
            await engine.start()
            try:
                await scenario(engine, fake)
            finally:
                await engine.close()

    asyncio.run(main())


def chat(stream: bool = False, **body: object) -> ChatRequest:
    sampling = Sampling(max_tokens=3, temperature=0.5, top_p=0.9, stop=("zz",), seed=7)
    return ChatRequest("llama3.2:1b", HELLO, sampling, stream, {"model": "llama3.2:1b", **body})


def test_chat_translates_options_and_answers_openai_shape() -> None:
    async def scenario(engine: OllamaEngine, fake: FakeOllama) -> None:
        result = await engine.chat(chat(response_format={"type": "json_object"}, options={"num_ctx": 4096}))
        path, sent = fake.requests[-1]
        assert path == "/api/chat" and sent["stream"] is False
        assert sent["options"] == {
            "num_predict": 3,
            "temperature": 0.5,
            "top_p": 0.9,
            "stop": ["zz"],
            "seed": 7,
            "num_ctx": 4096,
        }
        assert sent["format"] == "json" and "keep_alive" not in sent  # Ollama's own default
        assert result["object"] == "chat.completion" and result["choices"][0]["finish_reason"] == "length"
        assert result["usage"]["completion_tokens"] == 3

    run(scenario)


def test_engine_keep_alive_default_and_client_override() -> None:
    async def scenario(engine: OllamaEngine, fake: FakeOllama) -> None:
        await engine.chat(chat())
        assert fake.requests[-1][1]["keep_alive"] == "10m"
        await engine.chat(replace(chat(), keep_alive=120.0))
        assert fake.requests[-1][1]["keep_alive"] == 120  # a bare number is seconds for Ollama
        loaded = (await engine.running())["llama3.2:1b"]  # /api/ps
        assert loaded.size > 0 and loaded.size_vram == loaded.size

    run(scenario, keep_alive="10m")


def test_chat_stream_ends_with_finish_and_usage() -> None:
    async def scenario(engine: OllamaEngine, fake: FakeOllama) -> None:
        chunks = [c async for c in engine.chat_stream(chat(stream=True))]
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert chunks[-2]["choices"][0]["finish_reason"] == "length"
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert text == (await engine.chat(chat()))["choices"][0]["message"]["content"]

    run(scenario)


def test_completions_use_generate() -> None:
    async def scenario(engine: OllamaEngine, fake: FakeOllama) -> None:
        request = CompletionRequest(
            "llama3.2:1b", "once upon", Sampling(max_tokens=4), False, {"model": "llama3.2:1b", "suffix": "end"}
        )
        result = await engine.complete(request)
        path, sent = fake.requests[-1]
        assert path == "/api/generate" and sent["prompt"] == "once upon" and sent["suffix"] == "end"
        assert result["object"] == "text_completion" and result["usage"]["completion_tokens"] == 4
        chunks = [c async for c in engine.complete_stream(replace(request, stream=True))]
        assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == result["choices"][0]["text"]

    run(scenario)


def test_embeddings_and_models() -> None:
    async def scenario(engine: OllamaEngine, fake: FakeOllama) -> None:
        result = await engine.embed(EmbeddingRequest("nomic-embed-text:latest", ["a", "b"], {}))
        assert [d["index"] for d in result["data"]] == [0, 1] and len(result["data"][0]["embedding"]) == 16
        assert {m.id for m in await engine.list_models()} == {"llama3.2:1b", "nomic-embed-text:latest"}

    run(scenario)


def test_images_become_base64_and_remote_urls_are_refused() -> None:
    async def scenario(engine: OllamaEngine, fake: FakeOllama) -> None:
        parts = [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ]
        await engine.chat(replace(chat(), messages=[{"role": "user", "content": parts}]))
        message = fake.requests[-1][1]["messages"][0]
        assert message == {"role": "user", "content": "what is this", "images": ["iVBORw0KGgo="]}
        remote = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
        with pytest.raises(InvalidRequest, match="data: URLs"):
            await engine.chat(replace(chat(), messages=[{"role": "user", "content": remote}]))

    run(scenario)


def test_errors() -> None:
    async def scenario(engine: OllamaEngine, fake: FakeOllama) -> None:
        with pytest.raises(ModelNotFound):
            await engine.chat(replace(chat(), model="nope:1b"))
        fake.mode = "error_mid_stream"
        with pytest.raises(UpstreamError):
            _ = [c async for c in engine.chat_stream(chat(stream=True))]

    run(scenario)


def test_ps_is_read_in_one_place() -> None:
    models = [{"name": "a:1b", "size": 10, "size_vram": 4}, {"size": 1}, "junk", {"name": "b:1b", "size": True}]
    assert parse_ps({"models": models}) == {"a:1b": Loaded("a:1b", 10, 4), "b:1b": Loaded("b:1b", 0, 0)}
    assert parse_ps({"models": None}) == {} == parse_ps([])


def _sent_keep_alive(fake: FakeOllama) -> Any:
    path, body = fake.requests[-1]
    assert path in ("/api/chat", "/api/generate", "/api/embed")
    return body.get("keep_alive", "absent")


async def _each_endpoint(engine: OllamaEngine, fake: FakeOllama, keep_alive: float | None) -> list[Any]:
    """What Ollama received as keep_alive from a chat, a completion and an embedding asking ``keep_alive``."""
    sent = []
    await engine.chat(replace(chat(), keep_alive=keep_alive))
    sent.append(_sent_keep_alive(fake))
    await engine.complete(CompletionRequest("llama3.2:1b", "x", Sampling(max_tokens=1), False, {}, keep_alive))
    sent.append(_sent_keep_alive(fake))
    await engine.embed(EmbeddingRequest("nomic-embed-text:latest", ["a"], {}, keep_alive))
    sent.append(_sent_keep_alive(fake))
    return sent


def test_a_clients_keep_alive_is_lowered_to_max_keep_alive_s() -> None:
    async def scenario(engine: OllamaEngine, fake: FakeOllama) -> None:
        assert await _each_endpoint(engine, fake, 90.0) == [90, 90, 90]  # within the bound: as asked
        assert await _each_endpoint(engine, fake, math.inf) == [600] * 3  # Ollama's "forever" (-1, "-5m")
        assert await _each_endpoint(engine, fake, 1e300) == [600] * 3
        assert await _each_endpoint(engine, fake, 0.0) == [0] * 3  # unload after the request: allowed
        assert await _each_endpoint(engine, fake, 1.5) == ["1500ms"] * 3  # a Go duration Ollama reads exactly
        assert await _each_endpoint(engine, fake, None) == [-1] * 3  # the engine's own, not the client's
        assert fake.loaded["llama3.2:1b"].session_ns == 2**63 - 1  # only the engine's setting pins a model

    run(scenario, keep_alive="-1", max_keep_alive_s=600)


def test_under_the_arbiter_the_client_keep_alive_is_replaced_by_the_arbiters() -> None:
    async def scenario(engine: OllamaEngine, fake: FakeOllama) -> None:
        engine.managed = True  # what the GPU arbiter sets when it takes the engine on
        for asked in (None, 0.0, 30.0, math.inf):  # a client can neither unload nor pin a model
            assert await _each_endpoint(engine, fake, asked) == [-1, -1, -1]  # a number: Ollama parses it
        assert {"llama3.2:1b", "nomic-embed-text:latest"} <= set(fake.loaded)  # keep_alive 0 unloaded nothing

    run(scenario, keep_alive="10m", max_keep_alive_s=600)
