"""Ollama's request and response shapes, checked at the edge and translated to and from the engines' own.

Engines take OpenAI-shaped requests and answer in OpenAI's shapes (engines/base.py). Here an Ollama
request (``/api/chat``, ``/api/generate``, ``/api/embed``, ``/api/embeddings``) is checked field by
field and turned into that body, and an engine's answer back into what Ollama answers (its docs/api.md,
and its server's api/types.go for the field names). Pure functions on plain data: no I/O.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Any

import orjson

from ark.engines.base import Json, Sampling
from ark.errors import ApiError, InvalidRequest
from ark.gateway import requests as parse

_ROLES = frozenset({"system", "user", "assistant", "tool"})
_MAX_INPUTS = 2048  # as the OpenAI API's embeddings


def error_body(exc: ApiError) -> bytes:
    """Ollama's error shape: ``{"error": "message"}`` (the HTTP status carries the kind)."""
    return orjson.dumps({"error": exc.message})


@functools.lru_cache(maxsize=4)
def _utc_second(second: int) -> bytes:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()


def stamp(now: float | None = None) -> bytes:
    """Go's RFC 3339 with nanoseconds in UTC, as Ollama writes ``created_at`` (here to the microsecond). A
    stream stamps every line, so the part that changes once a second is formatted once a second."""
    second, micros = divmod(int((time.time() if now is None else now) * 1_000_000), 1_000_000)
    return b"%b.%06dZ" % (_utc_second(second), micros)


def created_at(now: float | None = None) -> str:
    """:func:`stamp` as text."""
    return stamp(now).decode()


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array"}.get(
        type(value), "an object"
    )


def bad(field: str, expected: str, value: Any) -> InvalidRequest:
    return InvalidRequest(f"Invalid value for '{field}': expected {expected}, got {_kind(value)}.", param=field)


@dataclass(frozen=True, slots=True)
class Generation:
    """A checked ``/api/chat`` or ``/api/generate`` request, as the engines take it."""

    model: str
    body: Json  # OpenAI-shaped: model, messages or prompt, sampling fields, options, tools, response_format
    messages: list[Json] | None  # chat (also /api/generate with the model's template); None: raw text
    prompt: str  # raw text completion when messages is None
    sampling: Sampling
    stream: bool
    keep_alive: float | None
    load_only: bool  # no messages / empty prompt: Ollama loads the model (or unloads, keep_alive 0) and answers


def model_of(body: Json) -> str:
    """The model a request names: ``model``, or ``name`` as older Ollama clients send it."""
    model = body.get("model", body.get("name"))
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("model is required", param="model")
    if len(model) > 256:
        raise InvalidRequest("Invalid value for 'model': longer than 256 characters.", param="model")
    return model


def _stream(body: Json) -> bool:
    value = body.get("stream", True)  # Ollama streams unless told not to
    if value is None:
        return True
    if not isinstance(value, bool):
        raise bad("stream", "a boolean", value)
    return value


def _number(options: Json, key: str, lo: float, hi: float) -> float | None:
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad(f"options.{key}", "a number", value)
    if not lo <= value <= hi:
        raise InvalidRequest(f"Invalid value for 'options.{key}': {value} is not between {lo:g} and {hi:g}.")
    return float(value)


def _integer(options: Json, key: str) -> int | None:
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"options.{key}", "an integer", value)
    if not -(2**63) <= value < 2**63:
        raise InvalidRequest(f"Invalid value for 'options.{key}': out of range.", param=f"options.{key}")
    return value


def _sampling(body: Json) -> tuple[Sampling, Json]:
    """Ollama's ``options``: the sampling fields every engine knows, and the options themselves (passed on
    to an Ollama engine, which reads num_ctx, top_k, repeat_penalty...)."""
    options = body.get("options")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise bad("options", "an object", options)
    num_predict = _integer(options, "num_predict")
    stop = options.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or len(stop) > 16 or not all(isinstance(s, str) for s in stop):
            raise bad("options.stop", "an array of up to 16 strings", stop)
    options = {k: v for k, v in options.items() if k != "num_predict"}  # it is max_tokens from here on
    sampling = Sampling(
        max_tokens=num_predict if num_predict is not None and num_predict > 0 else None,  # -1, -2: unlimited
        temperature=_number(options, "temperature", 0.0, 2.0),
        top_p=_number(options, "top_p", 0.0, 1.0),
        stop=tuple(s for s in stop or () if s),
        seed=_integer(options, "seed"),
    )
    return sampling, options


def _format(body: Json) -> Json | None:
    """``format``: "json" or a JSON schema, as OpenAI's ``response_format``."""
    value = body.get("format")
    if value is None or value == "":
        return None
    if value == "json":
        return {"type": "json_object"}
    if isinstance(value, dict):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": value}}
    raise bad("format", '"json" or a JSON schema object', value)


