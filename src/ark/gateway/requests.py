"""Parse and check API request bodies once, at the edge, into typed values.

Every check names the offending field in ``param`` and says what was expected,
as OpenAI's API does; nothing downstream sees an unchecked body.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import orjson

from ark.arbiter.policy import Priority
from ark.engines.base import Json, Sampling
from ark.errors import InvalidRequest

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MAX_TOOLS = 128  # OpenAI's limit
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # OpenAI's rule for a function's name
_SCHEMA_DEPTH = 32
_SCHEMA_NODES = 10_000
_TYPE_NAMES = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    list: "an array",
    dict: "an object",
}


@dataclass(frozen=True, slots=True)
class Common:
    """What every generation endpoint shares."""

    model: str
    sampling: Sampling
    stream: bool
    include_usage: bool
    keep_alive: float | None  # seconds; math.inf: forever


def parse_body(raw: bytes) -> Json:
    if not raw:
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest(f"The request body must be a JSON object, not {_kind(body)}.")
    return body


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _bad(param: str, expected: str, value: Any) -> InvalidRequest:
    return InvalidRequest(f"Invalid value for '{param}': expected {expected}, got {_kind(value)}.", param=param)


def _number(body: Json, key: str, lo: float, hi: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(key, f"a number between {lo:g} and {hi:g}", value)
    if not lo <= value <= hi:
        raise InvalidRequest(f"Invalid value for '{key}': {value} is not between {lo:g} and {hi:g}.", param=key)
    return float(value)


def _int(body: Json, key: str, lo: int, hi: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(key, "an integer", value)
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise InvalidRequest(f"Invalid value for '{key}': {value} is not {bound}.", param=key)
    return value


def _bool(body: Json, key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(key, "a boolean", value)
    return value


def model_name(body: Json) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("'model' is required: the id of a model from GET /v1/models.", param="model")
    if len(model) > 256:
        raise InvalidRequest("Invalid value for 'model': longer than 256 characters.", param="model")
    return model


def _stop(body: Json) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    if isinstance(stop, list) and len(stop) <= 16 and all(isinstance(s, str) for s in stop):
        return tuple(s for s in stop if s)
    raise _bad("stop", "a string or an array of up to 16 strings", stop)


_KEEP_ALIVE = 'a duration such as "5m", "1h30m" or "0", or a number of seconds (negative: forever)'
# Go's time.ParseDuration, which Ollama applies to a keep_alive string (api/types.go, Duration.UnmarshalJSON)
_GO_DURATION = re.compile(r"(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:ns|us|\u00b5s|\u03bcs|ms|s|m|h))+")
_GO_PART = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_SECONDS = re.compile(r"[-+]?[0-9]+(?:\.[0-9]*)?")  # "-1", "300": ARK reads them as the number they spell
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive(body: Json) -> float | None:
    """Ollama's ``keep_alive`` in seconds, read as Ollama reads it: a number is whole seconds, a string a Go
    duration (ARK also reads a string that is a bare number, "-1", as that number); any negative value is
    forever (``math.inf``). What reaches the engine is the engine's call (engines/ollama.py)."""
    value = body.get("keep_alive")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _bad("keep_alive", _KEEP_ALIVE, value)
    if not isinstance(value, str) or _SECONDS.fullmatch(value):
        number = float(value)  # a string of 400 digits is inf here
        return math.inf if number < 0 or math.isinf(number) else float(math.floor(number))
    sign, text = value[:1], value[1:] if value[:1] in ("-", "+") else value
    if text == "0":
        return 0.0
    if not _GO_DURATION.fullmatch(text):
        raise InvalidRequest(f"Invalid value for 'keep_alive': expected {_KEEP_ALIVE}.", param="keep_alive")
    seconds = sum(float(number) * _GO_UNITS[unit] for number, unit in _GO_PART.findall(text))
    return math.inf if sign == "-" and seconds > 0 else seconds


def common(body: Json) -> Common:
    model = model_name(body)
    max_tokens = _int(body, "max_completion_tokens", 1) or _int(body, "max_tokens", 1)
    if (n := _int(body, "n", 1)) is not None and n != 1:
        raise InvalidRequest("Only n=1 is supported.", param="n")
    stream = _bool(body, "stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise _bad("stream_options", "an object", options)
        if not stream:
            raise InvalidRequest("'stream_options' is only allowed when 'stream' is true.", param="stream_options")
        include_usage = _bool(options, "include_usage")
    for key in ("presence_penalty", "frequency_penalty"):
        _number(body, key, -2.0, 2.0)
    sampling = Sampling(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0.0, 2.0),
        top_p=_number(body, "top_p", 0.0, 1.0),
        stop=_stop(body),
        seed=_int(body, "seed", -(2**63), 2**63 - 1),
    )
    return Common(model, sampling, stream, include_usage, keep_alive(body))


