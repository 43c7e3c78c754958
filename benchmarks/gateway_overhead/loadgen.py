"""Closed-loop HTTP/1.1 load generator for the gateway overhead benchmark.

C keep-alive connections each send one pre-built request, wait for the whole
response, and send the next, for D seconds. It is asyncio.Protocol + httptools
(+ uvloop when installed): no HTTP client library, no per-request allocation
beyond the parser callbacks, so one core drives far more requests per second
than a Python gateway can serve. run.py starts it as its own process, pinned
to a CPU; it prints one JSON object on stdout.

Per request it records the latency (request written -> response complete) and,
with --sse, the time to the first complete SSE event, the number of "data:"
events, and whether "data: [DONE]" arrived; with --ndjson (Ollama's streams)
the same for lines: the first complete line, the number of lines, and whether
a line with "done":true arrived. A response counts as OK when the status is
200 and, for streams, [DONE] (or the done line) was seen.

    python loadgen.py --url http://127.0.0.1:8001/v1/chat/completions \
        --body '{"model":"mock-model","messages":[...]}' --conns 32 --duration 10 [--sse|--ndjson] [--key K]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import time
from collections import Counter
from typing import Any, cast
from urllib.parse import urlsplit

try:
    import httptools
except ImportError:  # pragma: no cover
    sys.exit("loadgen.py needs httptools: pip install httptools")

# What ends a stream, and what counts as one event in it: SSE (OpenAI) or NDJSON (Ollama).
FRAMING = {"sse": (b"[DONE]", b"data:", b"\n\n"), "ndjson": (b'"done":true', b"\n", b"\n")}


def build_request(url: str, body: bytes, key: str | None, stream: str | None) -> tuple[str, int, bytes]:
    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    lines = [
        f"POST {u.path or '/'} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Accept: {'text/event-stream' if stream == 'sse' else 'application/json'}",
        f"Content-Length: {len(body)}",
    ]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Run:
    """Shared state of one load run: request bytes, clock, results."""

    def __init__(self, host: str, port: int, request: bytes, stream: str | None, conns: int) -> None:
        self.host, self.port, self.request, self.conns = host, port, request, conns
        self.streamed = stream is not None  # a stream, SSE or NDJSON: TTFT and events are recorded
        self.done_mark, self.event_mark, self.first_end = FRAMING[stream or "sse"]
        self.start = self.deadline = 0.0
        self.latency: list[float] = []  # seconds, successful requests
        self.ttft: list[float] = []
        self.events: list[int] = []
        self.in_window = 0  # successful requests completed before the deadline
        self.errors: Counter[str] = Counter()
        self.error_sample: list[str] = []
        self.connections_opened = 0
        self.active = 0
        self.finished: asyncio.Future[None] | None = None

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if len(self.error_sample) < 5:
            self.error_sample.append(detail[:300])

    def worker_done(self) -> None:
        self.active -= 1
        if self.active == 0 and self.finished is not None and not self.finished.done():
            self.finished.set_result(None)

    async def open(self, start_now: bool) -> Client:
        loop = asyncio.get_running_loop()
        client = Client(self)
        await loop.create_connection(lambda: client, self.host, self.port)
        self.connections_opened += 1
        if start_now:
            client.send()
        return client

    def reconnect(self) -> None:
        """Replace a closed connection (server closed it, or it failed)."""

        async def again() -> None:
            try:
                await self.open(start_now=True)
            except OSError as exc:
                self.error("connect", repr(exc))
                await asyncio.sleep(0.01)
                if time.perf_counter() < self.deadline:
                    self.reconnect()
                    return
                self.worker_done()
                return

        asyncio.get_running_loop().create_task(again())


class Client(asyncio.Protocol):
    """One keep-alive connection running requests back to back."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.in_flight = False
        self.retired = False
        self.t0 = 0.0
        self.status = 0
        self.ttft: float | None = None
        self.first = b""
        self.n_events = 0
        self.tail = b""
        self.done = False
        self.body: list[bytes] = []

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.run.error("parse", repr(exc))
            self.in_flight = False
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.retired:
            return
        self.retired = True
        if self.in_flight:
            self.run.error("closed", f"connection closed mid-response ({exc!r})")
        if time.perf_counter() < self.run.deadline:
            self.run.reconnect()
        else:
            self.run.worker_done()

    # request cycle
    def send(self) -> None:
        self.status, self.ttft, self.first, self.n_events, self.tail, self.done = 0, None, b"", 0, b"", False
        self.body = []
        self.in_flight = True
        self.t0 = time.perf_counter()
        assert self.transport is not None
        self.transport.write(self.run.request)

    # httptools callbacks
    def on_status(self, _status: bytes) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, data: bytes) -> None:
        if not self.run.streamed:
            if self.status != 200:
                self.body.append(data)
            return
        run = self.run
        if self.ttft is None:
            self.first += data
            if run.first_end in self.first:
                self.ttft = time.perf_counter() - self.t0
        scan = self.tail + data
        self.n_events += scan.count(run.event_mark) - self.tail.count(run.event_mark)
        if run.done_mark in scan:
            self.done = True
        self.tail = scan[-(len(run.done_mark) - 1) :]
        if self.status != 200:
            self.body.append(data)

    def on_message_complete(self) -> None:
        now = time.perf_counter()
        run = self.run
        self.in_flight = False
        keep_alive = self.parser.should_keep_alive()
        if self.status != 200:
            run.error(f"http_{self.status}", b"".join(self.body)[:300].decode(errors="replace"))
        elif run.streamed and not self.done:
            run.error("no_done", f"stream ended without {run.done_mark.decode()}")
        else:
            run.latency.append(now - self.t0)
            if now <= run.deadline:
                run.in_window += 1
            if run.streamed:
                run.ttft.append(self.ttft if self.ttft is not None else now - self.t0)
                run.events.append(self.n_events)
        assert self.transport is not None
        if now < run.deadline and keep_alive:
            self.send()
        elif not keep_alive:
            self.transport.close()  # connection_lost reconnects if there is time left
        else:
            self.retired = True
            self.transport.close()
            run.worker_done()


