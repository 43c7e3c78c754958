"""`ark up` as a real process, driven by the official openai client.

Engines behind it: the embedded llama.cpp engine on a tiny GGUF the suite
generates, the Ollama stand-in on a real port, and an OpenAI-compatible
engine whose port is closed (for the 502 path).
"""

from __future__ import annotations

import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from tests.conftest import MASTER_KEY, ArkProcess, free_port, start_ark, stop_ark, wait_until
from tests.fakes.ollama import FakeOllama
from tests.gguf_factory import END_TOKEN

CONFIG = """
master_key = "{KEY}"
data_dir = "{DATA}"

[gateway]
listen = "127.0.0.1:{PORT}"
max_body_bytes = "64KiB"

[engines.embedded]
kind = "embedded"
n_threads = 1
n_ctx = 65536  # room for answers far longer than any test waits for: a cancelled one cannot finish first
bundled_model = false
max_queue = 4

[engines.ollama]
kind = "ollama"
url = "{OLLAMA}"
first_token_timeout = 1.0
total_timeout = 2.5
max_parallel = 1
max_queue = 0
keep_alive = "7m"
max_keep_alive_s = 600
gpu_managed = "no"  # keep_alive passes through; tests/test_arbiter_gateway.py covers the managed engine

[engines.dead]
kind = "openai"
url = "http://127.0.0.1:{DEAD}/v1"
connect_timeout = 1.0

[models."ghost-model"]
engine = "dead"

[models."llama3.2:1b"]
num_ctx = 8192  # every client gets this context: none makes Ollama reload the model

[aliases]
"gpt-4" = "tiny"
"fast" = "llama3.2:1b"
"""

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def ark(
    tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path, fake_ollama_server: FakeOllama
) -> Iterator[ArkProcess]:
    tmp = tmp_path_factory.mktemp("ark")
    (tmp / "data" / "models").mkdir(parents=True)
    shutil.copy(tiny_gguf, tmp / "data" / "models" / "tiny.gguf")
    text = CONFIG.replace("{KEY}", MASTER_KEY).replace("{OLLAMA}", fake_ollama_server.url)
    process = start_ark(text.replace("{DEAD}", str(free_port())), tmp)
    yield process
    stop_ark(process)


@pytest.fixture
def client(ark: ArkProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=ark.api, api_key=MASTER_KEY, max_retries=0, timeout=30)


def error_body(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


# -- the happy paths ------------------------------------------------------------------------------


def test_models_lists_engines_models_and_aliases(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list().data}
    assert {"tiny", "llama3.2:1b", "nomic-embed-text:latest", "gpt-4", "fast", "ghost-model"} <= ids
    assert client.models.retrieve("gpt-4").id == "gpt-4"


def test_chat_non_stream(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=12, temperature=0)
    assert reply.object == "chat.completion"
    assert reply.model == "tiny"
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens == 12 and reply.usage.prompt_tokens > 0
    again = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=12, temperature=0)
    assert again.choices[0].message.content == reply.choices[0].message.content  # greedy is deterministic


def test_chat_stop_by_end_token(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="tiny", messages=HELLO, max_tokens=12, logit_bias={str(END_TOKEN): 100}
    )
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens == 0