def _images(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(i, str) and i for i in value):
        raise bad(f"{where}.images", "an array of base64-encoded images", value)
    return value


def _with_images(text: str, images: list[str]) -> str | list[Json]:
    """OpenAI's content parts for a text with Ollama's base64 images."""
    if not images:
        return text
    parts: list[Json] = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}} for image in images]
    return parts


def _messages(value: Any) -> list[Json]:
    """Ollama's messages as OpenAI's: images as content parts, tool calls with ids and JSON-text arguments,
    a tool's answer tied to the call it answers (by ``tool_name``, else in order)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise bad("messages", "an array of messages", value)
    out: list[Json] = []
    pending: list[tuple[str, str]] = []  # tool calls not answered yet: (id, function name)
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad(where, "an object", message)
        role = message.get("role")
        if role not in _ROLES:
            raise InvalidRequest(
                f"Invalid value for '{where}.role': expected one of {', '.join(sorted(_ROLES))}.", param=where
            )
        content = message.get("content", "")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise bad(f"{where}.content", "a string", content)
        converted: Json = {"role": role, "content": _with_images(content, _images(message.get("images"), where))}
        calls = message.get("tool_calls")
        if calls is not None and role == "assistant":
            converted["tool_calls"] = _calls_in(calls, where, len(out))
            pending += [(c["id"], c["function"]["name"]) for c in converted["tool_calls"]]
        if role == "tool":
            name = message.get("tool_name")
            match = next((p for p in pending if p[1] == name), pending[0] if pending else None)
            if match is not None:
                pending.remove(match)
                converted["tool_call_id"] = match[0]
            else:
                converted["tool_call_id"] = f"call_{len(out)}"
        out.append(converted)
    return out


def _calls_in(calls: Any, where: str, turn: int) -> list[Json]:
    """An assistant turn's tool calls, Ollama's (``arguments`` an object) to OpenAI's (JSON text)."""
    if not isinstance(calls, list):
        raise bad(f"{where}.tool_calls", "an array", calls)
    out: list[Json] = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise bad(f"{where}.tool_calls[{j}].function.name", "a string", name)
        arguments = function.get("arguments") if isinstance(function, dict) else None
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise bad(f"{where}.tool_calls[{j}].function.arguments", "an object", arguments)
        out.append(
            {
                "id": f"call_{turn}_{j}",
                "type": "function",
                "function": {"name": name, "arguments": orjson.dumps(arguments).decode()},
            }
        )
    return out


def _tools(body: Json) -> list[Json] | None:
    """Ollama's ``tools`` are OpenAI's (``type`` may be left out): checked as the OpenAI API checks them."""
    value = body.get("tools")
    if value is None or value == []:
        return None
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise bad("tools", "an array of tools", value)
    tools = [{"type": "function", **tool} for tool in value]
    parse.tools({"tools": tools})
    return tools


def _openai_body(model: str, body: Json, sampling: Sampling, options: Json, stream: bool) -> Json:
    out: Json = {"model": model, "stream": stream}
    if sampling.max_tokens is not None:
        out["max_tokens"] = sampling.max_tokens
    if sampling.temperature is not None:
        out["temperature"] = sampling.temperature
    if sampling.top_p is not None:
        out["top_p"] = sampling.top_p
    if sampling.stop:
        out["stop"] = list(sampling.stop)
    if sampling.seed is not None:
        out["seed"] = sampling.seed
    if options:
        out["options"] = options  # an Ollama engine reads the rest (num_ctx, top_k...); others ignore it
    if (fmt := _format(body)) is not None:
        out["response_format"] = fmt
    return out


def chat(body: Json) -> Generation:
    """``POST /api/chat``."""
    model = model_of(body)
    stream = _stream(body)
    sampling, options = _sampling(body)
    messages = _messages(body.get("messages"))
    out = _openai_body(model, body, sampling, options, stream)
    out["messages"] = messages
    if (tools := _tools(body)) is not None:
        out["tools"] = tools
    load_only = not messages
    return Generation(model, out, messages, "", sampling, stream, parse.keep_alive(body), load_only)