def percentile(sorted_vals: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, int(-(-p * len(sorted_vals) // 100)) - 1))
    return sorted_vals[k]


def ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 4)


async def load(run: Run, duration: float, grace: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    run.finished = loop.create_future()
    run.deadline = float("inf")
    clients = [await run.open(start_now=False) for _ in range(run.conns)]
    run.active = len(clients)
    run.start = time.perf_counter()
    run.deadline = run.start + duration
    cpu0 = time.process_time()
    for c in clients:
        c.send()
    try:
        await asyncio.wait_for(asyncio.shield(run.finished), duration + grace)
    except TimeoutError:
        run.error("timeout", f"{run.active} connection(s) still busy {grace}s after the end")
    end = time.perf_counter()
    cpu = time.process_time() - cpu0
    lat = sorted(run.latency)
    ttft = sorted(run.ttft)
    out: dict[str, Any] = {
        "requests": run.in_window,
        "completed": len(lat),
        "rps": round(run.in_window / duration, 1),
        "p50_ms": ms(percentile(lat, 50)),
        "p99_ms": ms(percentile(lat, 99)),
        "mean_ms": ms(statistics.fmean(lat)) if lat else None,
        "errors": sum(run.errors.values()),
        "error_kinds": dict(run.errors),
        "error_sample": run.error_sample,
        "connections_opened": run.connections_opened,
        "wall_s": round(end - run.start, 3),
        "loadgen_cpu_s": round(cpu, 3),
    }
    if run.streamed:
        out["ttft_p50_ms"] = ms(percentile(ttft, 50))
        out["ttft_p99_ms"] = ms(percentile(ttft, 99))
        out["events_median"] = statistics.median(run.events) if run.events else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="Closed-loop HTTP/1.1 load generator (JSON on stdout).")
    ap.add_argument("--url", required=True)
    ap.add_argument("--body", required=True, help="JSON request body")
    ap.add_argument("--key", help="bearer token")
    ap.add_argument("--conns", type=int, default=1)
    ap.add_argument("--duration", type=float, default=10.0)
    framing = ap.add_mutually_exclusive_group()
    framing.add_argument("--sse", action="store_true", help="responses are SSE streams (OpenAI)")
    framing.add_argument("--ndjson", action="store_true", help="responses are NDJSON streams (Ollama)")
    ap.add_argument("--grace", type=float, default=30.0, help="seconds to wait for in-flight requests")
    args = ap.parse_args()
    stream = "sse" if args.sse else "ndjson" if args.ndjson else None
    host, port, request = build_request(args.url, args.body.encode(), args.key, stream)
    run = Run(host, port, request, stream, max(1, args.conns))
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        try:
            result = runner.run(load(run, args.duration, args.grace))
        except OSError as exc:
            result = {"fatal": f"cannot connect to {host}:{port}: {exc}"}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
