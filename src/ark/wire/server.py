"""A lean HTTP/1.1 server on asyncio.Protocol and httptools (llhttp, the parser Node.js uses).

The gateway sits on the path of every token, and on this hot path the general
frameworks cost more CPU than everything ARK does itself (aiohttp's and
uvicorn's request cycle: ~270-290 µs on a 2-core box; this one: well under
100 µs). It does only what the gateway needs: keep-alive, request bodies with
a hard size limit (Content-Length or chunked), ``Expect: 100-continue``,
complete and chunked-streamed responses with write flow control, an idle
timeout, and cancellation of the handler when the client goes away.

It holds its limits as a library would (see docs/security.md): open connections in all and per client
address (503 and 429, answered at once); the request head in raw bytes while it is read (431), however
the parser buffers it; a head that takes too long (408); a response the client
does not read (the connection is cut after ``write_timeout``, so what the request held is released);
header values with CR or LF never go out; a request after garbage is refused only once every request
before it is answered; ``100 Continue`` only for the request next in line.

One task per request; requests on one connection are answered in order.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast

import httptools

log = logging.getLogger("ark.wire")

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_MAX_HEADER_BYTES = 64 * 1024
_MAX_HEADERS = 100
_LINGER_S = 1.0
_MAX_PIPELINED = 16  # requests read ahead of the one being answered
# Where Nginx connects from: behind it every client arrives from here, so these are not limited per address
# (Nginx's own limits apply in front); they still count toward the total.
LOCAL_PROXY = frozenset({"127.0.0.1", "::1"})


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    client: str  # the peer's address
    params: dict[str, str] = field(default_factory=dict)  # the route's {name} segments (ark.wire.router)


class BodyTooLargeError(Exception):
    pass


class HeadTooLargeError(Exception):
    pass


Handler = Callable[[Request, "Responder"], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Limits:
    max_body: int = 8 * 1024 * 1024
    idle_timeout: float = 75.0  # seconds an idle keep-alive connection stays open
    head_timeout: float = 30.0  # seconds a client has to send a whole request head (nginx client_header_timeout)
    write_timeout: float = 60.0  # seconds a response may wait for the client to read (nginx send_timeout)
    max_head: int = _MAX_HEADER_BYTES  # bytes of a request head, counted as they arrive
    max_connections: int = 4096  # open at once, in all (uvicorn: limit_concurrency; nginx: worker_connections)
    max_per_client: int = 256  # open at once from one address (an IPv6 /64), LOCAL_PROXY excepted (nginx: limit_conn)


class _Date:
    """The Date header, formatted at most once a second."""

    value = b""
    second = -1

    @classmethod
    def get(cls) -> bytes:
        now = int(time.time())
        if now != cls.second:
            cls.second = now
            cls.value = email.utils.formatdate(now, usegmt=True).encode()
        return cls.value


class Responder:
    """How a handler answers: ``send`` a complete response, or ``start`` / ``write`` / ``end`` a stream."""

    __slots__ = ("_bodiless", "_conn", "_head_pending", "extra_head", "keep_alive", "on_finish", "started", "status")

    def __init__(self, conn: _Connection, keep_alive: bool, bodiless: bool = False) -> None:
        self._conn = conn
        self._bodiless = bodiless  # the answer to HEAD: the head as GET would have it, never a body
        self._head_pending = b""
        # Called once, just before the last bytes of the response are written: whatever it
        # records is recorded before the client can see the response complete.
        self.on_finish: Callable[[int], None] | None = None
        self.extra_head = b""  # header lines ("name: value\r\n", latin-1) added to whatever response goes out
        self.keep_alive = keep_alive
        self.started = False
        self.status = 0

    def _head(self, status: int, headers: list[tuple[str, str]], extra: bytes) -> bytes:
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown")), b"date: ", _Date.get(), b"\r\n"]
        for name, value in headers:
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"header {name!r}: CR or LF in a response header")  # never a split response
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        lines.append(self.extra_head)
        lines.append(extra)
        lines.append(b"connection: keep-alive\r\n\r\n" if self.keep_alive else b"connection: close\r\n\r\n")
        return b"".join(lines)

    async def send(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        if self.started:
            raise RuntimeError("response already started")
        head = self._head(status, headers, b"content-length: %d\r\n" % len(body))  # may fail: nothing sent yet
        self.started, self.status = True, status
        self._finish()
        self._conn.write(head if self._bodiless else head + body)

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        """Begin a chunked response; the head leaves with the first chunk (one packet, first token sooner)."""
        if self.started:
            raise RuntimeError("response already started")
        self._head_pending = self._head(status, headers, b"transfer-encoding: chunked\r\n")
        self.started, self.status = True, status

    async def write(self, data: bytes) -> None:
        """One chunk of a streamed response; raises ConnectionResetError once the client is gone."""
        if data and not self._bodiless:
            self._conn.write(self._take_head() + b"%x\r\n%b\r\n" % (len(data), data))
            await self._conn.drain()

    async def end(self) -> None:
        self._finish()
        self._conn.write(self._take_head() + (b"" if self._bodiless else b"0\r\n\r\n"))

    def _finish(self) -> None:
        if self.on_finish is not None:
            on_finish, self.on_finish = self.on_finish, None
            on_finish(self.status)

    def _take_head(self) -> bytes:
        head, self._head_pending = self._head_pending, b""
        return head


class _Connection(asyncio.Protocol):
    """One client connection: parse requests, run the handler, write its answers in order."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._handler = server.handler
        self._find: Callable[[Request], Handler] | None = getattr(server.handler, "find", None)
        self._on_refused = server.on_refused
        self._limits = server.limits
        self._connections = server.connections
        self._counted = ""  # the key this connection counts under in server.per_client
        self._lingers = False  # refused, and discarding what the client still sends until it closes
        self._head_started = False  # a byte of the current request head has arrived
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._client = ""
        self._pending: deque[tuple[Request, bool]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_head = True  # between requests and while a head arrives: raw bytes count against max_head
        self._head_raw = 0
        self._completed = 0  # requests parsed on this connection
        self._refusal: int | None = None  # garbage came: refused once the requests before it are answered
        self._out: list[bytes] = []
        self._burst = False  # a write went out in this turn of the event loop
        self.closed = False
        self._reset_message()

    def _reset_message(self) -> None:
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._refused = False

    @property
    def busy(self) -> bool:
        return self._task is not None

    # -- asyncio.Protocol -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        peer = transport.get_extra_info("peername")
        self._client = str(peer[0]) if isinstance(peer, tuple) else ""
        over = self._admit()
        if over:
            self._refuse(over)  # answered at once: a client that reads before it writes sees why, too
            return
        self._arm_idle()
        self._arm_head()

    def _admit(self) -> int:
        """0 when this connection may stay open, else the status that refuses it."""
        limits = self._limits
        if len(self._connections) >= limits.max_connections:
            self._server.over_limit("open connections", limits.max_connections, self._client)
            return 503
        if self._client not in LOCAL_PROXY:
            key = client_key(self._client)
            per_client = self._server.per_client
            count = per_client.get(key, 0)
            if count >= limits.max_per_client:
                self._server.over_limit("connections per client", limits.max_per_client, self._client)
                return 429
            per_client[key] = count + 1
            self._counted = key
        self._connections.add(self)
        return 0

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the answer (400/413/431) is on its way and the connection closes after it
        in_head, completed = self._in_head, self._completed
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400)
            return
        except httptools.HttpParserError as exc:
            # httptools wraps what a callback raised (HttpParserCallbackError): look underneath
            cause = exc if isinstance(exc, BodyTooLargeError | HeadTooLargeError) else exc.__context__
            self._refuse(
                413 if isinstance(cause, BodyTooLargeError) else 431 if isinstance(cause, HeadTooLargeError) else 400
            )
            return
        # A head still incomplete after all of this read is all head: count it raw, whatever the parser holds
        # (llhttp keeps an unterminated header value for as long as it grows). A read that also ended a
        # request is not counted: its bytes are partly that request's (the limit allows one read more).
        if in_head and self._in_head and completed == self._completed:
            self._head_raw += len(data)
            if self._head_raw > self._limits.max_head:
                self._refuse(431)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._connections.discard(self)
        if self._lingers:
            self._lingers = False
            self._server.lingering -= 1
        if self._counted:
            per_client = self._server.per_client
            left = per_client[self._counted] - 1
            if left:
                per_client[self._counted] = left
            else:
                del per_client[self._counted]
        if self._idle is not None:
            self._idle.cancel()
        if self._head_timer is not None:
            self._head_timer.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the client left: stop working for it
        if self._writable is not None and not self._writable.done():
            self._writable.set_exception(ConnectionResetError("client disconnected"))
            self._writable.exception()  # seen: a drain still waiting raises it; none waiting (timed out) is fine

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # -- httptools callbacks ----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        # The idle timer keeps running until the request is complete: it also bounds how long a
        # client may take to send one (a slow-loris client is cut off after idle_timeout); the head
        # alone has head_timeout.
        self._reset_message()
        self._head_started = True
        self._arm_head()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._count_header_bytes(len(name) + len(value))
        if len(self._headers) > _MAX_HEADERS:
            raise httptools.HttpParserError("too many headers")

    def _count_header_bytes(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self._limits.max_head:
            raise HeadTooLargeError

    def on_headers_complete(self) -> None:
        self._in_head, self._head_raw, self._head_started = False, 0, False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        for name, value in self._headers:
            lower = name.lower()
            if lower == b"content-length" and value.strip().isdigit() and int(value) > self._limits.max_body:
                raise BodyTooLargeError
            # 100 Continue only for the request next in line: an interim answer must not overtake an earlier
            # request's response (a client that gets none sends its body after its own short wait)
            if (
                lower == b"expect"
                and value.lower() == b"100-continue"
                and self._transport is not None
                and self._task is None
                and not self._pending
            ):
                self._flush()  # the tail of the answer before, if it ended in this turn, goes first
                self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._limits.max_body:
            raise BodyTooLargeError
        self._body.append(body)

    def on_message_complete(self) -> None:
        parsed = httptools.parse_url(self._url)
        request = Request(
            method=self._parser.get_method().decode("ascii", "replace"),
            path=(parsed.path or b"/").decode("utf-8", "replace"),
            query=(parsed.query or b"").decode("utf-8", "replace"),
            headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self._headers},
            body=b"".join(self._body),
            client=self._client,
        )
        self._pending.append((request, self._parser.should_keep_alive()))
        self._in_head, self._completed = True, self._completed + 1
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if len(self._pending) >= _MAX_PIPELINED and self._transport is not None:
            self._transport.pause_reading()  # a client pipelining without reading answers waits
        if self._task is None:
            self._next()

    # -- running handlers -------------------------------------------------------------------------
    def _next(self) -> None:
        if not self._pending or self.closed:
            self._task = None
            if self._refusal is not None and not self.closed:  # every request before the garbage is answered
                self._send_refusal(self._refusal)
            elif not self.closed:
                self._arm_idle()
            return
        request, keep_alive = self._pending.popleft()
        if len(self._pending) == _MAX_PIPELINED - 1 and self._transport is not None:
            self._transport.resume_reading()
        responder = Responder(self, keep_alive, request.method == "HEAD")
        self._task = self._loop.create_task(self._run(request, responder))

    async def _run(self, request: Request, responder: Responder) -> None:
        try:
            find = self._find  # a Router: its handler is called here, one coroutine frame fewer per request
            await (find(request) if find is not None else self._handler)(request, responder)
            if not responder.started:
                await responder.send(500, _INTERNAL, _JSON)
            # a whole answer the client does not read holds the next request back, and is cut off after
            # write_timeout like a stream: no pipelining client grows the write buffer without bound
            if self._writable is not None and not self._writable.done():
                await self.drain()
        except asyncio.CancelledError:
            return  # the client disconnected; connection_lost did the rest
        except (ConnectionResetError, BrokenPipeError):
            return
        except Exception:
            log.exception("handler failed for %s %s", request.method, request.path)
            if not responder.started:
                responder.keep_alive = False
                await responder.send(500, _INTERNAL, _JSON)
            else:
                self.close()  # a stream cut in the middle: make the client see it
                return
        if not responder.keep_alive:
            self.close()
            return
        self._next()

    def write(self, data: bytes) -> None:
        # The first write in a turn of the event loop leaves at once (the first token is not
        # delayed); the writes that follow in the same turn leave together at its end, so an
        # upstream packet that carries many stream events costs two system calls, not one each.
        if self.closed or self._transport is None:
            raise ConnectionResetError("client disconnected")
        if self._burst:
            self._out.append(data)
            return
        self._transport.write(data)
        self._burst = True
        self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._burst = False
        if self._out and self._transport is not None and not self.closed:
            self._transport.write(b"".join(self._out))
        self._out.clear()

    async def drain(self) -> None:
        if self._writable is not None and not self._writable.done():
            try:
                async with asyncio.timeout(self._limits.write_timeout):
                    await asyncio.shield(self._writable)
            except TimeoutError:
                # the client stopped reading: cut it off, so that what its request holds (an engine slot,
                # a GPU lease, a budget reservation) is released now, not when its socket gives up
                log.warning("client %s read nothing for %g s: connection cut", self._client, self._limits.write_timeout)
                if self._transport is not None:
                    self._transport.abort()
                raise ConnectionResetError("client stopped reading") from None
        elif self.closed:
            raise ConnectionResetError("client disconnected")

    def _refuse(self, status: int) -> None:
        """Answer a request that cannot be parsed or accepted, then close: at once, or once the requests
        read before it are answered (their answers go first)."""
        self._refused = True
        self._on_refused(status)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._task is not None or self._pending:
            self._refusal = status  # _next sends it when the queue is empty
            return
        self._send_refusal(status)

    def _send_refusal(self, status: int) -> None:
        self._refusal = None
        self._flush()  # what the last answer left for the end of this turn goes first
        if self._transport is not None and not self._transport.is_closing():
            body = _REFUSALS[status]
            head = (
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%sconnection: close\r\n\r\n"
            )
            retry = b"retry-after: 1\r\n" if status in (429, 503) else b""
            self._transport.write(head % (status, _REASONS[status], len(body), retry) + body)
        server = self._server
        if server.lingering < server.max_lingering:
            # Linger a moment, discarding what the client still sends, so that it reads the answer
            # instead of a connection reset (a client writes its whole request before it reads). How many
            # linger at once is bounded: a flood of refused connections must not use up the open files.
            server.lingering += 1
            self._lingers = True
            transport = self._transport
            if transport is not None and not transport.is_closing() and transport.can_write_eof():
                transport.write_eof()  # the answer, then end of file: a client that has read it closes at once
            self._loop.call_later(_LINGER_S, self.close)
        else:
            self.close()

    def _arm_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self._loop.call_later(self._limits.head_timeout, self._head_too_slow)

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if not self._in_head or self._refused or self.closed:
            return
        if self._head_started or self._head_raw:
            self._refuse(408)
        else:
            self.close()  # a connection that never sent a byte: closed, as nginx does, without an answer

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = self._loop.call_later(self._limits.idle_timeout, self.close)

    def close(self) -> None:
        self._flush()
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.close()  # after what is buffered has gone out: bounded by the write timeout
            if transport.get_write_buffer_size():
                self._loop.call_later(self._limits.write_timeout, self._abort)

    def _abort(self) -> None:
        if not self.closed and self._transport is not None:
            self._transport.abort()


