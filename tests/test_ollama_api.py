"""The Ollama-compatible API on the gateway, driven by the official `ollama` client against `ark up`.

Engines behind it: the embedded llama.cpp engine (a tiny GGUF the suite generates), the Ollama stand-in,
and an OpenAI-compatible upstream (the vLLM stand-in, for embeddings). Keys, budgets, rate limits,
aliases and the ledger are ARK's own, the same as on the OpenAI API.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import orjson
import pytest

from tests.conftest import MASTER_KEY, ArkProcess, LoopThread, start_ark, stop_ark, wait_until
from tests.fakes.ollama import FakeOllama
from tests.fakes.openai_upstream import FakeOpenAIUpstream, vector

CONFIG = """
master_key = "{KEY}"

[gateway]
listen = "127.0.0.1:{PORT}"
max_body_bytes = "64KiB"

[engines.embedded]
kind = "embedded"
n_threads = 1
n_ctx = 2048
bundled_model = false

[engines.ollama]
kind = "ollama"
url = "{OLLAMA}"
gpu_managed = "no"

[engines.vllm]
kind = "openai"
url = "{UPSTREAM}"

[models.tiny]
output_cost_per_token = 0.125

[aliases]
"gpt-4" = "tiny"
"fast" = "llama3.2:1b"
"""

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def upstream(loop_thread: LoopThread) -> Iterator[FakeOpenAIUpstream]:
    fake = FakeOpenAIUpstream(model="embedder", dims=16)
    loop_thread.run(fake.start())
    yield fake
    loop_thread.run(fake.stop())


@pytest.fixture(scope="module")
def ark(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_gguf: Path,
    fake_ollama_server: FakeOllama,
    upstream: FakeOpenAIUpstream,
) -> Iterator[ArkProcess]:
    tmp = tmp_path_factory.mktemp("ollama-api")
    (tmp / "data" / "models").mkdir(parents=True)
    shutil.copy(tiny_gguf, tmp / "data" / "models" / "tiny.gguf")
    shutil.copy(tiny_gguf, tmp / "data" / "models" / "spare.gguf")  # loaded only when a test asks
    text = CONFIG.replace("{KEY}", MASTER_KEY).replace("{OLLAMA}", fake_ollama_server.url)
    process = start_ark(text.replace("{UPSTREAM}", upstream.url), tmp)
    yield process
    stop_ark(process)


_CLIENTS: list[ollama.Client] = []


def client(ark: ArkProcess, key: str = MASTER_KEY) -> ollama.Client:
    """The official client with the key as a Bearer header (closed when the module ends)."""
    made = ollama.Client(host=ark.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    _CLIENTS.append(made)
    return made


@pytest.fixture(scope="module", autouse=True)
def close_clients() -> Iterator[None]:
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()


def new_key(ark: ArkProcess, **fields: object) -> str:
    created = httpx.post(
        ark.url + "/key/generate", headers={"Authorization": f"Bearer {MASTER_KEY}"}, json=fields, timeout=10
    )
    assert created.status_code == 200, created.text
    return str(created.json()["key"])


def ledger(ark: ArkProcess, key: str, count: int) -> list[dict[str, object]]:
    """The key's rows in the ledger, once ``count`` are there (the ledger writes in batches)."""
    rows: list[dict[str, object]] = []

    def written() -> bool:
        nonlocal rows
        reply = httpx.get(
            ark.url + "/spend/logs",
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
            params={"api_key": key, "limit": "100"},
            timeout=10,
        )
        assert reply.status_code == 200, reply.text
        rows = reply.json()
        return len(rows) >= count

    assert wait_until(written), rows
    return rows


# -- chat and generate on every engine ------------------------------------------------------------


@pytest.mark.parametrize("model", ["tiny", "llama3.2:1b", "gpt-4"])
def test_chat_whole_and_streamed(ark: ArkProcess, fake_ollama: FakeOllama, model: str) -> None:
    c = client(ark)
    whole = c.chat(model=model, messages=HELLO, options={"num_predict": 4, "temperature": 0})
    assert whole.model == model and whole.done is True and whole.done_reason in ("stop", "length")
    assert whole.message.role == "assistant" and isinstance(whole.message.content, str)
    assert whole.eval_count is not None and 0 < whole.eval_count <= 4
    assert whole.prompt_eval_count and whole.total_duration and whole.total_duration > 0

    parts = list(c.chat(model=model, messages=HELLO, options={"num_predict": 4, "temperature": 0}, stream=True))
    assert parts[-1].done is True and all(p.done is False for p in parts[:-1])
    assert all(p.model == model for p in parts)
    assert parts[-1].eval_count == whole.eval_count
    streamed = "".join(p.message.content or "" for p in parts)
    assert streamed == whole.message.content  # temperature 0: the same answer both ways