def test_chat_stream_matches_non_stream(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=10, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=HELLO,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert all(c.model == "tiny" for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens  # type: ignore[union-attr]
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens  # type: ignore[union-attr]


def test_stream_without_include_usage_has_no_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=5, stream=True))
    assert chunks and all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_completions_stream_and_not(client: openai.OpenAI) -> None:
    plain = client.completions.create(model="tiny", prompt="hello", max_tokens=8, temperature=0)
    assert plain.object == "text_completion" and plain.choices[0].finish_reason == "length"
    assert plain.usage is not None and plain.usage.completion_tokens == 8
    chunks = list(client.completions.create(model="tiny", prompt="hello", max_tokens=8, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == plain.choices[0].text


def test_embeddings_float_and_base64(client: openai.OpenAI) -> None:
    # The openai client asks for base64 by default and decodes it itself.
    result = client.embeddings.create(model="tiny", input=["hello world", "ark"])
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 64
    assert result.data[0].embedding != result.data[1].embedding
    floats = client.embeddings.create(model="tiny", input="hello world", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(result.data[0].embedding, rel=1e-6)
    assert result.usage.prompt_tokens > 0


def test_alias_answers_under_the_alias(client: openai.OpenAI, ark: ArkProcess) -> None:
    reply = client.chat.completions.create(model="gpt-4", messages=HELLO, max_tokens=3)
    assert reply.model == "gpt-4"
    chunks = list(client.chat.completions.create(model="gpt-4", messages=HELLO, max_tokens=3, stream=True))
    assert {c.model for c in chunks} == {"gpt-4"}
    log = ark.data_dir / "logs" / "access.jsonl"

    def last() -> dict[str, object]:
        lines = log.read_bytes().splitlines() if log.exists() else []
        return orjson.loads(lines[-1]) if lines else {}  # type: ignore[no-any-return]

    # the access log is flushed twice a second
    assert wait_until(lambda: last().get("stream") is True and last().get("alias") == "gpt-4", timeout=5)
    record = last()
    assert record["model"] == "tiny" and record["key"] == "master"
    assert "messages" not in record and "prompt" not in record  # prompts are not logged by default


def test_ollama_engine_through_gateway(client: openai.OpenAI, fake_ollama: FakeOllama) -> None:
    reply = client.chat.completions.create(model="fast", messages=HELLO, max_tokens=4)
    assert reply.model == "fast" and reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens == 4
    path, body = fake_ollama.requests[-1]
    assert path == "/api/chat" and body["model"] == "llama3.2:1b"
    assert body["options"]["num_predict"] == 4 and body["keep_alive"] == "7m"
    chunks = list(
        client.chat.completions.create(
            model="fast", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    emb = client.embeddings.create(model="nomic-embed-text:latest", input=["a", "b"])
    assert len(emb.data) == 2


def test_options_fixed_by_the_config_win_over_the_clients(ark: ArkProcess, fake_ollama: FakeOllama) -> None:
    body = {
        "model": "fast",
        "messages": HELLO,
        "max_tokens": 2,
        "options": {"num_ctx": 2048, "repeat_penalty": 1.3},  # a client with its own defaults
    }
    reply = httpx.post(ark.api + "/chat/completions", headers={"Authorization": f"Bearer {MASTER_KEY}"}, json=body)
    assert reply.status_code == 200, reply.text
    _, sent = fake_ollama.requests[-1]
    assert sent["options"]["num_ctx"] == 8192 and sent["options"]["repeat_penalty"] == 1.3
    httpx.post(
        ark.api + "/chat/completions",
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
        json={"model": "fast", "messages": HELLO, "max_tokens": 2},
    )
    _, sent = fake_ollama.requests[-1]
    assert sent["options"]["num_ctx"] == 8192  # a client that asks nothing gets the same context


def test_client_keep_alive_passes_through(client: openai.OpenAI, fake_ollama: FakeOllama) -> None:
    client.chat.completions.create(model="fast", messages=HELLO, extra_body={"keep_alive": 0})
    assert fake_ollama.requests[-1][1]["keep_alive"] == 0


@pytest.mark.parametrize(
    ("asked", "sent"),
    [
        ("90s", 90),
        ("1h30m", 600),  # over [engines.ollama] max_keep_alive_s
        (-1, 600),  # Ollama's "forever", lowered like any other long one
        ("-1", 600),
        ("-5m", 600),
        (1e300, 600),
        (2.5, 2),  # a number is whole seconds to Ollama
        ("1500ms", "1500ms"),
    ],
)
def test_client_keep_alive_is_bounded(ark: ArkProcess, fake_ollama: FakeOllama, asked: object, sent: object) -> None:
    master = {"Authorization": f"Bearer {MASTER_KEY}"}
    bodies = [
        ("/chat/completions", {"model": "fast", "messages": HELLO, "max_tokens": 1}),
        ("/completions", {"model": "fast", "prompt": "x", "max_tokens": 1}),
        ("/embeddings", {"model": "nomic-embed-text:latest", "input": "x"}),
    ]
    for path, body in bodies:
        reply = httpx.post(ark.api + path, headers=master, json={**body, "keep_alive": asked}, timeout=30)
        assert reply.status_code == 200, reply.text
        assert fake_ollama.requests[-1][1]["keep_alive"] == sent, path


@pytest.mark.parametrize("asked", ["5 minutes", "1e300", "", "5mm", "m", True, [5], {"m": 5}])
def test_malformed_keep_alive_is_400(ark: ArkProcess, fake_ollama: FakeOllama, asked: object) -> None:
    before = len(fake_ollama.requests)
    for path, body in [
        ("/chat/completions", {"model": "fast", "messages": HELLO}),
        ("/completions", {"model": "fast", "prompt": "x"}),
        ("/embeddings", {"model": "nomic-embed-text:latest", "input": "x"}),
    ]:
        headers = {"Authorization": f"Bearer {MASTER_KEY}"}
        reply = httpx.post(ark.api + path, headers=headers, json={**body, "keep_alive": asked}, timeout=30)
        assert reply.status_code == 400, reply.text
        error = error_body(reply)
        assert error["type"] == "invalid_request_error" and error["param"] == "keep_alive"
    assert len(fake_ollama.requests) == before  # refused at the edge: nothing reached Ollama


def test_health_and_metrics(ark: ArkProcess, client: openai.OpenAI) -> None:
    assert httpx.get(ark.url + "/health/live").json() == {"status": "ok"}
    ready = httpx.get(ark.url + "/health/ready").json()
    assert ready["status"] == "ready" and ready["engines"]["embedded"]["up"] is True
    assert ready["engines"]["dead"]["up"] is False
    before = ark.metric("ark_requests_total", model="tiny", status="200")
    tokens = ark.metric("ark_tokens_total", model="tiny", kind="completion")
    client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=4)
    assert ark.metric("ark_requests_total", model="tiny", status="200") == before + 1
    assert ark.metric("ark_tokens_total", model="tiny", kind="completion") == tokens + 4
    text = ark.metrics()
    for name in (
        "ark_request_duration_seconds_bucket",
        "ark_time_to_first_token_seconds_bucket",
        "ark_inflight_requests",
        "ark_engine_up",
    ):
        assert name in text


PROXIED = [
    ("X-Real-IP", "203.0.113.9"),
    ("X-Real-IP", ""),
    ("X-Forwarded-For", "203.0.113.9"),
    ("Forwarded", "for=203.0.113.9"),
    ("X-Forwarded-Host", "llm.example.org"),
    ("X-Forwarded-Proto", "https"),
]


@pytest.mark.parametrize(("header", "value"), PROXIED)
def test_metrics_through_a_proxy_need_the_master_key(ark: ArkProcess, header: str, value: str) -> None:
    """Nginx on this machine connects from 127.0.0.1 too: a forwarding header says the request is not
    Prometheus's local scrape but someone's on the internet, who needs the master key."""
    url = ark.url + "/metrics"
    assert httpx.get(url).status_code == 200  # the scrape: from 127.0.0.1, no proxy in between
    refused = httpx.get(url, headers={header: value})
    assert refused.status_code == 401 and error_body(refused)["code"] == "invalid_api_key"
    master = {"Authorization": f"Bearer {MASTER_KEY}"}
    key = httpx.post(ark.url + "/key/generate", headers=master, json={}).json()["key"]
    virtual = httpx.get(url, headers={header: value, "Authorization": f"Bearer {key}"})
    assert virtual.status_code == 403 and error_body(virtual)["code"] == "admin_only"
    opened = httpx.get(url, headers={header: value, **master})
    assert opened.status_code == 200 and "ark_inflight_requests" in opened.text


# -- every error status, in OpenAI's shape ------------------------------------------------------


def test_401_missing_and_wrong_key(ark: ArkProcess) -> None:
    bad = openai.OpenAI(base_url=ark.api, api_key="sk-wrong-key-0000000000000000", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.models.list()
    assert caught.value.status_code == 401
    assert error_body(caught.value.response)["code"] == "invalid_api_key"
    response = httpx.post(ark.api + "/chat/completions", json={"model": "tiny", "messages": HELLO})
    assert response.status_code == 401 and error_body(response)["code"] == "invalid_api_key"


def test_404_unknown_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    error = error_body(caught.value.response)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "no-such-model" in str(error["message"])
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="x")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "tiny"}', "messages"),
        (b'{"model": "tiny", "messages": []}', "messages"),
        (b'{"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}', "messages[0].role"),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', "temperature"),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": 9}', "temperature"),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', "max_tokens"),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream"),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stop": [1]}', "stop"),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "n": 3}', "n"),
        (b'{"model": 42, "messages": [{"role": "user", "content": "x"}]}', "model"),
    ],
)
def test_400_bad_bodies(ark: ArkProcess, body: bytes, param: str | None) -> None:
    response = httpx.post(
        ark.api + "/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {MASTER_KEY}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    error = error_body(response)
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_400_through_the_client(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=HELLO, temperature=7)
    assert error_body(caught.value.response)["param"] == "temperature"
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="tiny", input=[])