def messages(body: Json) -> list[Json]:
    """The chat's messages, checked together with the tools they may call (:func:`tools`): an assistant turn's
    ``tool_calls`` and a ``tool`` turn's ``tool_call_id``."""
    tools(body)
    value = body.get("messages")
    if not isinstance(value, list) or not value:
        raise InvalidRequest("'messages' is required: a non-empty array of messages.", param="messages")
    for i, message in enumerate(value):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(param, "an object", message)
        role = message.get("role")
        if role not in _ROLES:
            raise InvalidRequest(
                f"Invalid value for '{param}.role': expected one of {', '.join(sorted(_ROLES))}.",
                param=f"{param}.role",
            )
        if role == "assistant" and message.get("tool_calls") is not None:
            _tool_calls(message["tool_calls"], f"{param}.tool_calls")
        if role == "tool" and not (isinstance(message.get("tool_call_id"), str) and message["tool_call_id"]):
            raise InvalidRequest(
                f"'{param}.tool_call_id' is required: the id of the tool call this message answers.",
                param=f"{param}.tool_call_id",
            )
        content = message.get("content")
        if content is None and role == "assistant":
            continue  # an assistant turn that only called tools
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise _bad(f"{param}.content[{j}]", "an object with a 'type'", part)
        elif not isinstance(content, str):
            raise _bad(f"{param}.content", "a string or an array of content parts", content)
    return value


def _tool_calls(calls: Any, param: str) -> None:
    """An assistant turn's calls, as OpenAI answered them: ``{"id", "type": "function", "function": {"name",
    "arguments"}}`` with the arguments as JSON text."""
    if not isinstance(calls, list):
        raise _bad(param, "an array of tool calls", calls)
    for j, call in enumerate(calls):
        where = f"{param}[{j}]"
        if not isinstance(call, dict):
            raise _bad(where, "an object", call)
        if not isinstance(call.get("id"), str) or not call["id"]:
            raise _bad(f"{where}.id", "a non-empty string", call.get("id"))
        if call.get("type", "function") != "function":
            raise InvalidRequest(f"Invalid value for '{where}.type': expected 'function'.", param=f"{where}.type")
        function = call.get("function")
        if not isinstance(function, dict):
            raise _bad(f"{where}.function", "an object", function)
        if not isinstance(function.get("name"), str):
            raise _bad(f"{where}.function.name", "a string", function.get("name"))
        if not isinstance(function.get("arguments"), str):
            raise _bad(f"{where}.function.arguments", "a string of JSON", function.get("arguments"))


