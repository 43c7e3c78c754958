"""A faithful, in-process stand-in for the Ollama HTTP server, for tests.

Ollama cannot be installed where the test suite runs, so this module serves the
parts of its native REST API that a client of ``ark`` relies on, on a real TCP
port, with the same paths, field names, JSON types, content types, status codes
and error strings as the real server:

``GET /``, ``GET /api/version``, ``GET /api/tags``, ``GET /api/ps``,
``POST /api/show``, ``POST /api/chat``, ``POST /api/generate``,
``POST /api/embed`` and the legacy ``POST /api/embeddings``.

Where the behaviour comes from (ollama/ollama, read for this module, not copied):

* ``server/routes.go`` -- ``GenerateHandler``, ``ChatHandler``, ``EmbedHandler``,
  ``EmbeddingsHandler``, ``ShowHandler``/``GetModelInfo``, ``ListHandler``,
  ``PsHandler``, ``streamResponse`` and ``handleScheduleError``: the order of the
  checks, every error string and status, ``stream`` defaulting to true, NDJSON
  (``application/x-ndjson``) for streams and ``application/json; charset=utf-8``
  for single objects, the load (empty prompt / messages -> ``done_reason: "load"``)
  and unload (additionally ``keep_alive: 0`` -> ``done_reason: "unload"``) requests,
  embeddings L2-normalised and cut to ``dimensions`` then normalised again.
* ``api/types.go`` -- the request/response structs (``omitempty`` fields are left
  out when zero, durations are integer nanoseconds, times are RFC 3339 with
  nanoseconds), ``Duration.UnmarshalJSON`` (``keep_alive``: a Go duration string,
  a number of seconds truncated to an integer, negative = forever) and
  ``Options.FromMap`` (option type errors).
* ``server/sched.go`` -- keep-alive bookkeeping: a request without ``keep_alive``
  keeps the loaded model's current duration (5m for a fresh load), the expiry
  clock starts when the last request using the model finishes, a zero duration
  unloads the model once it is idle, ``/api/ps`` lists models longest-lived first.
* ``docs/api.md`` -- response examples; the official Python client
  (``ollama/_client.py``, ``ollama/_types.py``) -- what a client parses.
* tool calls (``ChatHandler``, ``tools/tools.go``, ``toolCallId``): ``tools`` sent to a model without the
  "tools" capability is 400 ``"<host>/<namespace>/<model>:<tag> does not support tools"`` (checked after
  "completion"); otherwise the model's tool calls come out of its text whole, each streamed in a line of
  its own (``done: false``, ``content: ""``, ``tool_calls: [{"id": "call_" + 8 of [a-z0-9], "function":
  {"index", "name", "arguments": {...}}}]``, ``index`` counting the calls of the answer), then the usual
  final line (``done_reason: "stop"``); unstreamed, all of them in the one ``message``. A message's
  ``tool_calls`` must carry ``arguments`` as a JSON object, ``tool_name`` and ``tool_call_id`` strings.

Generated text is deterministic: ``reply_tokens`` words chosen by a hash of the
model, the prompt and ``options.seed``, one token per streamed chunk, honouring
``options.num_predict`` (``done_reason: "length"``) and ``options.stop``.
Embeddings are hash-seeded Gaussian vectors of ``embed_dim`` floats.

Test controls (see :class:`FakeOllama`): ``mode`` makes POST requests misbehave
("hang", "hang_after_first", "drop", "error_mid_stream", "error500") or wait until the test
sets another mode, however long that takes ("hold": before answering; "hold_after_first": a
stream, after its first chunk; ``holding`` counts those waiting);
counters record every POST and every stream started, completed or abandoned by its client.
``clock`` (``time.monotonic`` unless given) is what keep-alive and unload deadlines are read
against, so a test can move time on instead of sleeping through it.
"hang_after_load" is Ollama's known hang under VRAM pressure: the next model load
never finishes and from then on the scheduler answers nothing (every POST,
``/api/ps``, ``/api/tags``; ``/`` and ``/api/version`` still answer, as Go's HTTP
server does) until :meth:`FakeOllama.restart` -- or ``POST /_fake/restart``, a test
control that is not Ollama's API, or ``python tests/fakes/ollama.py --restart URL``
as a restart command -- brings it back empty, as a restarted server comes up.

Tool calls are deterministic too: the stand-in "model" calls the tool its last user message names (else the
first tool) with arguments made from the tool's JSON schema (an ``enum``'s first value, a hashed word for a
string, a hashed number, ``true``), and answers in words once the last message is a tool's result;
``tool_script`` (a list of ``(name, arguments)``) makes exactly those calls instead.

Not reproduced: thinking output (``think: true`` is refused as for a model without that capability), the
text a model writes around its tool calls, ``num_predict`` cutting a call short, structured
``format`` output (accepted, ignored), images, logprobs, pull/push/create/copy/delete,
the OpenAI-compatible ``/v1`` routes, a real tokenizer (counts are words and
punctuation), prompt caching, context shifting, memory-based eviction and request
queueing (every request runs at once; no 503 "server busy"), reloads for runner
options other than ``num_ctx``, Go's case-insensitive JSON keys, and Go's exact JSON
syntax-error wording (approximated). An empty ``model`` is 400 "model is required"
on every endpoint (current Ollama answers 404 "model '' not found" on some).

Run it standalone with ``python -m tests.fakes.ollama --port 11434``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import random
import re
import signal
import time
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

__all__ = ["DEFAULT_MODELS", "MODES", "FakeOllama", "LoadedModel", "ModelSpec", "parse_go_duration"]

VERSION = "0.12.6"
DEFAULT_MODELS = ("llama3.2:1b", "nomic-embed-text:latest")
MODES = frozenset({"normal", "hang", "hang_after_first", "hang_after_load", "drop", "error_mid_stream", "error500"})
DEFAULT_ERROR_MESSAGE = "llama runner process has terminated: exit status 2"

NS_PER_SECOND = 1_000_000_000
MAX_DURATION_NS = 2**63 - 1  # Go's math.MaxInt64: what a negative keep_alive becomes
DEFAULT_KEEP_ALIVE = "5m"  # OLLAMA_KEEP_ALIVE's default
DEFAULT_NUM_CTX = 4096

CHAT_PATH = "/api/chat"
GENERATE_PATH = "/api/generate"
STREAMING_PATHS = frozenset({CHAT_PATH, GENERATE_PATH})

JSON_CONTENT_TYPE = "application/json; charset=utf-8"
NDJSON_CONTENT_TYPE = "application/x-ndjson"

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_VOCABULARY = (
    "the", "llama", "grazes", "on", "a", "quiet", "green", "hill", "while", "clouds", "drift",
    "over", "distant", "mountains", "and", "wind", "carries", "soft", "songs", "through", "tall",
    "grass", "under", "bright", "morning", "light", "as", "rivers", "wander", "toward", "sea", "home",
)  # fmt: skip

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PostHandler = Callable[[web.Request, dict[str, Any], "_RequestState"], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error the real server reports as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --------------------------------------------------------------------------- Go-isms


def go_quote(text: str) -> str:
    """Quote like Go's ``%q`` for the plain strings that appear in error messages."""
    return json.dumps(text, ensure_ascii=False)


def go_time(epoch_ns: int, *, local: bool = False) -> str:
    """Format like Go's ``time.Time`` JSON encoding (RFC 3339, trailing zeros trimmed)."""
    seconds, nanos = divmod(epoch_ns, NS_PER_SECOND)
    moment = datetime.fromtimestamp(seconds, UTC)
    if local:
        moment = moment.astimezone()
    fraction = f".{nanos:09d}".rstrip("0") if nanos else ""
    offset = moment.strftime("%z")
    zone = "Z" if offset in ("", "+0000") else f"{offset[:3]}:{offset[3:]}"
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + fraction + zone


def go_json(payload: Any) -> bytes:
    """Encode like Go's ``json.Marshal``, which escapes ``<``, ``>`` and ``&`` in strings."""
    data = orjson.dumps(payload)
    return data.replace(b"<", b"\\u003c").replace(b">", b"\\u003e").replace(b"&", b"\\u0026")