def test_generate_with_template_raw_and_stream(ark: ArkProcess, fake_ollama: FakeOllama) -> None:
    c = client(ark)
    for model in ("tiny", "llama3.2:1b"):
        templated = c.generate(model=model, prompt="hello", system="Be brief.", options={"num_predict": 3})
        assert templated.done and templated.model == model and isinstance(templated.response, str)
        assert templated.eval_count is not None and 0 < templated.eval_count <= 3
        raw = c.generate(model=model, prompt="hello", raw=True, options={"num_predict": 3})
        assert raw.done and raw.eval_count is not None and raw.eval_count <= 3
        parts = list(c.generate(model=model, prompt="hello", options={"num_predict": 3}, stream=True))
        assert parts[-1].done and parts[-1].done_reason in ("stop", "length")
        assert "".join(p.response for p in parts[:-1]) == "".join(p.response for p in parts)


def test_an_empty_request_loads_the_model_as_ollama_does(ark: ArkProcess, fake_ollama: FakeOllama) -> None:
    c = client(ark)
    unload = c.generate(model="spare", prompt="", keep_alive=0)  # `ollama stop`: never loads it
    assert unload.done_reason == "unload" and "spare" not in {m.model for m in c.ps().models}
    loaded = c.generate(model="spare", prompt="")
    assert loaded.done and loaded.done_reason == "load" and loaded.response == ""
    assert "spare" in {m.model for m in c.ps().models}  # the GPU arbiter made it resident
    chat = c.chat(model="tiny", messages=[])
    assert chat.done_reason == "load" and chat.message.content == ""


def test_a_client_option_never_lifts_the_limit_a_budget_reserved(ark: ArkProcess, fake_ollama: FakeOllama) -> None:
    budgeted = new_key(ark, key_alias="num-predict", max_budget=1000.0)
    headers = {"Authorization": f"Bearer {budgeted}"}
    fake_ollama.requests.clear()
    client(ark, budgeted).chat(model="fast", messages=HELLO, options={"num_predict": -1})  # "unlimited"
    httpx.post(  # an Ollama option through the OpenAI API
        ark.api + "/chat/completions",
        headers=headers,
        json={"model": "fast", "messages": HELLO, "max_tokens": 1, "options": {"num_predict": 100000}},
        timeout=30,
    ).raise_for_status()
    sent = [body["options"]["num_predict"] for path, body in fake_ollama.requests if path == "/api/chat"]
    assert sent == [4096, 1]  # the model's max_output_tokens, then the request's max_tokens


def test_ollama_options_reach_the_ollama_engine(ark: ArkProcess, fake_ollama: FakeOllama) -> None:
    fake_ollama.requests.clear()
    client(ark).chat(
        model="fast", messages=HELLO, stream=False, options={"num_predict": 2, "top_k": 7, "num_ctx": 1024}
    )
    sent = [body for path, body in fake_ollama.requests if path == "/api/chat"][-1]
    assert sent["model"] == "llama3.2:1b"  # the alias resolved
    assert sent["options"]["top_k"] == 7 and sent["options"]["num_predict"] == 2 and sent["options"]["num_ctx"] == 1024


# -- embeddings ---------------------------------------------------------------------------------------


def test_embed_and_the_older_embeddings(ark: ArkProcess, upstream: FakeOpenAIUpstream) -> None:
    c = client(ark)
    result = c.embed(model="embedder", input=["hello world", "ark"])
    assert result.model == "embedder" and len(result.embeddings) == 2
    assert list(result.embeddings[0]) == pytest.approx(vector("hello world", 16), rel=1e-6)
    assert result.prompt_eval_count == 3  # the stand-in counts words
    one = c.embeddings(model="embedder", prompt="ark")
    assert list(one.embedding) == pytest.approx(vector("ark", 16), rel=1e-6)
    assert c.embed(model="embedder", input=[]).embeddings == []
    tiny = c.embed(model="tiny", input="hello")
    assert len(tiny.embeddings) == 1 and len(tiny.embeddings[0]) > 0


# -- models -------------------------------------------------------------------------------------------