def tools(body: Json) -> tuple[str, ...]:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls``, checked as OpenAI checks them; returns the names
    of the functions offered.

    A tool is ``{"type": "function", "function": {"name", "description"?, "parameters"?, "strict"?}}``: a name
    of 1 to 64 letters, digits, ``_`` or ``-``, no two alike, at most 128 tools. ``parameters`` (a JSON
    schema) may nest 32 levels and hold 10,000 objects and arrays in all: engines turn schemas into grammars,
    and a hostile one must not cost a worker more than a reasonable one. ``tool_choice`` is ``"none"``,
    ``"auto"``, ``"required"`` or ``{"type": "function", "function": {"name"}}`` naming one of them.
    """
    value = body.get("tools")
    names: list[str] = []
    if value is not None:
        if not isinstance(value, list):
            raise _bad("tools", "an array of tools", value)
        if len(value) > MAX_TOOLS:
            raise InvalidRequest(f"Invalid value for 'tools': {len(value)} tools, at most {MAX_TOOLS}.", param="tools")
        budget = [_SCHEMA_NODES]
        for i, tool in enumerate(value):
            names.append(_tool(tool, f"tools[{i}]", names, budget))
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise InvalidRequest(
                "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or a function to call.",
                param="tool_choice",
            )
        if choice == "required" and not names:
            raise InvalidRequest("'tool_choice' is 'required' but 'tools' offers none.", param="tool_choice")
    elif choice is not None:
        function = choice.get("function") if isinstance(choice, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(choice, dict) or choice.get("type") != "function" or not isinstance(name, str):
            expected = '"none", "auto", "required" or {"type": "function", "function": {"name"}}'
            raise _bad("tool_choice", expected, choice)
        if name not in names:
            raise InvalidRequest(
                f"Invalid value for 'tool_choice': the function '{name[:64]}' is not among 'tools'.",
                param="tool_choice",
            )
    if body.get("parallel_tool_calls") is not None:
        _bool(body, "parallel_tool_calls")
    return tuple(names)


def _tool(tool: Any, param: str, names: list[str], budget: list[int]) -> str:
    if not isinstance(tool, dict):
        raise _bad(param, "an object", tool)
    if tool.get("type") != "function":
        raise InvalidRequest(f"Invalid value for '{param}.type': expected 'function'.", param=f"{param}.type")
    function = tool.get("function")
    if not isinstance(function, dict):
        raise _bad(f"{param}.function", "an object", function)
    name = function.get("name")
    if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
        raise InvalidRequest(
            f"Invalid value for '{param}.function.name': expected 1 to 64 letters, digits, '_' or '-'.",
            param=f"{param}.function.name",
        )
    if name in names:
        raise InvalidRequest(f"'tools' names the function '{name}' twice.", param=f"{param}.function.name")
    if function.get("description") is not None and not isinstance(function["description"], str):
        raise _bad(f"{param}.function.description", "a string", function["description"])
    if function.get("strict") is not None and not isinstance(function["strict"], bool):
        raise _bad(f"{param}.function.strict", "a boolean", function["strict"])
    parameters = function.get("parameters")
    if parameters is not None:
        if not isinstance(parameters, dict):
            raise _bad(f"{param}.function.parameters", "an object (a JSON schema)", parameters)
        _schema_size(parameters, f"{param}.function.parameters", budget)
    return name


def _schema_size(schema: Json, param: str, budget: list[int]) -> None:
    """Count the objects and arrays of ``schema`` against ``budget`` (shared by all tools), and its depth."""
    level: list[Any] = [schema]
    for _ in range(_SCHEMA_DEPTH):
        budget[0] -= len(level)
        if budget[0] < 0:
            raise InvalidRequest(
                f"Invalid value for '{param}': the tools' schemas hold more than {_SCHEMA_NODES} objects and arrays.",
                param=param,
            )
        level = [v for node in level for v in (node.values() if isinstance(node, dict) else node)]
        level = [v for v in level if isinstance(v, dict | list)]
        if not level:
            return
    raise InvalidRequest(f"Invalid value for '{param}': nested deeper than {_SCHEMA_DEPTH} levels.", param=param)


def prompt(body: Json) -> str:
    value = body.get("prompt")
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise _bad("prompt", "a string (or an array holding one string)", value)
    return value


def embedding_inputs(body: Json) -> tuple[list[str], str]:
    """The inputs and the encoding the client wants back ("float" or "base64")."""
    value = body.get("input")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _bad("input", "a string or a non-empty array of strings", value)
    if len(value) > 2048:
        raise InvalidRequest("Invalid value for 'input': at most 2048 inputs per request.", param="input")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise InvalidRequest(
            "Invalid value for 'encoding_format': expected 'float' or 'base64'.", param="encoding_format"
        )
    return value, encoding


def gpu_hold(body: Json) -> tuple[str, float, Priority, float]:
    """``POST /admin/gpu/holds``: holder, memory_gb (required), priority (medium), max_seconds (600)."""
    holder = body.get("holder")
    if not isinstance(holder, str) or not 0 < len(holder) <= 64 or not holder.isprintable():
        raise InvalidRequest("'holder' must name who holds the memory (1 to 64 printable characters).", param="holder")
    memory_gb = _number(body, "memory_gb", 0.001, 4096)
    if memory_gb is None:
        raise InvalidRequest("'memory_gb' is required: the GPU memory to set aside, in GB.", param="memory_gb")
    priority = body.get("priority", "medium")
    if not isinstance(priority, str) or priority.upper() not in Priority.__members__:
        raise _bad("priority", "one of 'low', 'medium', 'high'", priority)
    seconds = _number(body, "max_seconds", 1, 7 * 86400)
    return holder, memory_gb, Priority.parse(priority), 600.0 if seconds is None else seconds