_DURATION_UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 micro sign
    "μs": 1_000,  # U+03BC Greek mu
    "ms": 1_000_000,
    "s": NS_PER_SECOND,
    "m": 60 * NS_PER_SECOND,
    "h": 3600 * NS_PER_SECOND,
}
_DURATION_PART = re.compile(r"(\d*)(\.\d*)?([^\d.]*)")


def parse_go_duration(text: str) -> int:
    """Parse a duration the way Go's ``time.ParseDuration`` does; returns nanoseconds."""
    rest = text
    negative = rest[:1] == "-"
    if rest[:1] in ("-", "+"):
        rest = rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise ValueError(f"time: invalid duration {go_quote(text)}")
    total = 0.0
    while rest:
        match = _DURATION_PART.match(rest)
        assert match is not None  # the pattern can match the empty string
        whole, fraction, unit = match.groups()
        if not whole and fraction in (None, "."):
            raise ValueError(f"time: invalid duration {go_quote(text)}")
        if not unit:
            raise ValueError(f"time: missing unit in duration {go_quote(text)}")
        if unit not in _DURATION_UNITS_NS:
            raise ValueError(f"time: unknown unit {go_quote(unit)} in duration {go_quote(text)}")
        total += float((whole or "0") + (fraction or "")) * _DURATION_UNITS_NS[unit]
        rest = rest[match.end() :]
    nanos = min(int(total), MAX_DURATION_NS)
    return -nanos if negative else nanos


def parse_keep_alive(value: Any) -> int | None:
    """``api.Duration.UnmarshalJSON``: nanoseconds, or None when absent/null."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ApiError(400, "Unsupported type: 'bool'")
    if isinstance(value, int | float):
        return MAX_DURATION_NS if value < 0 else min(int(value) * NS_PER_SECOND, MAX_DURATION_NS)
    if isinstance(value, str):
        try:
            nanos = parse_go_duration(value)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        return MAX_DURATION_NS if nanos < 0 else nanos
    go_type = "map[string]interface {}" if isinstance(value, dict) else "[]interface {}"
    raise ApiError(400, f"Unsupported type: '{go_type}'")


# ------------------------------------------------------------------ request binding


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


@dataclass(frozen=True)
class _GoType:
    name: str
    accepts: Callable[[Any], bool]


_STRING = _GoType("string", lambda v: isinstance(v, str))
_BOOL = _GoType("bool", lambda v: isinstance(v, bool))
_INT = _GoType("int", lambda v: isinstance(v, int | float) and not isinstance(v, bool))
_OPTIONS = _GoType("map[string]interface {}", lambda v: isinstance(v, dict))
_ANY = _GoType("interface {}", lambda v: True)
_INTS = _GoType("[]int", lambda v: isinstance(v, list))
_LIST = _GoType("[]interface {}", lambda v: isinstance(v, list))

_COMMON_FIELDS = {"model": _STRING, "options": _OPTIONS}
_REQUEST_FIELDS: dict[str, tuple[str, dict[str, _GoType]]] = {
    CHAT_PATH: (
        "ChatRequest",
        {**_COMMON_FIELDS, "messages": _GoType("[]api.Message", lambda v: isinstance(v, list)),
         "stream": _BOOL, "tools": _LIST, "logprobs": _BOOL, "top_logprobs": _INT},
    ),
    GENERATE_PATH: (
        "GenerateRequest",
        {**_COMMON_FIELDS, "prompt": _STRING, "suffix": _STRING, "system": _STRING, "template": _STRING,
         "context": _INTS, "stream": _BOOL, "raw": _BOOL, "images": _LIST, "logprobs": _BOOL,
         "top_logprobs": _INT},
    ),
    "/api/embed": ("EmbedRequest", {**_COMMON_FIELDS, "input": _ANY, "truncate": _BOOL, "dimensions": _INT}),
    "/api/embeddings": ("EmbeddingRequest", {**_COMMON_FIELDS, "prompt": _STRING}),
    "/api/show": (
        "ShowRequest",
        {**_COMMON_FIELDS, "name": _STRING, "system": _STRING, "template": _STRING, "verbose": _BOOL},
    ),
    "/api/pull": ("PullRequest", {**_COMMON_FIELDS, "name": _STRING, "insecure": _BOOL, "stream": _BOOL}),
}  # fmt: skip
_MESSAGE_FIELDS = {
    "role": _STRING,
    "content": _STRING,
    "thinking": _STRING,
    "tool_name": _STRING,
    "tool_call_id": _STRING,
    "tool_calls": _GoType("[]api.ToolCall", lambda v: isinstance(v, list)),
}


def _type_error(value: Any, where: str, go_type: str) -> ApiError:
    described = _json_kind(value)
    if go_type == "int" and described == "number":
        described = f"number {value}"  # Go names the literal when it does not fit an int
    return ApiError(400, f"json: cannot unmarshal {described} into Go struct field {where} of type {go_type}")


def _check_field(struct: str, key: str, value: Any, go_type: _GoType) -> None:
    if value is None:
        return  # JSON null leaves a Go field at its zero value
    if not go_type.accepts(value):
        raise _type_error(value, f"{struct}.{key}", go_type.name)
    if go_type is _INT and not float(value).is_integer():
        raise _type_error(value, f"{struct}.{key}", "int")


def _check_messages(messages: list[Any]) -> None:
    for message in messages:
        if message is None:
            continue
        if not isinstance(message, dict):
            raise _type_error(message, "ChatRequest.messages", "api.Message")
        for key, value in message.items():
            if key in _MESSAGE_FIELDS:
                _check_field("Message", f"messages.{key}", value, _MESSAGE_FIELDS[key])
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            arguments = function.get("arguments") if isinstance(function, dict) else None
            if arguments is not None and not isinstance(arguments, dict):
                where = "ToolCallFunction.messages.tool_calls.function.arguments"
                raise _type_error(arguments, where, "api.ToolCallFunctionArguments")


def _check_tools(tools: list[Any]) -> None:
    for tool in tools:
        if tool is not None and not isinstance(tool, dict):
            raise _type_error(tool, "ChatRequest.tools", "api.Tool")


def _syntax_error_message(error: json.JSONDecodeError) -> str:
    """Approximate the Go ``encoding/json`` syntax error for a body Python cannot parse."""
    if error.pos >= len(error.doc.rstrip()):
        return "unexpected EOF"
    char = error.doc[error.pos]
    context = {
        "Expecting value": "looking for beginning of value",
        "Expecting ':' delimiter": "after object key",
        "Expecting ',' delimiter": "after object key:value pair",
        "Expecting property name enclosed in double quotes": "looking for beginning of object key string",
        "Invalid control character at": "in string literal",
    }.get(error.msg, "looking for beginning of value")
    return f"invalid character {char!r} {context}"


def decode_body(raw: bytes) -> tuple[Any, ApiError | None]:
    """Decode a request body like ``json.Decoder.Decode``: the first value, trailing bytes ignored."""
    text = raw.decode("utf-8", errors="replace").lstrip()
    if not text:
        return None, ApiError(400, "missing request body")
    try:
        value, _ = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError as exc:
        return None, ApiError(400, _syntax_error_message(exc))
    return value, None


def bind_request(path: str, body: Any) -> dict[str, Any]:
    """Check a decoded body against the Go request struct for ``path`` (gin's ShouldBindJSON)."""
    struct, fields = _REQUEST_FIELDS[path]
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise ApiError(400, f"json: cannot unmarshal {_json_kind(body)} into Go value of type api.{struct}")
    for key, value in body.items():
        if key == "keep_alive":
            parse_keep_alive(value)
        elif key in fields:
            _check_field(struct, key, value, fields[key])
            if key == "messages" and isinstance(value, list):
                _check_messages(value)
            if key == "tools" and isinstance(value, list):
                _check_tools(value)
    return body


_INT_OPTIONS = frozenset(
    {"num_keep", "seed", "num_predict", "top_k", "repeat_last_n", "mirostat", "num_ctx", "num_batch",
     "num_gpu", "main_gpu", "num_thread"}
)  # fmt: skip
_FLOAT_OPTIONS = frozenset(
    {"top_p", "min_p", "typical_p", "temperature", "repeat_penalty", "presence_penalty",
     "frequency_penalty", "mirostat_tau", "mirostat_eta"}
)  # fmt: skip
_BOOL_OPTIONS = frozenset({"penalize_newline", "numa", "low_vram", "vocab_only", "use_mmap", "use_mlock"})


def parse_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """``api.Options.FromMap``: type-check known options (unknown ones are only logged by Ollama)."""
    parsed: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if value is None:
            continue
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if key in _INT_OPTIONS:
            if not is_number:
                raise ApiError(500, f"option {go_quote(key)} must be of type integer")
            parsed[key] = int(value)
        elif key in _FLOAT_OPTIONS:
            if not is_number:
                raise ApiError(500, f"option {go_quote(key)} must be of type float32")
            parsed[key] = float(value)
        elif key in _BOOL_OPTIONS:
            if not isinstance(value, bool):
                raise ApiError(500, f"option {go_quote(key)} must be of type boolean")
            parsed[key] = value
        elif key == "stop":
            if not isinstance(value, list):
                raise ApiError(500, 'option "stop" must be of type array')
            if not all(isinstance(item, str) for item in value):
                raise ApiError(500, 'option "stop" must be of an array of strings')
            parsed[key] = list(value)
    return parsed


# ------------------------------------------------------------------------ model names


_NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
_HOST_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,349}$")