_JSON = [("content-type", "application/json")]
_INTERNAL = (  # what a handler that failed, or sent nothing, answers: OpenAI's error shape, as every refusal
    b'{"error":{"message":"Internal error.","type":"server_error","param":null,"code":"internal_error"}}'
)
_REFUSALS = {
    413: b'{"error":{"message":"The request body exceeds the size limit.","type":"invalid_request_error",'
    b'"param":null,"code":"request_too_large"}}',
    400: b'{"error":{"message":"Malformed HTTP request.","type":"invalid_request_error","param":null,'
    b'"code":"invalid_request"}}',
    408: b'{"error":{"message":"The request head did not arrive in time.","type":"invalid_request_error",'
    b'"param":null,"code":"request_timeout"}}',
    431: b'{"error":{"message":"The request head exceeds the size limit.","type":"invalid_request_error",'
    b'"param":null,"code":"request_header_fields_too_large"}}',
    429: b'{"error":{"message":"Too many open connections from your address; close some or try again shortly.",'
    b'"type":"rate_limit_error","param":null,"code":"too_many_connections"}}',
    503: b'{"error":{"message":"The server has too many open connections; try again shortly.",'
    b'"type":"server_error","param":null,"code":"too_many_connections"}}',
}


def client_key(address: str) -> str:
    """Whom a connection counts against: the IPv4 address, or the IPv6 /64 (one host's usual share)."""
    if ":" not in address:
        return address
    if address.startswith("::ffff:") and "." in address:  # an IPv4 client on a dual-stack socket
        return address[7:]
    try:
        return str(ipaddress.IPv6Network((address.split("%", 1)[0], 64), strict=False))
    except ValueError:
        return address