def test_413_body_over_the_limit(client: openai.OpenAI, ark: ArkProcess) -> None:
    huge = [{"role": "user", "content": "x" * 70_000}]
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="tiny", messages=huge)
    assert caught.value.status_code == 413
    assert error_body(caught.value.response)["code"] == "request_too_large"
    # Without a Content-Length the limit still holds (chunked upload).
    response = httpx.post(
        ark.api + "/chat/completions",
        content=iter([b'{"model": "tiny", "x": "' + b"y" * 80_000 + b'"}']),
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
    )
    assert response.status_code == 413


def test_429_engine_queue_full(client: openai.OpenAI, fake_ollama: FakeOllama) -> None:
    fake_ollama.token_delay = 0.2  # one slow stream holds the only slot (max_parallel 1, max_queue 0)
    stream = client.chat.completions.create(model="fast", messages=HELLO, stream=True)
    next(iter(stream))
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="fast", messages=HELLO)
    assert caught.value.response.headers["Retry-After"] == "1"
    assert error_body(caught.value.response)["code"] == "queue_full"
    stream.close()


def test_502_engine_down(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="ghost-model", messages=HELLO)
    assert caught.value.status_code == 502
    error = error_body(caught.value.response)
    assert error["code"] == "upstream_error" and "dead" in str(error["message"])