@dataclass(frozen=True)
class ModelName:
    """A parsed ``[host/][namespace/]model[:tag]`` name (``types/model/name.go``)."""

    host: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, raw: str) -> ModelName | None:
        """Parse ``raw``, filling Ollama's defaults; None when the name is invalid."""
        parts = raw.split("/")
        if not 1 <= len(parts) <= 3:
            return None
        model, _, tag = parts[-1].partition(":")
        namespace = parts[-2] if len(parts) >= 2 else DEFAULT_NAMESPACE
        host = parts[0] if len(parts) == 3 else DEFAULT_HOST
        name = cls(host, namespace, model, tag or DEFAULT_TAG)
        valid = (
            _HOST_PART.match(name.host)
            and _NAME_PART.match(name.namespace)
            and _NAME_PART.match(name.model)
            and _NAME_PART.match(name.tag)
        )
        return name if valid else None

    @property
    def key(self) -> str:
        """Case-insensitive identity, as ``getExistingName`` compares names."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}".lower()

    @property
    def display(self) -> str:
        """``Name.DisplayShortest``: drop the default host and namespace, keep the tag."""
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"


# ------------------------------------------------------------------------- catalogue


@dataclass(frozen=True)
class ModelSpec:
    """What the fake knows about one installed model (what /api/tags and /api/show report)."""

    name: str
    family: str
    parameter_count: int
    parameter_size: str
    quantization: str
    context_length: int
    capabilities: tuple[str, ...]
    modified_ns: int = 0

    @property
    def key(self) -> str:
        parsed = ModelName.parse(self.name)
        assert parsed is not None
        return parsed.key

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"fake-ollama:{self.name}".encode()).hexdigest()

    @property
    def size(self) -> int:
        """Bytes on disk, estimated from the parameter count and the quantisation."""
        bits = {"F16": 16.0, "Q8_0": 8.5, "Q4_0": 4.5}.get(self.quantization, 4.85)
        return int(self.parameter_count * bits / 8)

    @property
    def is_embedding(self) -> bool:
        return "embedding" in self.capabilities

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization,
        }


# family, parameters, parameter_size, quantisation, trained context, capabilities
_KNOWN_MODELS: dict[str, tuple[str, int, str, str, int, tuple[str, ...]]] = {
    "llama3.2:1b": ("llama", 1_235_814_432, "1.2B", "Q8_0", 131_072, ("completion", "tools")),
    "llama3.2:latest": ("llama", 3_212_749_888, "3.2B", "Q4_K_M", 131_072, ("completion", "tools")),
    "qwen2.5:0.5b": ("qwen2", 494_032_768, "494.03M", "Q4_K_M", 32_768, ("completion", "tools")),
    "smollm2:135m": ("llama", 134_515_008, "134.52M", "F16", 8_192, ("completion",)),
    "nomic-embed-text:latest": ("nomic-bert", 136_727_040, "137M", "F16", 2_048, ("embedding",)),
    "all-minilm:latest": ("bert", 22_565_376, "23M", "F16", 512, ("embedding",)),
    "mxbai-embed-large:latest": ("bert", 334_090_240, "334M", "F16", 512, ("embedding",)),
}
_SIZE_TAG = re.compile(r"(\d+(?:\.\d+)?)([bm])", re.IGNORECASE)


def human_number(count: int) -> str:
    """``format.HumanNumber``, as Ollama prints parameter counts."""
    for unit, scale, digits in (("B", 1e9, 1), ("M", 1e6, 2), ("K", 1e3, 0)):
        if count >= scale:
            value = count / scale
            return f"{value:.0f}{unit}" if value == math.floor(value) else f"{value:.{digits}f}{unit}"
    return str(count)


def make_spec(raw_name: str, modified_ns: int) -> ModelSpec:
    """Describe ``raw_name``: a built-in profile when known, else one derived from the name."""
    parsed = ModelName.parse(raw_name)
    if parsed is None:
        raise ValueError(f"invalid model name: {raw_name!r}")
    short = f"{parsed.model}:{parsed.tag}".lower()
    if short in _KNOWN_MODELS:
        family, count, size, quant, ctx, caps = _KNOWN_MODELS[short]
        return ModelSpec(parsed.display, family, count, size, quant, ctx, caps, modified_ns)
    size_match = _SIZE_TAG.search(parsed.tag)
    count = 7_000_000_000
    if size_match:
        count = int(float(size_match.group(1)) * (1e9 if size_match.group(2).lower() == "b" else 1e6))
    family = re.sub(r"[^a-z].*$", "", parsed.model.lower()) or "llama"
    embedding = "embed" in parsed.model.lower()
    caps = ("embedding",) if embedding else ("completion",)
    quant = "F16" if embedding else "Q4_K_M"
    ctx = 2_048 if embedding else 8_192
    return ModelSpec(parsed.display, family, count, human_number(count), quant, ctx, caps, modified_ns)


# --------------------------------------------------------------------- loaded models


@dataclass
class LoadedModel:
    """A model in memory, i.e. one row of ``/api/ps`` (a ``runnerRef`` in ``server/sched.go``)."""

    spec: ModelSpec
    session_ns: int
    context_length: int
    refcount: int = 0
    expires_at_ns: int | None = None  # wall clock shown by /api/ps; None until first idle
    unload_at: float | None = None  # FakeOllama.clock deadline; None while in use or kept forever
    size_vram: int | None = None  # on the GPU; the rest is on the CPU (None: all of it on the GPU)

    @property
    def size(self) -> int:
        return self.spec.size + self.context_length * 16_384  # weights + a KV-cache estimate

    def expires_at(self, now_ns: int) -> int:
        """What ``PsHandler`` prints: the idle deadline, or now + duration while never idle."""
        if self.expires_at_ns is not None:
            return self.expires_at_ns
        return now_ns + self.session_ns

    def is_gone(self, now: float) -> bool:
        return self.refcount == 0 and self.unload_at is not None and now >= self.unload_at


# ------------------------------------------------------------------------ generation


@dataclass(frozen=True)
class Completion:
    """The outcome of one generation: content pieces as streamed, and why it ended."""

    pieces: list[str]
    done_reason: str
    eval_count: int

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def _holds_stop_prefix(text: str, stops: Sequence[str]) -> bool:
    """True while ``text`` ends with the start of a stop sequence (the runner withholds it)."""
    return any(text.endswith(stop[:length]) for stop in stops for length in range(1, len(stop)))


def run_completion(tokens: Sequence[str], num_predict: int, stops: Sequence[str]) -> Completion:
    """Emit ``tokens`` like the llama runner: cut at ``num_predict``, end at (and drop) a stop."""
    pieces: list[str] = []
    pending = ""
    count = 0
    stops = [stop for stop in stops if stop]
    for token in tokens:
        if 0 < num_predict <= count:
            break
        count += 1
        pending += token
        hits = [pending.find(stop) for stop in stops if stop in pending]
        if hits:
            if pending[: min(hits)]:
                pieces.append(pending[: min(hits)])
            return Completion(pieces, "stop", count)
        if not _holds_stop_prefix(pending, stops):
            pieces.append(pending)
            pending = ""
    if pending:
        pieces.append(pending)
    reason = "length" if 0 < num_predict <= count else "stop"
    return Completion(pieces, reason, count)


_TOKEN = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    """A stand-in tokenizer: words and punctuation marks."""
    return len(_TOKEN.findall(text))


def token_ids(text: str) -> list[int]:
    return [int.from_bytes(hashlib.sha256(w.encode()).digest()[:4], "big") % 128_000 for w in text.split()]


def _tool_call_id() -> str:
    """``toolCallId``: "call_" and 8 random lowercase letters and digits."""
    return "call_" + "".join(random.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=8))


def _arguments_for(parameters: Any, rng: random.Random) -> dict[str, Any]:
    """Arguments a model might write for a function's JSON schema: each required property (all of them when
    none is required), an ``enum``'s first value, else a value of its type."""
    schema: dict[str, Any] = parameters if isinstance(parameters, dict) else {}
    properties: dict[str, Any] = schema["properties"] if isinstance(schema.get("properties"), dict) else {}
    required = [k for k in schema.get("required") or properties if k in properties]
    arguments: dict[str, Any] = {}
    for key in required:
        prop = properties[key] if isinstance(properties[key], dict) else {}
        kind = prop.get("type")
        if isinstance(prop.get("enum"), list) and prop["enum"]:
            arguments[key] = prop["enum"][0]
        elif kind == "integer":
            arguments[key] = rng.randint(1, 100)
        elif kind == "number":
            arguments[key] = rng.randint(1, 1000) / 10
        elif kind == "boolean":
            arguments[key] = True
        elif kind == "array":
            arguments[key] = []
        elif kind == "object":
            arguments[key] = {}
        else:
            arguments[key] = rng.choice(_VOCABULARY)
    return arguments