class Server:
    """Serve ``handler`` on host:port until ``close()``."""

    def __init__(
        self, handler: Handler, limits: Limits | None = None, *, on_refused: Callable[[int], None] | None = None
    ) -> None:
        self.handler = handler
        self.on_refused = on_refused or (lambda status: None)
        self.limits = limits or Limits()
        self.connections: set[_Connection] = set()
        self.per_client: dict[str, int] = {}  # open connections by client_key, LOCAL_PROXY not counted
        self.lingering = 0  # refused connections still open for a moment (_LINGER_S)
        self.max_lingering = max(16, self.limits.max_connections // 16)
        self._warned = -1e9
        self._server: asyncio.Server | None = None

    def over_limit(self, what: str, limit: int, client: str) -> None:
        now = time.monotonic()
        if now - self._warned >= 60.0:  # once a minute at most: a flood must not flood the log too
            self._warned = now
            log.warning("refusing connections: %s at the limit (%d; the latest from %s)", what, limit, client)

    async def start(self, host: str, port: int, *, backlog: int = 1024) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self),
            host,
            port,
            backlog=backlog,
            reuse_address=True,
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        sock: Any = self._server.sockets[0]
        return int(sock.getsockname()[1])

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting, let running requests finish for up to ``grace`` seconds, then cut the rest."""
        if self._server is None:
            return
        self._server.close()
        deadline = time.monotonic() + grace
        # polled, not signalled: shutdown is rare and bounded by the grace period
        while any(c.busy for c in self.connections) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.close()
        await self._server.wait_closed()