def test_502_engine_error(client: openai.OpenAI, fake_ollama: FakeOllama) -> None:
    fake_ollama.mode = "error500"
    with pytest.raises(openai.InternalServerError) as caught:  # the client's class for every 5xx
        client.chat.completions.create(model="fast", messages=HELLO)
    assert caught.value.status_code == 502


def test_504_engine_hangs(client: openai.OpenAI, fake_ollama: FakeOllama) -> None:
    fake_ollama.mode = "hang"
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="fast", messages=HELLO, stream=True)
    assert caught.value.status_code == 504 and error_body(caught.value.response)["code"] == "upstream_timeout"
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="fast", messages=HELLO)
    assert caught.value.status_code == 504


def test_stream_that_stalls_ends_with_an_error_event(client: openai.OpenAI, fake_ollama: FakeOllama) -> None:
    fake_ollama.mode = "hang_after_first"
    stream = client.chat.completions.create(model="fast", messages=HELLO, stream=True)
    with pytest.raises(openai.APIError, match="total timeout"):
        list(stream)


def test_stream_dropped_by_engine_ends_with_an_error_event(client: openai.OpenAI, fake_ollama: FakeOllama) -> None:
    fake_ollama.mode, fake_ollama.drop_after = "drop", 2
    stream = client.chat.completions.create(model="fast", messages=HELLO, stream=True)
    with pytest.raises(openai.APIError, match="closed the connection"):
        list(stream)


# -- a client that goes away stops the work -------------------------------------------------------


def test_disconnect_cancels_the_ollama_request(client: openai.OpenAI, fake_ollama: FakeOllama) -> None:
    fake_ollama.token_delay, fake_ollama.reply_tokens = 0.05, 200
    stream = client.chat.completions.create(model="fast", messages=HELLO, stream=True)
    iterator = iter(stream)
    next(iterator), next(iterator)
    stream.close()
    assert wait_until(lambda: fake_ollama.streams_cancelled == 1, timeout=5)
    assert fake_ollama.streams_completed == 0


LONG = 60000  # tokens: minutes of generation for the tiny model on any machine


def _generated(ark: ArkProcess) -> float:
    return ark.metric("ark_engine_generated_tokens_total", engine="embedded")


def test_disconnect_cancels_embedded_generation(client: openai.OpenAI, ark: ArkProcess) -> None:
    before = _generated(ark)
    stream = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=LONG, stream=True)
    iterator = iter(stream)
    next(iterator), next(iterator)
    stream.close()
    # the model's worker answers one request at a time: this one is served once the first has stopped
    reply = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=2)
    assert reply.usage is not None and reply.usage.completion_tokens == 2
    # what the worker sampled for both (counted when each ends): the first stopped far short of its length
    assert 2 < _generated(ark) - before < LONG, "the engine kept generating for a client that left"


def test_disconnect_of_non_streamed_request_stops_generation(ark: ArkProcess, client: openai.OpenAI) -> None:
    before = _generated(ark)
    with pytest.raises(httpx.ReadTimeout):  # the client gives up long before such an answer could end
        httpx.post(
            ark.api + "/chat/completions",
            timeout=0.3,
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
            json={"model": "tiny", "messages": HELLO, "max_tokens": LONG},
        )
    reply = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=2)
    assert reply.choices[0].finish_reason == "length"
    assert 2 <= _generated(ark) - before < LONG


def test_base64_embedding_is_float32_little_endian(ark: ArkProcess) -> None:
    response = httpx.post(
        ark.api + "/embeddings",
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
        json={"model": "tiny", "input": "ark", "encoding_format": "base64"},
    )
    import base64

    raw = base64.b64decode(response.json()["data"][0]["embedding"])
    assert len(raw) == 64 * 4
    assert all(v == v for v in struct.unpack("<64f", raw))
