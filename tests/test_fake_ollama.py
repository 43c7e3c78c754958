"""The fake Ollama server speaks the real API: drive it with the official ``ollama`` client.

Where the client hides the wire (default ``stream``, content types, raw error bodies,
unknown routes), the tests use ``httpx`` directly, which the ``ollama`` client is built on.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import ollama
import orjson
import pytest

from tests.fakes.ollama import FakeOllama, parse_go_duration

CHAT_MODEL = "llama3.2:1b"
EMBED_MODEL = "nomic-embed-text:latest"
USER = [{"role": "user", "content": "Why is the sky blue?"}]

AsyncTest = Callable[[], Coroutine[Any, Any, None]]
# Plain HTTP on loopback: skip loading the CA bundle, which costs ~60 ms per client.
NO_TLS: dict[str, Any] = {"verify": False}


def run_async(test: AsyncTest) -> Callable[[], None]:
    """Run an ``async def`` test body on a fresh event loop (no pytest-asyncio here)."""

    @functools.wraps(test)
    def runner() -> None:
        asyncio.run(asyncio.wait_for(test(), timeout=10))

    return runner


@asynccontextmanager
async def serve(**kwargs: Any) -> AsyncIterator[tuple[FakeOllama, ollama.AsyncClient]]:
    """A started fake and an official client pointed at it; both closed afterwards."""
    async with FakeOllama(**kwargs) as fake, ollama.AsyncClient(host=fake.url, **NO_TLS) as client:
        yield fake, client


@asynccontextmanager
async def raw_http(fake: FakeOllama, **kwargs: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fake.url, **NO_TLS, **kwargs) as http:
        yield http


def ndjson(body: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in body.splitlines() if line]


async def eventually(predicate: Callable[[], bool]) -> None:
    """Poll server-side state that changes after the client has its answer (for up to 2 s)."""
    for _ in range(200):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached within 2 s")


async def running(client: ollama.AsyncClient) -> dict[str, ollama.ProcessResponse.Model]:
    return {str(model.name): model for model in (await client.ps()).models}


# ---------------------------------------------------------------------- discovery


@run_async
async def test_root_version_and_unknown_routes() -> None:
    async with serve() as (fake, _), raw_http(fake) as http:
        root = await http.get("/")
        assert (root.status_code, root.text) == (200, "Ollama is running")
        version = (await http.get("/api/version")).json()["version"]
        assert version.count(".") == 2
        missing = await http.get("/api/nope")
        assert (missing.status_code, missing.text) == (404, "404 page not found")
        wrong_method = await http.get("/api/chat")
        assert wrong_method.status_code == 405


@run_async
async def test_list_reports_installed_models_with_details() -> None:
    async with serve() as (_, client):
        models = (await client.list()).models
        assert [m.model for m in models] == [CHAT_MODEL, EMBED_MODEL]  # most recently modified first
        llama = models[0]
        assert llama.size and llama.size > 1_000_000_000
        assert llama.digest and len(llama.digest) == 64
        assert llama.details and llama.details.family == "llama"
        assert llama.details.parameter_size == "1.2B"
        assert llama.details.quantization_level == "Q8_0"
        assert llama.modified_at is not None and llama.modified_at.tzinfo is not None


@run_async
async def test_show_gives_parameter_count_and_context_length() -> None:
    async with serve(embed_dim=8) as (_, client):
        shown = await client.show(CHAT_MODEL)
        assert shown.modelinfo is not None
        arch = shown.modelinfo["general.architecture"]
        assert shown.modelinfo["general.parameter_count"] == 1_235_814_432
        assert shown.modelinfo[f"{arch}.context_length"] == 131_072
        assert shown.capabilities == ["completion", "tools"]
        embedder = await client.show(EMBED_MODEL)
        assert embedder.capabilities == ["embedding"]
        assert embedder.modelinfo is not None
        assert embedder.modelinfo["nomic-bert.embedding_length"] == 8


# ---------------------------------------------------------------------- chat / generate


@run_async
async def test_chat_streams_one_token_per_chunk_then_a_final_chunk() -> None:
    async with serve(reply_tokens=5) as (fake, client):
        parts = [part async for part in await client.chat(CHAT_MODEL, USER, stream=True)]
        assert len(parts) == 6
        assert all(not p.done and p.message.role == "assistant" for p in parts[:-1])
        final = parts[-1]
        assert final.done and final.done_reason == "stop" and final.message.content == ""
        assert final.eval_count == 5 and final.prompt_eval_count
        for duration in (final.total_duration, final.load_duration, final.eval_duration):
            assert duration and duration > 0
        assert final.created_at and final.created_at.endswith("Z")
        streamed = "".join(p.message.content or "" for p in parts)

        whole = await client.chat(CHAT_MODEL, USER, stream=False)
        assert whole.message.content == streamed  # deterministic for the same model and prompt
        assert whole.done_reason == "stop" and whole.eval_count == 5
        assert (fake.streams_started, fake.streams_completed, fake.streams_cancelled) == (1, 1, 0)
        assert [path for path, _ in fake.requests] == ["/api/chat", "/api/chat"]
        assert fake.requests[0][1]["messages"] == USER


@run_async
async def test_generate_stream_and_options() -> None:
    async with serve(reply_tokens=6) as (_, client):
        parts = [part async for part in await client.generate(CHAT_MODEL, "Hello", stream=True)]
        assert len(parts) == 7 and parts[-1].done_reason == "stop"
        assert parts[-1].context  # generate's final object carries a context
        text = "".join(p.response or "" for p in parts)

        limited = await client.generate(CHAT_MODEL, "Hello", options={"num_predict": 2, "temperature": 0})
        assert limited.done_reason == "length" and limited.eval_count == 2
        assert text.startswith(limited.response or "")

        other_seed = await client.generate(CHAT_MODEL, "Hello", options={"seed": 7})
        assert other_seed.response != text


@run_async
async def test_stop_sequences_end_the_reply_before_the_stop() -> None:
    async with serve() as (fake, client):
        fake.reply_script = ["Hello", " wor", "ld", " and", " more"]
        reply = await client.generate(CHAT_MODEL, "Hi", options={"stop": ["world"]})
        assert (reply.response, reply.done_reason) == ("Hello ", "stop")
        parts = [p async for p in await client.chat(CHAT_MODEL, USER, stream=True, options={"stop": ["ld"]})]
        # " wor" is withheld while it could still become the stop sequence, as the runner does.
        assert [p.message.content for p in parts] == ["Hello", " wor", ""]


@run_async
async def test_stream_is_the_default_on_the_wire() -> None:
    async with serve(reply_tokens=3) as (fake, _), raw_http(fake) as http:
        body = {"model": CHAT_MODEL, "messages": USER}
        streamed = await http.post("/api/chat", json=body)
        assert streamed.headers["content-type"] == "application/x-ndjson"
        lines = ndjson(streamed.content)
        assert len(lines) == 4 and lines[-1]["done"] is True
        assert "done_reason" not in lines[0]  # omitempty, like the Go structs
        single = await http.post("/api/chat", json={**body, "stream": False})
        assert single.headers["content-type"] == "application/json; charset=utf-8"
        assert single.json()["message"]["content"] == "".join(line["message"]["content"] for line in lines)


# ---------------------------------------------------------------------- embeddings


@run_async
async def test_embed_returns_normalised_deterministic_vectors() -> None:
    async with serve(embed_dim=16) as (_, client):
        one = await client.embed(EMBED_MODEL, "hello world")
        assert len(one.embeddings) == 1 and len(one.embeddings[0]) == 16
        assert math.isclose(math.fsum(v * v for v in one.embeddings[0]), 1.0, rel_tol=1e-5)
        assert one.prompt_eval_count == 2 and one.total_duration and one.load_duration

        many = await client.embed(EMBED_MODEL, ["hello world", "goodbye"])
        assert many.embeddings[0] == one.embeddings[0] and many.embeddings[1] != one.embeddings[0]

        short = await client.embed(EMBED_MODEL, "hello world", dimensions=4)
        assert len(short.embeddings[0]) == 4
        assert math.isclose(math.fsum(v * v for v in short.embeddings[0]), 1.0, rel_tol=1e-5)

        legacy = await client.embeddings(EMBED_MODEL, "hello world")
        norm = math.sqrt(math.fsum(v * v for v in legacy.embedding))
        assert [round(v / norm, 5) for v in legacy.embedding] == [round(v, 5) for v in one.embeddings[0]]


@run_async
async def test_embed_truncation_follows_the_truncate_flag() -> None:
    async with serve() as (_, client):
        long_text = "word " * 3000  # more tokens than nomic-embed-text's 2048
        truncated = await client.embed(EMBED_MODEL, long_text)
        assert truncated.prompt_eval_count == 2048
        with pytest.raises(ollama.ResponseError) as raised:
            await client.embed(EMBED_MODEL, long_text, truncate=False)
        assert raised.value.status_code == 400
        assert raised.value.error == "the input length exceeds the context length"


# ---------------------------------------------------------------------- keep_alive


@run_async
async def test_keep_alive_controls_what_ps_shows() -> None:
    async with serve() as (fake, client):
        assert (await client.ps()).models == []

        loaded = await client.generate(CHAT_MODEL, "")  # an empty prompt only loads the model
        assert loaded.done_reason == "load" and loaded.response == ""
        ps = await running(client)
        expires = ps[CHAT_MODEL].expires_at
        assert expires is not None
        assert timedelta(minutes=4) < expires - datetime.now(UTC) <= timedelta(minutes=5)  # the 5m default
        assert ps[CHAT_MODEL].context_length == 4096 and ps[CHAT_MODEL].size_vram == ps[CHAT_MODEL].size

        await client.embed(EMBED_MODEL, "x", keep_alive=-1)  # negative: never expires
        ps = await running(client)
        assert list(ps) == [EMBED_MODEL, CHAT_MODEL]  # the longest-lived first
        never = ps[EMBED_MODEL].expires_at
        assert never is not None and never.year > 2200

        unloaded = await client.chat(CHAT_MODEL, [], keep_alive=0)
        assert unloaded.done_reason == "unload"
        assert list(await running(client)) == [EMBED_MODEL]

        await client.chat(CHAT_MODEL, USER, keep_alive=0)  # used, then unloaded at once
        assert list(await running(client)) == [EMBED_MODEL]
        assert list(fake.loaded) == [EMBED_MODEL]


@run_async
async def test_keep_alive_durations_expire_and_unload_is_asynchronous() -> None:
    now = [100.0]  # the fake's clock, moved by hand: how long the requests took does not matter
    async with serve(unload_delay=0.4, clock=lambda: now[0]) as (_, client):
        await client.chat(CHAT_MODEL, USER, keep_alive="400ms")
        await client.embed(EMBED_MODEL, "x", keep_alive=0)
        now[0] += 0.39
        assert set(await running(client)) == {CHAT_MODEL, EMBED_MODEL}  # kept alive; the unload still under way
        now[0] += 0.01
        assert await running(client) == {}


@run_async
async def test_request_without_keep_alive_keeps_the_loaded_duration() -> None:
    async with serve() as (_, client):
        await client.chat(CHAT_MODEL, [], keep_alive="1h")
        await client.chat(CHAT_MODEL, USER)  # no keep_alive: the runner keeps its 1h
        expires = (await running(client))[CHAT_MODEL].expires_at
        assert expires is not None and expires - datetime.now(UTC) > timedelta(minutes=59)


# ---------------------------------------------------------------------- errors


BAD_KEEP_ALIVE = 'time: unknown unit " minutes" in duration "5 minutes"'
BAD_OPTION = 'option "num_predict" must be of type integer'


@pytest.mark.parametrize(
    ("call", "status", "message"),
    [
        (lambda c: c.chat("missing:7b", USER), 404, "model 'missing:7b' not found"),
        (lambda c: c.generate("missing:7b", "hi"), 404, "model 'missing:7b' not found"),
        (lambda c: c.show("missing:7b"), 404, "model 'missing:7b' not found"),
        (lambda c: c.embed("missing:7b", "hi"), 404, 'model "missing:7b" not found, try pulling it first'),
        (lambda c: c.chat(EMBED_MODEL, USER), 400, f'"{EMBED_MODEL}" does not support chat'),
        (lambda c: c.generate(EMBED_MODEL, "hi"), 400, f'"{EMBED_MODEL}" does not support generate'),
        (lambda c: c.chat(CHAT_MODEL, USER, keep_alive="5 minutes"), 400, BAD_KEEP_ALIVE),
        (lambda c: c.chat(CHAT_MODEL, USER, options={"num_predict": "many"}), 500, BAD_OPTION),
    ],
)
def test_errors_match_ollama(
    call: Callable[[ollama.AsyncClient], Coroutine[Any, Any, Any]], status: int, message: str
) -> None:
    async def scenario() -> None:
        async with serve() as (_, client):
            with pytest.raises(ollama.ResponseError) as raised:
                await call(client)
            assert (raised.value.status_code, raised.value.error) == (status, message)

    asyncio.run(scenario())


@run_async
async def test_malformed_requests_are_rejected_with_400() -> None:
    async with serve() as (fake, _), raw_http(fake) as http:
        cases = [
            (b"", "missing request body"),
            (b"{not json", "invalid character 'n' looking for beginning of object key string"),
            (b'{"model": "llama3.2:1b"', "unexpected EOF"),
            (b"[]", "json: cannot unmarshal array into Go value of type api.ChatRequest"),
            (b'{"model": 3}', "json: cannot unmarshal number into Go struct field ChatRequest.model of type string"),
            (b'{"messages": []}', "model is required"),
        ]  # fmt: skip
        for body, message in cases:
            response = await http.post("/api/chat", content=body)
            assert (response.status_code, response.json()) == (400, {"error": message}), body
            assert response.headers["content-type"] == "application/json; charset=utf-8"
        assert len(fake.requests) == len(cases)


@run_async
async def test_reset_restores_a_shared_fake() -> None:
    async with serve(reply_tokens=3) as (fake, client):
        fake.mode, fake.reply_tokens = "error500", 9
        fake.remove_model(EMBED_MODEL)
        fake.add_model("qwen2.5:0.5b")
        fake.load(CHAT_MODEL, keep_alive=-1)
        fake.reset()
        assert (fake.mode, fake.reply_tokens, fake.requests, fake.loaded) == ("normal", 3, [], {})
        assert [m.model for m in (await client.list()).models] == [CHAT_MODEL, EMBED_MODEL]


def test_go_duration_parsing() -> None:
    assert parse_go_duration("1h30m") == 5400 * 10**9
    assert parse_go_duration("1.5s") == 1_500_000_000
    assert parse_go_duration("0") == 0
    with pytest.raises(ValueError, match='missing unit in duration "300"'):
        parse_go_duration("300")


# ---------------------------------------------------------------------- failure modes


@run_async
async def test_error500_mode() -> None:
    async with serve() as (fake, client):
        fake.mode = "error500"
        with pytest.raises(ollama.ResponseError) as raised:
            await client.chat(CHAT_MODEL, USER)
        assert raised.value.status_code == 500
        assert (await client.list()).models  # GET endpoints keep answering


@run_async
async def test_error_mid_stream_reaches_the_client_as_a_response_error() -> None:
    async with serve() as (fake, client):
        fake.mode, fake.drop_after = "error_mid_stream", 2
        received = []
        with pytest.raises(ollama.ResponseError, match="llama runner process has terminated"):
            async for part in await client.chat(CHAT_MODEL, USER, stream=True):
                received.append(part)
        assert len(received) == 2


@run_async
async def test_hang_mode_times_out_the_client_and_sees_it_leave() -> None:
    async with FakeOllama() as fake, ollama.AsyncClient(host=fake.url, timeout=0.2, **NO_TLS) as client:
        fake.mode = "hang"
        with pytest.raises(httpx.ReadTimeout):
            await client.chat(CHAT_MODEL, USER)
        await asyncio.wait_for(fake.cancelled_event.wait(), 2)
        assert fake.requests_cancelled == 1 and fake.streams_started == 0
        assert fake.loaded == {}  # it never got as far as loading the model


@run_async
async def test_hang_after_first_sends_one_chunk_then_stalls() -> None:
    async with FakeOllama() as fake, ollama.AsyncClient(host=fake.url, **NO_TLS) as client:
        fake.mode = "hang_after_first"
        parts = await client.chat(CHAT_MODEL, USER, stream=True)
        assert not (await anext(parts)).done  # the first chunk comes, however long it takes
        with pytest.raises(TimeoutError):  # then nothing (a slower machine only waits longer for nothing)
            await asyncio.wait_for(anext(parts), 0.2)
        await parts.aclose()  # the client leaves
        await asyncio.wait_for(fake.cancelled_event.wait(), 2)
        assert (fake.streams_started, fake.streams_cancelled, fake.streams_completed) == (1, 1, 0)


@run_async
async def test_drop_mode_aborts_the_connection_mid_stream() -> None:
    async with serve(reply_tokens=10) as (fake, client):
        fake.mode, fake.drop_after = "drop", 3
        received = []
        with pytest.raises(httpx.RemoteProtocolError):
            async for part in await client.generate(CHAT_MODEL, "hi", stream=True):
                received.append(part)
        assert len(received) == 3
        with pytest.raises(httpx.RemoteProtocolError):
            await client.embed(EMBED_MODEL, "hi")  # a single-object answer is dropped before any byte
        assert fake.streams_cancelled == 0 and fake.requests_cancelled == 0  # the fake hung up, not the client
        await eventually(lambda: fake.loaded[CHAT_MODEL].refcount == 0)


@run_async
async def test_client_abandoning_a_stream_is_counted() -> None:
    async with serve(reply_tokens=50, token_delay=0.02) as (fake, client):
        stream = await client.chat(CHAT_MODEL, USER, stream=True)
        async for part in stream:
            assert not part.done
            break
        assert isinstance(stream, AsyncGenerator)  # typed as an iterator, built as a generator
        await stream.aclose()  # closes the HTTP response, and with it the connection
        await asyncio.wait_for(fake.cancelled_event.wait(), 2)
        assert (fake.streams_started, fake.streams_cancelled, fake.streams_completed) == (1, 1, 0)

        fake.cancelled_event.clear()
        task = asyncio.create_task(client.chat(CHAT_MODEL, USER, stream=False))
        await eventually(lambda: len(fake.requests) == 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(fake.cancelled_event.wait(), 2)
        assert fake.requests_cancelled == 2 and fake.streams_cancelled == 1
        await eventually(lambda: fake.loaded[CHAT_MODEL].refcount == 0)  # the model was released