def _seeded_rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("\0".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def l2_normalise(vector: Sequence[float]) -> list[float]:
    """``normalize`` in routes.go."""
    norm = max(math.sqrt(sum(v * v for v in vector)), 1e-12)
    return [v / norm for v in vector]


def float32_list(values: Iterable[float]) -> list[float]:
    """Round to float32 and to the 9 digits that identify a float32, as Go's encoder prints them."""
    return [float(f"{v:.9g}") for v in array("f", values)]


# ---------------------------------------------------------------------------- server


@dataclass
class _RequestState:
    """Per-request flags that tell a client disconnect from the fake's own actions."""

    streaming: bool = False
    finished: bool = False
    dropped: bool = False
    cancel_recorded: bool = False


@dataclass(frozen=True)
class _Reply:
    """One chat or generate answer: what to say, how each endpoint shapes it, and its timings."""

    completion: Completion
    chunk: Callable[[str], dict[str, Any]]  # a streamed piece of content
    final: Callable[[str, dict[str, Any]], dict[str, Any]]  # the done object: (content, metrics)
    started_ns: int  # perf_counter_ns() when the request arrived
    loaded_ns: int  # ... and when its model was ready
    prompt_tokens: int
    tool_calls: tuple[dict[str, Any], ...] = ()  # streamed one a line, after the content
    tool_chunk: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # the line of one tool call


def _json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=go_json(payload), headers={"Content-Type": JSON_CONTENT_TYPE})


def _error_response(error: ApiError) -> web.Response:
    return _json_response({"error": error.message}, error.status)