def test_tags_show_ps_and_version(ark: ArkProcess, fake_ollama: FakeOllama) -> None:
    c = client(ark)
    names = {m.model for m in c.list().models}
    assert {"tiny", "llama3.2:1b", "gpt-4", "fast", "embedder"} <= names
    shown = c.show("tiny")
    assert shown.details is not None and shown.details.format == "gguf" and shown.capabilities == ["completion"]
    with pytest.raises(ollama.ResponseError) as caught:
        c.show("no-such-model")
    assert caught.value.status_code == 404 and "no-such-model" in caught.value.error
    assert isinstance(c.ps().models, list)
    version = httpx.get(ark.url + "/api/version", timeout=5)  # no key, as on Ollama
    assert version.status_code == 200 and version.json()["version"].count(".") == 2


def test_a_key_sees_and_uses_only_its_models(ark: ArkProcess, fake_ollama: FakeOllama) -> None:
    key = new_key(ark, models=["tiny"])
    c = client(ark, key)
    assert {m.model for m in c.list().models} == {"tiny", "gpt-4"}  # gpt-4 is an alias of tiny
    with pytest.raises(ollama.ResponseError) as caught:
        c.chat(model="llama3.2:1b", messages=HELLO)
    assert caught.value.status_code == 403
    with pytest.raises(ollama.ResponseError) as shown:
        c.show("llama3.2:1b")
    assert shown.value.status_code == 404


def test_managing_models_is_refused(ark: ArkProcess) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client(ark).pull("llama3.2:1b")
    assert caught.value.status_code == 403 and "ark models pull" in caught.value.error
    with pytest.raises(ollama.ResponseError) as deleted:
        client(ark).delete("tiny")
    assert deleted.value.status_code == 403


# -- keys, budgets, rate limits, the ledger -----------------------------------------------------------


def test_keys_are_required_and_errors_are_ollamas_shape(ark: ArkProcess) -> None:
    with pytest.raises(ollama.ResponseError) as caught, ollama.Client(host=ark.url) as keyless:
        keyless.chat(model="tiny", messages=HELLO)
    assert caught.value.status_code == 401 and "API key" in caught.value.error
    bad = httpx.post(ark.url + "/api/chat", headers={"Authorization": "Bearer sk-ark-nope"}, json={"model": "tiny"})
    assert bad.status_code == 401 and set(bad.json()) == {"error"} and isinstance(bad.json()["error"], str)


def test_a_budget_and_rpm_hold_on_the_ollama_api(ark: ArkProcess) -> None:
    # 4 tokens at 0.125 = 0.5 credits reserved a request; a budget of 1 credit covers two at most
    key = new_key(ark, key_alias="ollama-budget", max_budget=1.0)
    c = client(ark, key)
    served = 0
    refusal = None
    for _ in range(4):
        try:
            c.chat(model="tiny", messages=HELLO, options={"num_predict": 4})
            served += 1
        except ollama.ResponseError as exc:
            refusal = exc
    assert 1 <= served <= 2 and refusal is not None
    assert refusal.status_code == 429 and "budget" in refusal.error
    rows = ledger(ark, key, 4)
    assert len([r for r in rows if r["status"] == 200]) == served
    assert {r["call_type"] for r in rows} == {"/api/chat"}
    assert sum(float(r["spend"]) for r in rows) <= 1.0  # type: ignore[arg-type]

    limited = client(ark, new_key(ark, key_alias="ollama-rpm", rpm_limit=2))
    limited.embed(model="embedder", input="a")
    limited.generate(model="tiny", prompt="hi", options={"num_predict": 1})
    with pytest.raises(ollama.ResponseError) as caught:
        limited.chat(model="tiny", messages=HELLO, options={"num_predict": 1})
    assert caught.value.status_code == 429 and "2 requests per minute" in caught.value.error


def test_streamed_usage_lands_in_the_ledger(ark: ArkProcess) -> None:
    key = new_key(ark, key_alias="ollama-ledger")
    parts = list(client(ark, key).chat(model="tiny", messages=HELLO, options={"num_predict": 3}, stream=True))
    rows = ledger(ark, key, 1)
    assert len(rows) == 1 and rows[0]["model"] == "tiny" and rows[0]["call_type"] == "/api/chat"
    assert rows[0]["completion_tokens"] == parts[-1].eval_count
    assert rows[0]["prompt_tokens"] == parts[-1].prompt_eval_count


# -- hostile input ------------------------------------------------------------------------------------

