"""A fast mock upstream for the gateway overhead benchmark: OpenAI's API and Ollama's native one.

It must never be the bottleneck, so it is one asyncio.Protocol on top of the
httptools parser (uvloop when installed): no framework, no routing table,
response templates built once at start-up.

Endpoints (any Authorization header is accepted):

    GET  /v1/models            one model, "mock-model"
    POST /v1/chat/completions  plain JSON, or with "stream": true an SSE stream
                               (chunked transfer): --chunks content chunks, a
                               finish chunk, a usage chunk when
                               stream_options.include_usage, then data: [DONE]
    POST /v1/embeddings        --embedding-dim floats per input
    GET  /api/tags             Ollama: one model, "mock-ollama:latest"
    GET  /api/ps, /api/version Ollama: nothing loaded; a version
    POST /api/chat             Ollama: one JSON object with "stream": false,
                               else (Ollama's default) an NDJSON stream
                               (application/x-ndjson, chunked): --chunks
                               lines of one token each, then the "done" line
                               with its counts and durations
    POST /api/embed            Ollama: --embedding-dim floats per input
    GET  /mock/stats           request counters, to check that a gateway
                               really forwarded every request
    GET  /health               "ok"

The request's "model" is echoed back, so a gateway that maps an alias to
"mock-model" has to put the alias back itself. The Ollama answers have the
real server's fields and content types (its api/types.go; tests/fakes/ollama.py
is the faithful one, this one only has to be fast): the same text, tokens and
counts as the OpenAI answers, so that a gateway in front of either has the
same work to do.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from typing import Any, cast

try:
    import httptools
except ImportError:  # pragma: no cover
    sys.exit("mock_upstream.py needs httptools: pip install httptools")

MODEL_ID = "mock-model"
OLLAMA_MODEL_ID = "mock-ollama:latest"  # what the Ollama endpoints list (a name apart from the OpenAI one)
OLLAMA_VERSION = "0.12.6"
COMPLETION_TEXT = "This is a mock completion from the benchmark upstream."
PROMPT_TOKENS = 12
COMPLETION_TOKENS = 10


def stream_tokens(chunks: int) -> list[str]:
    """The delta.content of each streamed content chunk."""
    return [f"tok{i} " for i in range(chunks)]


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _response(status: bytes, body: bytes, keep_alive: bool, ctype: bytes = b"application/json") -> bytes:
    return b"".join(
        (
            b"HTTP/1.1 ",
            status,
            b"\r\nContent-Type: ",
            ctype,
            b"\r\nContent-Length: ",
            str(len(body)).encode(),
            b"" if keep_alive else b"\r\nConnection: close",
            b"\r\n\r\n",
            body,
        )
    )


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
NDJSON_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
OLLAMA_JSON = b"application/json; charset=utf-8"
CHUNKED_END = b"0\r\n\r\n"
NOT_FOUND = b'{"error":{"message":"not found","type":"invalid_request_error","code":"not_found"}}'
BAD_REQUEST = b'{"error":{"message":"invalid JSON body","type":"invalid_request_error"}}'


class Upstream:
    """State shared by all connections: settings, counters, static bodies."""

    def __init__(self, chunks: int, embedding_dim: int) -> None:
        self.chunks = chunks
        self.stats: Counter[str] = Counter()
        self.seq = 0
        self.models = _json(
            {
                "object": "list",
                "data": [{"id": MODEL_ID, "object": "model", "created": int(time.time()), "owned_by": "mock"}],
            }
        )
        self.vector = [round(((i % 7) - 3) / 10, 3) for i in range(embedding_dim)]
        # Streamed content choices are the same for every request: pre-serialise them.
        self.stream_choices = [
            _json(
                [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": tok} if i == 0 else {"content": tok},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ]
            )
            for i, tok in enumerate(stream_tokens(chunks))
        ]
        # Ollama: each streamed line is {"model":M,"created_at":T,"message":{...},"done":false}
        self.ollama_messages = [
            b',"message":' + _json({"role": "assistant", "content": tok}) + b',"done":false}\n'
            for tok in stream_tokens(chunks)
        ]
        self.ollama_tags = _json(
            {
                "models": [
                    {
                        "name": OLLAMA_MODEL_ID,
                        "model": OLLAMA_MODEL_ID,
                        "modified_at": "2026-12-01T10:00:00.000000000Z",
                        "size": 1_321_098_329,
                        "digest": "b" * 64,
                        "details": {
                            "parent_model": "",
                            "format": "gguf",
                            "family": "llama",
                            "families": ["llama"],
                            "parameter_size": "1.2B",
                            "quantization_level": "Q8_0",
                        },
                    }
                ]
            }
        )

    def chat(self, req: dict[str, Any]) -> tuple[bytes, list[bytes] | None]:
        """Return (full response body, None) or (b"", SSE event payloads)."""
        self.seq += 1
        rid = f"chatcmpl-mock{self.seq}"
        created = int(time.time())
        model = json.dumps(req.get("model") or MODEL_ID)
        if not req.get("stream"):
            self.stats["chat"] += 1
            body = {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": req.get("model") or MODEL_ID,
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "logprobs": None,
                        "message": {"role": "assistant", "content": COMPLETION_TEXT},
                    }
                ],
                "usage": {
                    "prompt_tokens": PROMPT_TOKENS,
                    "completion_tokens": COMPLETION_TOKENS,
                    "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
                },
            }
            return _json(body), None
        self.stats["chat_stream"] += 1
        head = (
            f'data: {{"id":"{rid}","object":"chat.completion.chunk","created":{created},"model":{model},"choices":'
        ).encode()
        events = [head + choices + b"}\n\n" for choices in self.stream_choices]
        events.append(head + b'[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}\n\n')
        if (req.get("stream_options") or {}).get("include_usage"):
            n = self.chunks
            usage = f'[],"usage":{{"prompt_tokens":{PROMPT_TOKENS},"completion_tokens":{n},'
            usage += f'"total_tokens":{PROMPT_TOKENS + n}}}}}\n\n'
            events.append(head + usage.encode())
        events.append(b"data: [DONE]\n\n")
        return b"", events

    def embeddings(self, req: dict[str, Any]) -> bytes:
        self.stats["embeddings"] += 1
        inp = req.get("input")
        n = len(inp) if isinstance(inp, list) and inp and not isinstance(inp[0], int) else 1
        return _json(
            {
                "object": "list",
                "model": req.get("model") or MODEL_ID,
                "data": [{"object": "embedding", "index": i, "embedding": self.vector} for i in range(n)],
                "usage": {"prompt_tokens": 4 * n, "total_tokens": 4 * n},
            }
        )

    # -- Ollama's native API ---------------------------------------------------------------------------
    def ollama_chat(self, req: dict[str, Any]) -> tuple[bytes, list[bytes] | None]:
        """Return (the whole JSON answer, None) or (b"", the NDJSON lines); Ollama streams by default."""
        model = _json(req.get("model") or OLLAMA_MODEL_ID)
        start = b'{"model":' + model + b',"created_at":"' + _go_time().encode() + b'"'
        if req.get("stream") is False:
            self.stats["ollama_chat"] += 1
            message = _json({"role": "assistant", "content": COMPLETION_TEXT})
            return start + b',"message":' + message + b',"done_reason":"stop","done":true,' + _metrics(
                PROMPT_TOKENS, COMPLETION_TOKENS
            ) + b"}", None
        self.stats["ollama_chat_stream"] += 1
        lines = [start + message for message in self.ollama_messages]
        last = b',"message":{"role":"assistant","content":""},"done_reason":"stop","done":true,'
        lines.append(start + last + _metrics(PROMPT_TOKENS, self.chunks) + b"}\n")
        return b"", lines

    def ollama_embed(self, req: dict[str, Any]) -> bytes:
        self.stats["ollama_embed"] += 1
        inp = req.get("input")
        n = len(inp) if isinstance(inp, list) else 1
        return _json(
            {
                "model": req.get("model") or OLLAMA_MODEL_ID,
                "embeddings": [self.vector] * n,
                "total_duration": 1_000_000,
                "load_duration": 1_000,
                "prompt_eval_count": 4 * n,
            }
        )


def _go_time() -> str:
    """Now, as Go writes a time.Time in JSON (RFC 3339 with nanoseconds)."""
    now = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now // 10**9)) + f".{now % 10**9:09d}Z"


def _metrics(prompt_tokens: int, eval_count: int) -> bytes:
    """The counts and durations (nanoseconds) of Ollama's "done" answer, as JSON members."""
    return (
        f'"total_duration":2000000,"load_duration":1000,"prompt_eval_count":{prompt_tokens},'
        f'"prompt_eval_duration":500000,"eval_count":{eval_count},"eval_duration":1500000'
    ).encode()


