"""A lean HTTP/1.1 client for the gateway's upstreams: keep-alive pool, streamed bodies, httptools.

One :class:`Upstream` per engine. A request borrows a pooled connection (or
opens one, bounded by ``connect_timeout``), writes the request in one piece,
and returns once the response head is parsed; the body is then read whole
(``read``) or line by line as it arrives (``lines``, for SSE and NDJSON). A
response that is not read to its end, or that is cancelled, closes its
connection instead of returning it, so a cancelled generation really stops
upstream. Errors are :class:`ConnectError` (nothing was sent; :class:`ConnectTimeout`
when the reason is ``connect_timeout``) and
:class:`ConnectionClosed` / :class:`ProtocolError` (the upstream broke off or
spoke nonsense); :mod:`ark.engines._http` turns them into ARK's API errors.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import cast
from urllib.parse import urlsplit

import httptools

_MAX_RESPONSE_BUFFER = 1 << 20  # pause reading beyond this much unread body
# The largest body read whole: an embedding batch of 2048 inputs x 4096 floats is ~170 MB of JSON.
MAX_RESPONSE = 256 * 2**20


class ConnectError(OSError):
    """The connection could not be opened; the request was not sent."""


class ConnectTimeout(ConnectError):
    """No connection within ``connect_timeout``; the request was not sent."""


class ConnectionClosed(ConnectionError):
    """The upstream closed the connection before the response was complete."""


class ProtocolError(Exception):
    """The upstream's answer is not valid HTTP/1.1."""


class ResponseTooLarge(ProtocolError):
    """The upstream's body, or one line of it, is longer than the client reads."""


class _Conn(asyncio.Protocol):
    """One upstream connection; answers one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.head_done = False
        self.keep_alive = False
        self.complete = False
        self.body: list[bytes] = []
        self.buffered = 0
        self._paused = False

    # -- asyncio.Protocol -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(f"invalid HTTP response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete:
            self._fail(ConnectionClosed("the upstream closed the connection"))

    # -- httptools callbacks ----------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()  # llhttp forgets it once the message ends
        self.head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > _MAX_RESPONSE_BUFFER and self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    # -- used by Response -------------------------------------------------------------------------
    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        self._error = error
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)

    async def wait(self) -> None:
        if self._error is not None:
            raise self._error
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def take(self) -> bytes:
        data = b"".join(self.body)
        self.body.clear()
        self.buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def start(self, request: bytes) -> None:
        self._reset()
        self._error = None
        assert self.transport is not None
        self.transport.write(request)

    @property
    def reusable(self) -> bool:
        return self.complete and not self.closed and self.keep_alive

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()  # no lingering: the peer sees the reset at once


class Response:
    """A response whose head has arrived; read its body once, then close it (or use ``async with``)."""

    def __init__(self, upstream: Upstream, conn: _Conn) -> None:
        self._upstream = upstream
        self._conn = conn
        self.status = conn.status
        self.headers = conn.headers
        self._released = False

    async def read(self) -> bytes:
        """The whole body. What has arrived is taken as it comes, so a body larger than the read-ahead buffer
        keeps flowing (reading pauses only while nobody takes); past ``max_response`` bytes it fails."""
        conn = self._conn
        parts: list[bytes] = []
        size = 0
        while True:
            if conn.body:
                part = conn.take()
                parts.append(part)
                size += len(part)
                if size > self._upstream.max_response:
                    self._too_large()
            if conn.complete:
                break
            await conn.wait()
        self.release()
        return b"".join(parts)

    def _too_large(self) -> None:
        self._released = True
        self._conn.close()  # the rest is not read: the connection cannot be used again
        raise ResponseTooLarge(f"the response is longer than {self._upstream.max_response} bytes")

    async def lines(self) -> AsyncIterator[bytes]:
        """The body split at newlines (the newline removed), as it arrives."""
        conn = self._conn
        pending: list[bytes] = []  # the pieces of a line that has not ended yet, joined once it does
        pending_size = 0
        while True:
            if not conn.body and not conn.complete:
                await conn.wait()
                continue
            data = conn.take()
            if b"\n" in data:
                if pending:
                    data = b"".join(pending) + data
                    pending.clear()
                *full, tail = data.split(b"\n")
                pending_size = 0
                for line in full:
                    yield line
            else:
                full, tail = [], data
            if tail:
                pending.append(tail)
                pending_size += len(tail)
                if pending_size > self._upstream.max_response:  # one line that never ends
                    self._too_large()
            if conn.complete and not conn.body:
                if pending:
                    yield b"".join(pending)
                self.release()
                return

    def release(self) -> None:
        """Give the connection back when the response was read to its end, else close it."""
        if self._released:
            return
        self._released = True
        if self._conn.reusable:
            self._upstream._idle.append(self._conn)
        else:
            self._conn.close()

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class Upstream:
    """A keep-alive pool to one base URL (``http://host:port/prefix`` or https)."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float,
        headers: Mapping[str, str] | None = None,
        max_idle: int = 64,
        max_response: int = MAX_RESPONSE,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if parts.scheme == "https" else None
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.max_response = max_response
        host_header = self.host if parts.port is None else f"{self.host}:{parts.port}"
        fixed = {"host": host_header, "user-agent": "ark", "accept-encoding": "identity", **(headers or {})}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode("latin-1")
        self._idle: list[_Conn] = []

    async def _connection(self) -> _Conn:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    _Conn, self.host, self.port, ssl=self._ssl, server_hostname=self.host if self._ssl else None
                )
        except TimeoutError:
            raise ConnectTimeout(
                f"no connection to {self.host}:{self.port} within {self.connect_timeout:g} s"
            ) from None
        except OSError as exc:
            raise ConnectError(f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}") from exc
        return conn

    async def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json"
    ) -> Response:
        """Send a request; return once the response head is in (the body follows through the Response)."""
        conn = await self._connection()
        head = f"{method} {self.prefix}{path} HTTP/1.1\r\n".encode("latin-1") + self._fixed
        if body is not None:
            head += b"content-type: %b\r\ncontent-length: %d\r\n" % (content_type.encode(), len(body))
        try:
            conn.start(head + b"\r\n" + (body or b""))
            while not conn.head_done:
                await conn.wait()
        except BaseException:
            conn.close()
            raise
        return Response(self, conn)

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
