"""A fast mock OpenAI upstream for the gateway overhead benchmark.

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
    GET  /mock/stats           request counters, to check that a gateway
                               really forwarded every request
    GET  /health               "ok"

The request's "model" is echoed back, so a gateway that maps an alias to
"mock-model" has to put the alias back itself.
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
    ap = argparse.ArgumentParser(description="Fast mock OpenAI upstream.")
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