class Connection(asyncio.Protocol):
    """One client connection. Responses are written synchronously, so pipelined
    requests are answered in order without any queueing."""

    def __init__(self, upstream: Upstream) -> None:
        self.up = upstream
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(_response(b"400 Bad Request", BAD_REQUEST, keep_alive=False))
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        keep = self.parser.should_keep_alive()
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        try:
            out = self.handle(method, path, b"".join(self.body), keep)
        except (ValueError, AttributeError):
            self.up.stats["bad_request"] += 1
            out = [_response(b"400 Bad Request", BAD_REQUEST, keep)]
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.writelines(out)
            if not keep:
                self.transport.close()

    def handle(self, method: bytes, path: bytes, raw: bytes, keep: bool) -> list[bytes]:
        up = self.up
        if method == b"POST" and path == b"/v1/chat/completions":
            body, events = up.chat(_loads(raw))
            if events is None:
                return [_response(b"200 OK", body, keep)]
            head = SSE_HEAD + (b"" if keep else b"Connection: close\r\n") + b"Transfer-Encoding: chunked\r\n\r\n"
            return [head, *(_chunk(e) for e in events), CHUNKED_END]
        if method == b"POST" and path == b"/v1/embeddings":
            return [_response(b"200 OK", up.embeddings(_loads(raw)), keep)]
        if method == b"GET" and path == b"/v1/models":
            up.stats["models"] += 1
            return [_response(b"200 OK", up.models, keep)]
        if method == b"POST" and path == b"/api/chat":
            body, lines = up.ollama_chat(_loads(raw))
            if lines is None:
                return [_response(b"200 OK", body, keep, OLLAMA_JSON)]
            head = NDJSON_HEAD + (b"" if keep else b"Connection: close\r\n") + b"Transfer-Encoding: chunked\r\n\r\n"
            return [head, *(_chunk(line) for line in lines), CHUNKED_END]
        if method == b"POST" and path == b"/api/embed":
            return [_response(b"200 OK", up.ollama_embed(_loads(raw)), keep, OLLAMA_JSON)]
        if method == b"GET" and path == b"/api/tags":
            up.stats["ollama_tags"] += 1
            return [_response(b"200 OK", up.ollama_tags, keep, OLLAMA_JSON)]
        if method == b"GET" and path == b"/api/ps":
            up.stats["ollama_ps"] += 1
            return [_response(b"200 OK", b'{"models":[]}', keep, OLLAMA_JSON)]
        if method == b"GET" and path == b"/api/version":
            return [_response(b"200 OK", _json({"version": OLLAMA_VERSION}), keep, OLLAMA_JSON)]
        if method == b"GET" and path == b"/mock/stats":
            return [_response(b"200 OK", _json(dict(up.stats)), keep)]
        if method == b"GET" and path == b"/health":
            return [_response(b"200 OK", b"ok", keep, b"text/plain")]
        up.stats["not_found"] += 1
        return [_response(b"404 Not Found", NOT_FOUND, keep)]


def _loads(raw: bytes) -> dict[str, Any]:
    obj = json.loads(raw) if raw else {}
    if not isinstance(obj, dict):
        raise ValueError("body must be a JSON object")
    return obj


async def serve(host: str, port: int, upstream: Upstream, quiet: bool) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(upstream), host, port, reuse_address=True, backlog=4096)
    if not quiet:
        print(f"mock upstream on http://{host}:{port} (chunks={upstream.chunks})", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description="Fast mock upstream: OpenAI's API and Ollama's native one.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--chunks", type=int, default=20, help="content chunks per streamed response")
    ap.add_argument("--embedding-dim", type=int, default=32)
    ap.add_argument("--no-uvloop", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    loop_factory = None
    if not args.no_uvloop:
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:
            pass
    upstream = Upstream(max(1, args.chunks), max(1, args.embedding_dim))
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(args.host, args.port, upstream, args.quiet))


if __name__ == "__main__":
    main()