ROUTES = ["/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/show"]


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"[1, 2]", 400),
        (b"", 400),
        (b'{"model": 7}', 400),
        (b'{"model": ""}', 400),
        (b'{"model": "no-such-model", "prompt": "x", "messages": [], "input": "x"}', 404),
    ],
)
def test_bad_bodies_answer_ollamas_error_shape(ark: ArkProcess, path: str, body: bytes, status: int) -> None:
    headers = {"Authorization": f"Bearer {MASTER_KEY}", "content-type": "application/json"}
    reply = httpx.post(ark.url + path, content=body, headers=headers, timeout=10)
    assert reply.status_code == status, reply.text
    error = reply.json()
    assert set(error) == {"error"} and isinstance(error["error"], str) and error["error"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/chat", {"model": "tiny", "messages": "hello"}, "messages"),
        ("/api/chat", {"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, "role"),
        ("/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": 5}]}, "content"),
        ("/api/chat", {"model": "tiny", "messages": HELLO, "stream": "yes"}, "stream"),
        ("/api/chat", {"model": "tiny", "messages": HELLO, "options": {"temperature": "hot"}}, "temperature"),
        ("/api/chat", {"model": "tiny", "messages": HELLO, "options": {"num_predict": 1.5}}, "num_predict"),
        ("/api/chat", {"model": "tiny", "messages": HELLO, "options": []}, "options"),
        ("/api/chat", {"model": "tiny", "messages": HELLO, "format": 3}, "format"),
        ("/api/chat", {"model": "tiny", "messages": HELLO, "tools": [{"type": "function"}]}, "tools"),
        ("/api/chat", {"model": "tiny", "messages": HELLO, "tools": [{"function": {"name": "bad name!"}}]}, "tools"),
        ("/api/chat", {"model": "tiny", "messages": HELLO, "tools": [{"function": {"name": "f"}}] * 2}, "tools"),
        ("/api/chat", {"model": "tiny", "messages": HELLO, "keep_alive": "forever"}, "keep_alive"),
        ("/api/generate", {"model": "tiny", "prompt": ["x"]}, "prompt"),
        ("/api/generate", {"model": "tiny", "prompt": "x", "images": [1]}, "images"),
        ("/api/embed", {"model": "tiny", "input": [1, 2]}, "input"),
        ("/api/embed", {"model": "tiny", "input": ["x"] * 2049}, "input"),
        ("/api/embeddings", {"model": "tiny", "prompt": {"a": 1}}, "prompt"),
    ],
)
def test_wrong_types_name_the_field(ark: ArkProcess, path: str, body: dict[str, object], field: str) -> None:
    reply = httpx.post(ark.url + path, json=body, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=10)
    assert reply.status_code == 400, reply.text
    assert field in reply.json()["error"]


def test_a_huge_body_is_refused_and_the_gateway_keeps_serving(ark: ArkProcess) -> None:
    huge = orjson.dumps({"model": "tiny", "prompt": "x" * 100_000})
    headers = {"Authorization": f"Bearer {MASTER_KEY}", "content-type": "application/json"}
    reply = httpx.post(ark.url + "/api/generate", content=huge, headers=headers, timeout=10)
    assert reply.status_code == 413
    assert client(ark).generate(model="tiny", prompt="hi", options={"num_predict": 1}).done


# -- tool calls through the Ollama API ----------------------------------------------------------------

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_tool_calls_come_back_in_ollamas_shape_whole_and_streamed(ark: ArkProcess, fake_ollama: FakeOllama) -> None:
    fake_ollama.tool_script = [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Oslo"})]
    c = client(ark)
    asked = [{"role": "user", "content": "Weather in Paris and Oslo?"}]
    whole = c.chat(model="llama3.2:1b", messages=asked, tools=[WEATHER])
    calls = [(t.function.name, dict(t.function.arguments)) for t in whole.message.tool_calls or []]
    assert calls == [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Oslo"})]
    parts = list(c.chat(model="llama3.2:1b", messages=asked, tools=[WEATHER], stream=True))
    streamed = [(t.function.name, dict(t.function.arguments)) for p in parts for t in p.message.tool_calls or []]
    assert streamed == calls and parts[-1].done
    # the calls and the tool's answer go back in the next turn, as Ollama's clients send them
    followed = [
        *asked,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "18 degrees", "tool_name": "get_weather"},
    ]
    fake_ollama.tool_script = None
    fake_ollama.requests.clear()
    c.chat(model="llama3.2:1b", messages=followed, options={"num_predict": 2})
    sent = [body for path, body in fake_ollama.requests if path == "/api/chat"][-1]["messages"]
    assert sent[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert sent[2]["role"] == "tool" and sent[2]["content"] == "18 degrees" and sent[2]["tool_name"] == "get_weather"