def _abort_connection(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


@web.middleware
async def _gin_fallbacks(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unknown routes and methods answer like gin's defaults, as plain text."""
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed:
        return web.Response(status=405, text="405 method not allowed", content_type="text/plain")
    except web.HTTPNotFound:
        return web.Response(status=404, text="404 page not found", content_type="text/plain")


class FakeOllama:
    """An Ollama server on a real local port, with knobs for tests.

    Constructor arguments and attributes (all attributes may be changed while running):

    * ``models`` -- installed models (``/api/tags``); see :meth:`add_model`/:meth:`remove_model`.
    * ``tool_script`` -- the tool calls (``(name, arguments)`` pairs) a chat with ``tools`` answers with,
      whatever its messages (default None: the model chooses, see the module's docstring).
    * ``reply_tokens`` -- words per generated reply; ``reply_script`` (list of token strings,
      default None) replaces the hashed words with exact tokens.
    * ``token_delay`` -- seconds before each generated token; ``load_delay`` -- seconds to "load"
      a model that is not in memory.
    * ``embed_dim`` -- length of every embedding vector (also reported by /api/show).
    * ``unload_delay`` -- seconds an expiring model stays in /api/ps (real Ollama answers at
      once and unloads asynchronously).
    * ``mode`` -- "normal"; or, for POST endpoints: "hang" (read the request, never send a
      byte), "hang_after_first" (stream one chunk then stall), "drop" (stream ``drop_after``
      chunks then abort the TCP connection), "error_mid_stream" (stream ``drop_after`` chunks,
      then an ``{"error": ...}`` line as Ollama does when a runner fails mid-stream), "error500"
      (answer 500 with ``error_message``). Non-streaming requests hang, are dropped or get a
      500 before any byte in the stream-only modes. GET endpoints always answer.
    * ``default_keep_alive`` -- OLLAMA_KEEP_ALIVE (default "5m").

    Records: ``requests`` ((path, parsed JSON body) of every POST; {} for a body that is not a
    JSON object), ``streams_started``/``streams_completed``/``streams_cancelled`` (NDJSON streams
    begun, finished, and abandoned by their client), ``requests_cancelled`` (any POST whose
    client went away before the answer, streams included), ``cancelled_event`` (set on each
    such client disconnect) and ``loaded`` (the models in memory, by name).

    Lifecycle: ``await start()`` returns the URL (also ``url``); ``await stop()`` cuts every
    request in flight, as a killed server would; ``async with FakeOllama() as fake`` does both.
    :meth:`reset` restores a fake shared between tests; :meth:`load` preloads a model.
    """

    def __init__(
        self,
        models: Sequence[str] = DEFAULT_MODELS,
        *,
        reply_tokens: int = 8,
        token_delay: float = 0.0,
        embed_dim: int = 16,
        unload_delay: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.reply_tokens = reply_tokens
        self.token_delay = token_delay
        self.embed_dim = embed_dim
        self.unload_delay = unload_delay
        self.load_delay = 0.0
        # VRAM, modelled when set (bytes): a model that does not fit in what is free lands partly on the
        # CPU (size_vram < size in /api/ps), as Ollama places layers; one whose CPU part does not fit in
        # system_memory is refused with Ollama's error
        self.vram: int | None = None
        self.system_memory: int | None = None
        self.reply_script: Sequence[str] | None = None
        self.tool_script: Sequence[tuple[str, dict[str, Any]]] | None = None
        self.default_keep_alive: float | str = DEFAULT_KEEP_ALIVE
        self.version = VERSION
        self.registry: set[str] | None = None  # what /api/pull finds (None: any valid name)
        self.mode = "normal"
        self.drop_after = 1
        self.error_message = DEFAULT_ERROR_MESSAGE
        self.hung = False  # "hang_after_load" struck: nothing answers until restart()
        self.restarts = 0
        self.holding = 0  # POSTs waiting in "hold" mode
        self.unloads_in_use = 0  # unload requests for a model while a request was using it
        self._revived = asyncio.Event()

        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.streams_started = 0
        self.streams_completed = 0
        self.streams_cancelled = 0
        self.requests_cancelled = 0
        self.cancelled_event = asyncio.Event()
        self._initial = (tuple(models), reply_tokens, token_delay, embed_dim, unload_delay)

        self.url = ""
        self._models: dict[str, ModelSpec] = {}
        self._loaded: dict[str, LoadedModel] = {}
        self._runner: web.AppRunner | None = None
        self._shutdown = asyncio.Event()
        self._stopping = False
        self._active: dict[int, web.Request] = {}  # POSTs in flight, by id()
        self._install(models)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0 picks a free port); returns the base URL."""
        if self._runner is not None:
            raise RuntimeError("FakeOllama is already running")
        self._shutdown = asyncio.Event()
        self._stopping = False
        runner = web.AppRunner(self._build_app(), handler_cancellation=True, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_port = runner.addresses[0][1]
        url_host = f"[{host}]" if ":" in host else host
        self.url = f"http://{url_host}:{bound_port}"
        return self.url

    async def stop(self) -> None:
        """Cut every request in flight (as a killed server would), then close the socket."""
        if self._runner is None:
            return
        self._stopping = True
        self._shutdown.set()
        for request in list(self._active.values()):
            _abort_connection(request)
        runner, self._runner = self._runner, None
        await runner.cleanup()

    def reset(self) -> None:
        """Back to the constructor's settings and models, nothing recorded, nothing in memory.

        For one fake shared by many tests: call it between tests (it is plain attribute
        assignment, so a test thread may call it while the server's loop runs elsewhere).
        Requests still hanging from an earlier test stay hung until their client leaves.
        """
        models, self.reply_tokens, self.token_delay, self.embed_dim, self.unload_delay = self._initial
        self.load_delay = 0.0
        self.vram = self.system_memory = None
        self.reply_script = None
        self.tool_script = None
        self.default_keep_alive = DEFAULT_KEEP_ALIVE
        self.registry = None
        self.mode = "normal"
        self.drop_after = 1
        self.error_message = DEFAULT_ERROR_MESSAGE
        self.hung = False
        self.restarts = 0
        self.unloads_in_use = 0
        self.requests.clear()
        self.streams_started = self.streams_completed = self.streams_cancelled = self.requests_cancelled = 0
        self.cancelled_event.clear()
        self._loaded.clear()
        self._models.clear()
        self._install(models)

    async def __aenter__(self) -> FakeOllama:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[_gin_fallbacks])
        app.router.add_get("/", self._handle_root)
        app.router.add_get("/api/version", self._handle_version)
        app.router.add_get("/api/tags", self._handle_tags)
        app.router.add_get("/api/ps", self._handle_ps, allow_head=False)
        app.router.add_post("/api/show", self._post(self._handle_show))
        app.router.add_post(CHAT_PATH, self._post(self._handle_chat))
        app.router.add_post(GENERATE_PATH, self._post(self._handle_generate))
        app.router.add_post("/api/embed", self._post(self._handle_embed))
        app.router.add_post("/_fake/restart", self._handle_restart)
        app.router.add_post("/api/embeddings", self._post(self._handle_embeddings))
        app.router.add_post("/api/pull", self._post(self._handle_pull))
        return app

    # ------------------------------------------------------------------ models

    def _install(self, names: Iterable[str]) -> None:
        """Install ``names`` with modification times a minute apart, the first the newest."""
        now = time.time_ns()
        for index, name in enumerate(names):
            self.add_model(name, modified_ns=now - index * 60 * NS_PER_SECOND)

    def add_model(self, name: str, *, modified_ns: int | None = None) -> ModelSpec:
        """Install ``name`` (as ``ollama pull`` would); returns its description."""
        spec = make_spec(name, time.time_ns() if modified_ns is None else modified_ns)
        self._models[spec.key] = spec
        return spec

    def remove_model(self, name: str) -> None:
        """Uninstall ``name`` (as ``ollama rm`` would); it also leaves memory."""
        parsed = ModelName.parse(name)
        if parsed is None or parsed.key not in self._models:
            raise KeyError(name)
        del self._models[parsed.key]
        self._loaded.pop(parsed.key, None)

    @property
    def models(self) -> list[str]:
        return [spec.name for spec in self._models.values()]

    @property
    def loaded(self) -> dict[str, LoadedModel]:
        """Models in memory now, by name (expired ones are dropped first)."""
        self._prune()
        return {entry.spec.name: entry for entry in self._loaded.values()}

    def load(self, name: str, keep_alive: float | str | None = None) -> None:
        """Put ``name`` in memory as a load request (empty prompt) with ``keep_alive`` would."""
        parsed = ModelName.parse(name)
        if parsed is None or parsed.key not in self._models:
            raise KeyError(name)
        entry = self._acquire(self._models[parsed.key], parse_keep_alive(keep_alive), {})
        self._release(entry)

    @staticmethod
    def _parse_model(raw: Any) -> ModelName:
        """Validate a request's model name (``parseAndValidateModelRef``)."""
        if not isinstance(raw, str) or not raw:
            raise ApiError(400, "model is required")
        parsed = ModelName.parse(raw)
        if parsed is None:
            raise ApiError(400, "invalid model name")
        return parsed

    def _lookup(self, raw: Any, not_found: str) -> ModelSpec:
        """Resolve a request's model name to an installed model, raising the endpoint's errors."""
        parsed = self._parse_model(raw)
        spec = self._models.get(parsed.key)
        if spec is None:
            raise ApiError(404, not_found.format(name=raw, quoted=go_quote(raw)))
        return spec

    def _prune(self) -> None:
        now = self.clock()
        for key, entry in list(self._loaded.items()):
            if entry.is_gone(now):
                self._loaded.pop(key, None)

    def _default_session_ns(self) -> int:
        session = parse_keep_alive(self.default_keep_alive)
        return parse_go_duration(DEFAULT_KEEP_ALIVE) if session is None else session

    def _acquire(self, spec: ModelSpec, keep_alive_ns: int | None, options: dict[str, Any]) -> LoadedModel:
        """Take a reference on the model, loading it (or reloading for another num_ctx) if needed."""
        self._prune()
        num_ctx = options.get("num_ctx") or DEFAULT_NUM_CTX
        entry = self._loaded.get(spec.key)
        if entry is not None and entry.refcount == 0 and entry.context_length != num_ctx:
            entry = None  # needsReload: the runner options differ
        if entry is None:
            session = self._default_session_ns() if keep_alive_ns is None else keep_alive_ns
            entry = LoadedModel(spec, session, num_ctx)
            self._place(entry)
            self._loaded[spec.key] = entry
        elif keep_alive_ns is not None:
            entry.session_ns = keep_alive_ns
        entry.refcount += 1
        entry.unload_at = None
        return entry

    def _place(self, entry: LoadedModel) -> None:
        """Put as much of the model on the GPU as fits (``vram``), the rest on the CPU, or refuse."""
        others = [e for key, e in self._loaded.items() if key != entry.spec.key]
        if self.vram is not None:
            free = self.vram - sum(e.size if e.size_vram is None else e.size_vram for e in others)
            entry.size_vram = max(0, min(entry.size, free))
        on_cpu = entry.size - (entry.size if entry.size_vram is None else entry.size_vram)
        if self.system_memory is not None and on_cpu:
            available = self.system_memory - sum(e.size - (e.size_vram or 0) for e in others if e.size_vram is not None)
            if on_cpu > available:
                raise ApiError(
                    500,
                    f"model requires more system memory ({on_cpu / 2**30:.1f} GiB) than is available "
                    f"({max(available, 0) / 2**30:.1f} GiB)",
                )

    def _release(self, entry: LoadedModel) -> None:
        """Drop a reference; an idle model starts its keep-alive clock, or unloads."""
        entry.refcount -= 1
        if entry.refcount > 0:
            return
        if entry.session_ns <= 0:
            self._schedule_unload(entry)
            return
        entry.expires_at_ns = time.time_ns() + entry.session_ns
        forever = entry.session_ns >= MAX_DURATION_NS
        entry.unload_at = None if forever else self.clock() + entry.session_ns / NS_PER_SECOND

    def _schedule_unload(self, entry: LoadedModel) -> None:
        if self.unload_delay <= 0:
            if self._loaded.get(entry.spec.key) is entry:
                del self._loaded[entry.spec.key]
        else:
            entry.unload_at = self.clock() + self.unload_delay

    def _expire(self, spec: ModelSpec) -> None:
        """``Scheduler.expireRunner``: unload now if idle, else when its requests finish."""
        entry = self._loaded.get(spec.key)
        if entry is None:
            return
        entry.session_ns = 0
        if entry.refcount <= 0:
            self._schedule_unload(entry)
        else:  # Ollama unloads it once its requests end; a client that asks has unloaded it under a request
            self.unloads_in_use += 1

    @contextlib.asynccontextmanager
    async def _use_model(
        self, spec: ModelSpec, keep_alive_ns: int | None, options: dict[str, Any]
    ) -> AsyncIterator[LoadedModel]:
        self._prune()
        previous = self._loaded.get(spec.key)
        entry = self._acquire(spec, keep_alive_ns, options)
        try:
            if entry is not previous and self.load_delay > 0:
                await asyncio.sleep(self.load_delay)
            if entry is not previous and self.mode == "hang_after_load":
                self.hung = True
                await self._stall()
            yield entry
        finally:
            self._release(entry)

    # ------------------------------------------------------------------ GET handlers

    async def _handle_root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running", content_type="text/plain", charset="utf-8")

    async def _handle_version(self, request: web.Request) -> web.Response:
        return _json_response({"version": self.version})

    async def _handle_restart(self, request: web.Request) -> web.Response:
        self.restart()
        return web.Response(status=204)

    def restart(self) -> None:
        """What a restarted Ollama is: answering, nothing loaded; requests stalled by the hang are cut."""
        self.hung = False
        self.mode = "normal"
        self.restarts += 1
        self._loaded.clear()
        revived, self._revived = self._revived, asyncio.Event()
        revived.set()

    async def _stall(self, request: web.Request | None = None) -> web.Response:
        """Hang until restart(), then drop the connection, as the killed server did."""
        await self._revived.wait()
        if request is None:
            raise ApiError(500, "the server was restarted")
        _abort_connection(request)
        return web.Response()

    async def _handle_tags(self, request: web.Request) -> web.Response:
        if self.hung:
            return await self._stall(request)
        specs = sorted(self._models.values(), key=lambda spec: spec.modified_ns, reverse=True)
        models = [
            {
                "name": spec.name,
                "model": spec.name,
                "modified_at": go_time(spec.modified_ns, local=True),
                "size": spec.size,
                "digest": spec.digest,
                "details": spec.details(),
            }
            for spec in specs
        ]
        return _json_response({"models": models})

    async def _handle_ps(self, request: web.Request) -> web.Response:
        if self.hung:
            return await self._stall(request)
        now_ns = time.time_ns()
        entries = sorted(self.loaded.values(), key=lambda entry: entry.expires_at(now_ns), reverse=True)
        models = [
            {
                "name": entry.spec.name,
                "model": entry.spec.name,
                "size": entry.size,
                "digest": entry.spec.digest,
                "details": entry.spec.details(),
                "expires_at": go_time(entry.expires_at(now_ns), local=True),
                "size_vram": entry.size if entry.size_vram is None else entry.size_vram,
                "context_length": entry.context_length,
            }
            for entry in entries
        ]
        return _json_response({"models": models})

    # ------------------------------------------------------------------ POST plumbing

    def _post(self, handler: PostHandler) -> Handler:
        """Wrap a POST handler: track it so that :meth:`stop` can cut it off."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            self._active[id(request)] = request
            try:
                return await self._answer_post(request, handler)
            finally:
                self._active.pop(id(request), None)

        return wrapped

    async def _answer_post(self, request: web.Request, handler: PostHandler) -> web.StreamResponse:
        """Record the request, apply ``mode``, run ``handler``; map errors, count disconnects."""
        state = _RequestState()
        body, decode_error = decode_body(await request.read())
        self.requests.append((request.path, body if isinstance(body, dict) else {}))
        if self.hung:
            return await self._stall(request)
        try:
            early = await self._misbehave(request, body, state)
            if early is not None:
                return early
            if decode_error is not None:
                raise decode_error
            return await handler(request, bind_request(request.path, body), state)
        except ApiError as error:
            return _error_response(error)
        except asyncio.CancelledError:
            if not (state.dropped or self._stopping):
                self._record_client_gone(state)
            raise

    async def _misbehave(self, request: web.Request, body: Any, state: _RequestState) -> web.StreamResponse | None:
        """Apply the modes that act before any byte of the answer; None means carry on."""
        streaming = request.path in STREAMING_PATHS and isinstance(body, dict) and body.get("stream") is not False
        if self.mode == "hold":
            await self._hold("hold")
        if self.mode == "hang" or (self.mode == "hang_after_first" and not streaming):
            return await self._hang(request, state)
        if self.mode == "error500" or (self.mode == "error_mid_stream" and not streaming):
            return _error_response(ApiError(500, self.error_message))
        if self.mode == "drop" and not streaming:
            state.dropped = True
            _abort_connection(request)
            return web.Response()
        return None

    async def _hold(self, mode: str) -> None:
        """Wait while the mode is ``mode``. Polled: the test that ends the hold sets ``mode`` from its own
        thread, where an asyncio.Event of this loop cannot be set safely."""
        self.holding += 1
        try:
            while self.mode == mode:  # noqa: ASYNC110 - set from the test's thread, see above
                await asyncio.sleep(0.01)
        finally:
            self.holding -= 1

    async def _hang(self, request: web.Request, state: _RequestState) -> web.StreamResponse:
        """Stall until the client leaves (cancellation) or the fake stops (connection aborted)."""
        await self._shutdown.wait()
        state.dropped = True
        _abort_connection(request)
        return web.Response()

    def _record_client_gone(self, state: _RequestState) -> None:
        if state.cancel_recorded:
            return
        state.cancel_recorded = True
        self.requests_cancelled += 1
        if state.streaming and not state.finished:
            self.streams_cancelled += 1
        self.cancelled_event.set()

    async def _token_pause(self) -> None:
        await asyncio.sleep(self.token_delay)

    async def _stream(self, request: web.Request, state: _RequestState, reply: _Reply) -> web.StreamResponse:
        """Write NDJSON like ``streamResponse``: headers with the first line, one object per line."""
        response = web.StreamResponse(headers={"Content-Type": NDJSON_CONTENT_TYPE})
        state.streaming = True
        self.streams_started += 1
        sent = 0
        try:
            for piece in reply.completion.pieces:
                if await self._interrupt_stream(request, response, state, sent):
                    return response
                await self._token_pause()
                await self._write_line(request, response, reply.chunk(piece))
                sent += 1
            for call in reply.tool_calls:
                assert reply.tool_chunk is not None
                if await self._interrupt_stream(request, response, state, sent):
                    return response
                await self._token_pause()
                await self._write_line(request, response, reply.tool_chunk(call))
                sent += 1
            if await self._interrupt_stream(request, response, state, sent):
                return response
            await self._write_line(request, response, reply.final("", self._metrics(reply)))
            await response.write_eof()
        except ConnectionResetError:
            if not (state.dropped or self._stopping):
                self._record_client_gone(state)
            return response
        state.finished = True
        self.streams_completed += 1
        return response

    async def _write_line(self, request: web.Request, response: web.StreamResponse, payload: Any) -> None:
        if not response.prepared:
            await response.prepare(request)
        await response.write(go_json(payload) + b"\n")

    async def _interrupt_stream(
        self, request: web.Request, response: web.StreamResponse, state: _RequestState, sent: int
    ) -> bool:
        """Apply the mid-stream modes; True when the stream must end here."""
        if self.mode == "hang_after_first" and sent >= 1:
            await self._hang(request, state)
            return True
        if self.mode == "hold_after_first" and sent == 1:
            await self._hold("hold_after_first")
        if self.mode == "drop" and sent >= self.drop_after:
            state.dropped = True
            _abort_connection(request)
            return True
        if self.mode == "error_mid_stream" and sent >= self.drop_after:
            await self._write_line(request, response, {"error": self.error_message})
            await response.write_eof()
            return True
        return False

    # ------------------------------------------------------------------ generation

    def _reply_tokens(self, spec: ModelSpec, prompt: str, options: dict[str, Any]) -> list[str]:
        if self.reply_script is not None:
            return list(self.reply_script)
        rng = _seeded_rng(spec.key, prompt, options.get("seed", ""))
        words = [rng.choice(_VOCABULARY) for _ in range(self.reply_tokens)]
        return [word if index == 0 else f" {word}" for index, word in enumerate(words)]

    def _complete(self, spec: ModelSpec, prompt: str, options: dict[str, Any]) -> Completion:
        tokens = self._reply_tokens(spec, prompt, options)
        return run_completion(tokens, options.get("num_predict", -1), options.get("stop", []))

    @staticmethod
    def _metrics(reply: _Reply) -> dict[str, Any]:
        """The ``api.Metrics`` of a final object, zero fields omitted as ``omitempty`` does.

        Load and generation times are measured; prompt evaluation is priced at 50 us a token.
        """
        now = time.perf_counter_ns()
        load = max(reply.loaded_ns - reply.started_ns, 1)
        prompt_eval = max(reply.prompt_tokens * 50_000, 1)
        evaluation = max(now - reply.loaded_ns, reply.completion.eval_count * 1_000)
        metrics = {
            "total_duration": max(now - reply.started_ns, load + prompt_eval + evaluation),
            "load_duration": load,
            "prompt_eval_count": reply.prompt_tokens,
            "prompt_eval_duration": prompt_eval,
            "eval_count": reply.completion.eval_count,
            "eval_duration": evaluation if reply.completion.eval_count else 0,
        }
        return {key: value for key, value in metrics.items() if value}

    async def _send_reply(
        self, request: web.Request, state: _RequestState, stream: bool, reply: _Reply
    ) -> web.StreamResponse:
        """Answer with an NDJSON stream, or after the whole generation with one JSON object."""
        if stream:
            return await self._stream(request, state, reply)
        for _ in range(reply.completion.eval_count):
            await self._token_pause()
        return _json_response(reply.final(reply.completion.text, self._metrics(reply)))

    def _check_think(self, body: dict[str, Any], spec: ModelSpec) -> None:
        think = body.get("think")
        if (think is True or (isinstance(think, str) and think)) and "thinking" not in spec.capabilities:
            raise ApiError(400, f"{go_quote(body['model'])} does not support thinking")

    @staticmethod
    def _check_top_logprobs(body: dict[str, Any]) -> None:
        if not 0 <= (body.get("top_logprobs") or 0) <= 20:
            raise ApiError(400, "top_logprobs must be between 0 and 20")

    # ------------------------------------------------------------------ /api/chat

    async def _handle_chat(
        self, request: web.Request, body: dict[str, Any], state: _RequestState
    ) -> web.StreamResponse:
        started = time.perf_counter_ns()
        self._check_top_logprobs(body)
        spec = self._lookup(body.get("model"), "model '{name}' not found")
        model = body["model"]
        keep_alive = parse_keep_alive(body.get("keep_alive"))
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        if not messages and keep_alive == 0:
            self._expire(spec)
            return _json_response(self._chat_object(model, "", done_reason="unload"))
        self._check_think(body, spec)
        if "completion" not in spec.capabilities:
            raise ApiError(400, f"{go_quote(model)} does not support chat")
        tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
        if body.get("tools") and "tools" not in spec.capabilities:
            name = ModelName.parse(spec.name)
            assert name is not None
            raise ApiError(400, f"{name.host}/{name.namespace}/{name.model}:{name.tag} does not support tools")
        options = parse_options(body.get("options"))
        stream = body.get("stream") is not False
        async with self._use_model(spec, keep_alive, options) as entry:
            loaded = time.perf_counter_ns()
            if not messages:
                return _json_response(self._chat_object(model, "", done_reason="load"))
            prompt = "\n".join(f"{m.get('role', '')}: {m.get('content') or ''}" for m in messages)
            prompt_tokens = 1 + sum(4 + count_tokens(m.get("content") or "") for m in messages) + 3
            prompt_tokens += sum(count_tokens(json.dumps(t)) for t in tools)
            calls = self._tool_calls(spec, tools, messages, prompt, options)
            if calls:
                eval_count = sum(count_tokens(json.dumps(c["function"])) for c in calls)
                completion = Completion([], "stop", eval_count)
            else:
                completion = self._complete(spec, prompt, options)
            reply = _Reply(
                completion,
                chunk=lambda text: self._chat_object(model, text),
                final=lambda text, metrics: self._chat_object(
                    model,
                    text,
                    done_reason=completion.done_reason,
                    metrics=metrics,
                    tool_calls=None if stream else calls,
                ),
                started_ns=started,
                loaded_ns=loaded,
                prompt_tokens=min(prompt_tokens, entry.context_length),
                tool_calls=tuple(calls),
                tool_chunk=lambda call: self._chat_object(model, "", tool_calls=[call]),
            )
            return await self._send_reply(request, state, stream, reply)

    def _tool_calls(
        self,
        spec: ModelSpec,
        tools: list[dict[str, Any]],
        messages: list[dict[str, Any]],
        prompt: str,
        options: dict[str, Any],
    ) -> list[dict[str, Any]]:
        """The calls the stand-in model makes: ``tool_script``'s, else one of the tool the last user message
        names (or the first tool) while no tool has answered yet; numbered and given ids as Ollama does."""
        functions: list[dict[str, Any]] = [t["function"] for t in tools if isinstance(t.get("function"), dict)]
        if not functions:
            return []
        if self.tool_script is not None:
            wanted = [(name, dict(arguments)) for name, arguments in self.tool_script]
        elif messages[-1].get("role") == "tool":
            return []  # the model answers in words with the result
        else:
            asked = str(messages[-1].get("content") or "").lower()
            named = [f for f in functions if str(f.get("name", "")).lower().replace("_", " ") in asked]
            function = (named or functions)[0]
            rng = _seeded_rng(spec.key, prompt, options.get("seed", ""))
            wanted = [(str(function.get("name", "")), _arguments_for(function.get("parameters"), rng))]
        return [
            {"id": _tool_call_id(), "function": {"index": i, "name": name, "arguments": arguments}}
            for i, (name, arguments) in enumerate(wanted)
        ]

    @staticmethod
    def _chat_object(
        model: str,
        content: str,
        *,
        done_reason: str = "",
        metrics: dict[str, Any] | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """An ``api.ChatResponse``; ``done_reason`` given means the final object."""
        payload: dict[str, Any] = {
            "model": model,
            "created_at": go_time(time.time_ns()),
            "message": {"role": "assistant", "content": content},
        }
        if tool_calls:
            payload["message"]["tool_calls"] = tool_calls
        if done_reason:
            payload["done_reason"] = done_reason
        payload["done"] = bool(done_reason)
        payload.update(metrics or {})
        return payload

    # ------------------------------------------------------------------ /api/generate

    async def _handle_generate(
        self, request: web.Request, body: dict[str, Any], state: _RequestState
    ) -> web.StreamResponse:
        started = time.perf_counter_ns()
        self._check_top_logprobs(body)
        spec = self._lookup(body.get("model"), "model '{name}' not found")
        model = body["model"]
        keep_alive = parse_keep_alive(body.get("keep_alive"))
        prompt = body.get("prompt") or ""
        if not prompt and keep_alive == 0:
            self._expire(spec)
            return _json_response(self._generate_object(model, "", done_reason="unload"))
        raw = bool(body.get("raw"))
        if raw and (body.get("template") or body.get("system") or body.get("context")):
            raise ApiError(400, "raw mode does not support template, system, or context")
        self._check_think(body, spec)
        if "completion" not in spec.capabilities:
            raise ApiError(400, f"{go_quote(model)} does not support generate")
        options = parse_options(body.get("options"))
        async with self._use_model(spec, keep_alive, options) as entry:
            loaded = time.perf_counter_ns()
            if not prompt:
                return _json_response(self._generate_object(model, "", done_reason="load"))
            system = body.get("system") or ""
            prompt_tokens = 1 + count_tokens(system) + count_tokens(prompt) + (0 if raw else 8)
            completion = self._complete(spec, f"{system}\n{prompt}", options)

            def finish(text: str, metrics: dict[str, Any]) -> dict[str, Any]:
                context = None if raw else token_ids(f"{system} {prompt} {completion.text}")
                return self._generate_object(
                    model, text, done_reason=completion.done_reason, context=context, metrics=metrics
                )

            reply = _Reply(
                completion,
                chunk=lambda text: self._generate_object(model, text),
                final=finish,
                started_ns=started,
                loaded_ns=loaded,
                prompt_tokens=min(prompt_tokens, entry.context_length),
            )
            return await self._send_reply(request, state, body.get("stream") is not False, reply)

    @staticmethod
    def _generate_object(
        model: str,
        text: str,
        *,
        done_reason: str = "",
        context: list[int] | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """An ``api.GenerateResponse``; ``done_reason`` given means the final object."""
        payload: dict[str, Any] = {
            "model": model,
            "created_at": go_time(time.time_ns()),
            "response": text,
            "done": bool(done_reason),
        }
        if done_reason:
            payload["done_reason"] = done_reason
        if context:
            payload["context"] = context
        payload.update(metrics or {})
        return payload

    # ------------------------------------------------------------------ embeddings

    def _raw_embedding(self, spec: ModelSpec, text: str) -> list[float]:
        """The model's output before normalisation (what /api/embeddings returns)."""
        rng = _seeded_rng(spec.key, text)
        return [rng.gauss(0.0, 1.0) for _ in range(self.embed_dim)]

    @staticmethod
    def _embed_inputs(value: Any) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            return [value] if value else []
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return list(value)
        raise ApiError(400, "invalid input type")

    @staticmethod
    def _truncate(text: str, limit: int, allowed: bool) -> tuple[str, int]:
        """Fit ``text`` into ``limit`` tokens, or fail as the runner does when truncate is false."""
        tokens = list(_TOKEN.finditer(text))
        if len(tokens) <= limit:
            return text, len(tokens)
        if not allowed:
            raise ApiError(400, "the input length exceeds the context length")
        return text[: tokens[limit - 1].end()] if limit > 0 else "", max(limit, 0)

    async def _handle_embed(
        self, request: web.Request, body: dict[str, Any], state: _RequestState
    ) -> web.StreamResponse:
        started = time.perf_counter_ns()
        self._parse_model(body.get("model"))
        inputs = self._embed_inputs(body.get("input"))
        spec = self._lookup(body.get("model"), "model {quoted} not found, try pulling it first")
        options = parse_options(body.get("options"))
        async with self._use_model(spec, parse_keep_alive(body.get("keep_alive")), options) as entry:
            loaded = time.perf_counter_ns()
            if not inputs:
                return _json_response({"model": body["model"], "embeddings": []})
            limit = min(entry.context_length, spec.context_length)
            dimensions = int(body.get("dimensions") or 0)
            embeddings: list[list[float]] = []
            prompt_tokens = 0
            for text in inputs:
                kept, tokens = self._truncate(text, limit, body.get("truncate") is not False)
                prompt_tokens += tokens
                vector = l2_normalise(self._raw_embedding(spec, kept))
                if 0 < dimensions < len(vector):
                    vector = l2_normalise(vector[:dimensions])
                embeddings.append(float32_list(vector))
            payload = {
                "model": body["model"],
                "embeddings": embeddings,
                "total_duration": max(time.perf_counter_ns() - started, 1),
                "load_duration": max(loaded - started, 1),
                "prompt_eval_count": prompt_tokens,
            }
            return _json_response({key: value for key, value in payload.items() if value != 0})

    async def _handle_embeddings(
        self, request: web.Request, body: dict[str, Any], state: _RequestState
    ) -> web.StreamResponse:
        spec = self._lookup(body.get("model"), "model {quoted} not found, try pulling it first")
        options = parse_options(body.get("options"))
        async with self._use_model(spec, parse_keep_alive(body.get("keep_alive")), options):
            prompt = body.get("prompt") or ""
            if not prompt:
                return _json_response({"embedding": []})
            return _json_response({"embedding": self._raw_embedding(spec, prompt)})

    # ------------------------------------------------------------------ /api/show

    async def _handle_pull(
        self, request: web.Request, body: dict[str, Any], state: _RequestState
    ) -> web.StreamResponse:
        """``PullHandler``: progress lines as ``PullModel`` reports them (the manifest, each layer's bytes,
        the digest check, the manifest written, "success"); a name the registry does not have ends the
        stream with ``{"error": ...}`` after the first line, as the real registry's 404 does."""
        if not body.get("model") and body.get("name"):
            body = {**body, "model": body["name"]}
        parsed = self._parse_model(body.get("model"))
        registry = None if self.registry is None else {p.key for n in self.registry if (p := ModelName.parse(n))}
        known = registry is None or parsed.key in registry
        spec = make_spec(parsed.display, time.time_ns())
        layer = f"sha256:{spec.digest}"
        total, step = spec.size, max(1, spec.size // 4)
        lines: list[dict[str, Any]] = [{"status": "pulling manifest"}]
        if known:
            lines += [
                {"status": f"pulling {spec.digest[:12]}", "digest": layer, "total": total, "completed": done}
                for done in [*range(0, total, step), total]
            ]
            lines += [{"status": "verifying sha256 digest"}, {"status": "writing manifest"}, {"status": "success"}]
        else:
            lines.append({"error": "pull model manifest: file does not exist"})
        if known:
            self.add_model(parsed.display)
        if body.get("stream") is False:
            last = lines[-1]
            return _json_response(last, 500 if "error" in last else 200)
        response = web.StreamResponse(headers={"Content-Type": NDJSON_CONTENT_TYPE})
        await response.prepare(request)
        for line in lines:
            await response.write(go_json(line) + b"\n")
        await response.write_eof()
        return response

    async def _handle_show(
        self, request: web.Request, body: dict[str, Any], state: _RequestState
    ) -> web.StreamResponse:
        if not body.get("model") and body.get("name"):
            body = {**body, "model": body["name"]}
        spec = self._lookup(body.get("model"), "model '{name}' not found")
        return _json_response(self._show_object(spec))

    def _show_object(self, spec: ModelSpec) -> dict[str, Any]:
        arch = spec.family
        parameters = 'stop                           "<|eot_id|>"' if not spec.is_embedding else ""
        template = "" if spec.is_embedding else "{{ if .System }}{{ .System }}\n{{ end }}{{ .Prompt }}"
        modelfile = (
            '# Modelfile generated by "ollama show"\n'
            "# To build a new Modelfile based on this, replace FROM with:\n"
            f"# FROM {spec.name}\n\n"
            f"FROM /root/.ollama/models/blobs/sha256-{spec.digest}\n"
        )
        model_info = {
            "general.architecture": arch,
            "general.basename": spec.name.split(":")[0].split("/")[-1],
            "general.file_type": {"F16": 1, "Q4_0": 2, "Q8_0": 7}.get(spec.quantization, 15),
            "general.parameter_count": spec.parameter_count,
            "general.quantization_version": 2,
            f"{arch}.block_count": 16,
            f"{arch}.context_length": spec.context_length,
            f"{arch}.embedding_length": self.embed_dim,
            f"{arch}.attention.head_count": 32,
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.tokens": [],
        }
        payload = {
            "license": "Fake model licence: for tests only.",
            "modelfile": modelfile,
            "parameters": parameters,
            "template": template,
            "details": spec.details(),
            "model_info": model_info,
            "capabilities": list(spec.capabilities),
            "modified_at": go_time(spec.modified_ns, local=True),
        }
        return {key: value for key, value in payload.items() if value != ""}


# ------------------------------------------------------------------------ standalone


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve a fake Ollama API for tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(DEFAULT_MODELS),
        help="installed models (space or comma separated)",
    )
    parser.add_argument("--reply-tokens", type=int, default=8)
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--embed-dim", type=int, default=16)
    parser.add_argument("--unload-delay", type=float, default=0.0)
    parser.add_argument("--mode", choices=sorted(MODES), default="normal")
    parser.add_argument("--restart", metavar="URL", help="restart the fake at URL (a restart_command), then exit")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    models = [name for item in args.models for name in item.split(",") if name]
    fake = FakeOllama(
        models,
        reply_tokens=args.reply_tokens,
        token_delay=args.token_delay,
        embed_dim=args.embed_dim,
        unload_delay=args.unload_delay,
    )
    fake.mode = args.mode
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    url = await fake.start(args.host, args.port)
    print(f"fake Ollama {fake.version} listening on {url} with {', '.join(fake.models)}", flush=True)
    try:
        await stop.wait()
    finally:
        await fake.stop()


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    if args.restart:
        import urllib.request

        urllib.request.urlopen(
            urllib.request.Request(args.restart.rstrip("/") + "/_fake/restart", method="POST"), timeout=10
        )
        return
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