def generate(body: Json) -> Generation:
    """``POST /api/generate``: with the model's chat template (system + prompt as messages), or ``raw``
    text (also with a ``suffix``, fill-in-the-middle) as a text completion."""
    model = model_of(body)
    stream = _stream(body)
    sampling, options = _sampling(body)
    prompt = body.get("prompt", "")
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise bad("prompt", "a string", prompt)
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        raise bad("system", "a string", system)
    raw = body.get("raw", False)
    if not isinstance(raw, bool):
        raise bad("raw", "a boolean", raw)
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise bad("suffix", "a string", suffix)
    images = _images(body.get("images"), "request")
    out = _openai_body(model, body, sampling, options, stream)
    keep_alive = parse.keep_alive(body)
    if raw or suffix:
        out["prompt"] = prompt
        if suffix:
            out["suffix"] = suffix
        return Generation(model, out, None, prompt, sampling, stream, keep_alive, not prompt)
    messages: list[Json] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": _with_images(prompt, images)})
    out["messages"] = messages
    return Generation(model, out, messages, prompt, sampling, stream, keep_alive, not prompt and not images)


def embed_inputs(body: Json) -> list[str]:
    """``POST /api/embed``'s ``input``: a string or an array of strings (empty: nothing to embed)."""
    value = body.get("input", [])
    if isinstance(value, str):
        value = [value] if value else []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad("input", "a string or an array of strings", value)
    if len(value) > _MAX_INPUTS:
        raise InvalidRequest(f"Invalid value for 'input': at most {_MAX_INPUTS} inputs per request.", param="input")
    return value


def embeddings_prompt(body: Json) -> str:
    """``POST /api/embeddings`` (the older endpoint): one ``prompt``."""
    value = body.get("prompt", "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise bad("prompt", "a string", value)
    return value


# -- answers ----------------------------------------------------------------------------------------------


def done_reason(finish_reason: str | None) -> str:
    """Ollama says "stop" or "length" (a turn that called tools ends with "stop")."""
    return "length" if finish_reason == "length" else "stop"


def tool_calls_out(calls: Any) -> list[Json]:
    """OpenAI's tool calls (``arguments`` JSON text) as Ollama's (an object)."""
    out: list[Json] = []
    for call in calls or ():
        function = call.get("function") or {}
        arguments: Any = function.get("arguments") or {}
        if isinstance(arguments, str):
            try:
                arguments = orjson.loads(arguments) if arguments.strip() else {}
            except orjson.JSONDecodeError:
                arguments = {"arguments": arguments}  # kept, not lost, when a model wrote broken JSON
        out.append({"function": {"name": function.get("name", ""), "arguments": arguments}})
    return out


@dataclass(slots=True)
class Timings:
    """Ollama's durations, in nanoseconds: the whole request, and the prompt and the answer within it."""

    total: int
    prompt: int
    answer: int

    @staticmethod
    def of(elapsed: float, ttft: float | None) -> Timings:
        first = ttft if ttft is not None else 0.0
        return Timings(int(elapsed * 1e9), int(first * 1e9), int(max(0.0, elapsed - first) * 1e9))


def stats(prompt_tokens: int, completion_tokens: int, timings: Timings) -> Json:
    """The counts and durations of a ``done`` answer (load_duration: the GPU arbiter loads models apart)."""
    return {
        "total_duration": timings.total,
        "load_duration": 0,
        "prompt_eval_count": prompt_tokens,
        "prompt_eval_duration": timings.prompt,
        "eval_count": completion_tokens,
        "eval_duration": timings.answer,
    }


def chat_answer(model: str, result: Json, timings: Timings, now: float | None = None) -> Json:
    """An engine's ``chat.completion`` as Ollama's ``/api/chat`` answer."""
    choice = (result.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    reply: Json = {"role": "assistant", "content": message.get("content") or ""}
    if message.get("tool_calls"):
        reply["tool_calls"] = tool_calls_out(message["tool_calls"])
    usage = result.get("usage") or {}
    return {
        "model": model,
        "created_at": created_at(now),
        "message": reply,
        "done_reason": done_reason(choice.get("finish_reason")),
        "done": True,
        **stats(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0), timings),
    }


def generate_answer(model: str, result: Json, timings: Timings, now: float | None = None) -> Json:
    """An engine's chat or text completion as Ollama's ``/api/generate`` answer."""
    choice = (result.get("choices") or [{}])[0]
    text = choice.get("text")
    if text is None:
        text = (choice.get("message") or {}).get("content") or ""
    usage = result.get("usage") or {}
    return {
        "model": model,
        "created_at": created_at(now),
        "response": text,
        "done": True,
        "done_reason": done_reason(choice.get("finish_reason")),
        **stats(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0), timings),
    }


def load_answer(model: str, chat: bool, unload: bool, now: float | None = None) -> Json:
    """The answer to a request with nothing to generate: the model is loaded ("load"), or the client asked
    it unloaded (``keep_alive: 0``: "unload"; under ARK the GPU arbiter decides when it really goes)."""
    answer: Json = {"model": model, "created_at": created_at(now)}
    if chat:
        answer["message"] = {"role": "assistant", "content": ""}
    else:
        answer["response"] = ""
    return {**answer, "done_reason": "unload" if unload else "load", "done": True}
