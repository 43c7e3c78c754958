"""The lean HTTP/1.1 layer on real sockets: the server against raw bytes, the client against the server."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from ark.wire import (
    ConnectError,
    ConnectionClosed,
    Limits,
    ProtocolError,
    Request,
    Responder,
    ResponseTooLarge,
    Server,
    Upstream,
)

Scenario = Callable[[Server, list[Request]], Awaitable[None]]
CANCELLED: list[str] = []


async def echo(request: Request, responder: Responder) -> None:
    if request.path in ("/stream", "/trickle"):
        await responder.start(200, [("content-type", "text/plain")])
        for i in range(3):
            await responder.write(f"line {i}\n".encode())
            if request.path == "/trickle":
                await asyncio.sleep(0.2)
        await responder.end()
    elif request.path == "/slow":
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            CANCELLED.append(request.path)
            raise
    else:
        body = f"{request.method} {request.path}?{request.query} {len(request.body)}".encode()
        await responder.send(200, body, [("content-type", "text/plain"), ("x-seen", request.headers.get("x-a", ""))])


def run(scenario: Scenario, *, max_body: int = 1000) -> None:
    async def main() -> None:
        seen: list[Request] = []

        async def handler(request: Request, responder: Responder) -> None:
            seen.append(request)
            await echo(request, responder)

        server = Server(handler, Limits(max_body=max_body, idle_timeout=5))
        await server.start("127.0.0.1", 0)
        try:
            await asyncio.wait_for(scenario(server, seen), 10)
        finally:
            await server.close(grace=0.1)

    asyncio.run(main())


async def raw(port: int, data: bytes, *, read_until_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = await reader.read() if read_until_close else await reader.read(65536)
    writer.close()
    return out


def test_keep_alive_and_pipelining_answer_in_order() -> None:
    async def scenario(server: Server, seen: list[Request]) -> None:
        two = b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        out = await raw(server.port, two)
        first, second = out.split(b"HTTP/1.1 200 OK")[1:]
        assert b"GET /a?x=1 0" in first and b"x-seen: 1" in first and b"connection: keep-alive" in first
        assert b"GET /b? 0" in second and b"connection: close" in second
        assert [r.path for r in seen] == ["/a", "/b"]

    run(scenario)


def test_chunked_request_body_and_streamed_response() -> None:
    async def scenario(server: Server, seen: list[Request]) -> None:
        chunked = b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        chunked += b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        assert b"POST /x? 11" in await raw(server.port, chunked)
        assert seen[0].body == b"hello world"
        out = await raw(server.port, b"GET /stream HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert b"transfer-encoding: chunked" in out
        assert out.endswith(b"7\r\nline 0\n\r\n7\r\nline 1\n\r\n7\r\nline 2\n\r\n0\r\n\r\n")

    run(scenario)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\n\r\n" + b"x" * 100,  # declared too large
        b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + b"800\r\n" + b"y" * 2048 + b"\r\n",
    ],
    ids=["content-length", "chunked"],
)
def test_body_over_the_limit_is_413_in_openai_shape(request_bytes: bytes) -> None:
    async def scenario(server: Server, seen: list[Request]) -> None:
        out = await raw(server.port, request_bytes)
        assert out.startswith(b"HTTP/1.1 413 ")
        assert b'"code":"request_too_large"' in out
        assert seen == []  # the handler never saw it

    run(scenario, max_body=1000)


@pytest.mark.parametrize(
    "garbage",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
    ],
)
def test_malformed_requests_get_400_and_close(garbage: bytes) -> None:
    async def scenario(server: Server, seen: list[Request]) -> None:
        out = await raw(server.port, garbage)
        assert out.startswith(b"HTTP/1.1 400 ") and b"connection: close" in out
        assert seen == []

    run(scenario)


def test_oversized_headers_are_refused() -> None:
    async def scenario(server: Server, seen: list[Request]) -> None:
        out = await raw(server.port, b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 431 ")

    run(scenario)


def test_expect_100_continue() -> None:
    async def scenario(server: Server, seen: list[Request]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"abc")
        assert b"POST /x? 3" in await reader.read(4096)
        writer.close()

    run(scenario)


def test_client_disconnect_cancels_the_handler() -> None:
    CANCELLED.clear()

    async def scenario(server: Server, seen: list[Request]) -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
        await writer.drain()
        while not seen:  # noqa: ASYNC110 - polling a list the handler appends to
            await asyncio.sleep(0.01)
        writer.close()
        for _ in range(200):
            if CANCELLED:
                break
            await asyncio.sleep(0.01)
        assert CANCELLED == ["/slow"]  # the handler was cancelled, not left sleeping
        assert not server.connections

    run(scenario)


# -- the client ---------------------------------------------------------------------------------


def test_client_reuses_one_connection() -> None:
    async def scenario(server: Server, seen: list[Request]) -> None:
        upstream = Upstream(f"http://127.0.0.1:{server.port}/base", connect_timeout=2, headers={"x-a": "k"})
        peers = set()
        for i in range(5):
            response = await upstream.request("POST", f"/p{i}", b"{}")
            assert response.status == 200 and response.headers["x-seen"] == "k"
            assert await response.read() == f"POST /base/p{i}? 2".encode()
        for _ in seen:
            peers.add(len(server.connections))
        assert peers == {1} and len(upstream._idle) == 1
        upstream.close()

    run(scenario)


def test_client_reads_lines_as_they_arrive() -> None:
    async def scenario(server: Server, seen: list[Request]) -> None:
        upstream = Upstream(f"http://127.0.0.1:{server.port}", connect_timeout=2)
        async with await upstream.request("GET", "/stream") as response:
            lines = [line async for line in response.lines()]
        assert lines == [b"line 0", b"line 1", b"line 2"]
        assert len(upstream._idle) == 1  # read to the end: reusable
        upstream.close()

    run(scenario)


def test_abandoned_response_closes_its_connection() -> None:
    async def scenario(server: Server, seen: list[Request]) -> None:
        upstream = Upstream(f"http://127.0.0.1:{server.port}", connect_timeout=2)
        async with await upstream.request("GET", "/trickle") as response:
            async for _ in response.lines():
                break
        assert upstream._idle == []  # never reuse a connection with a half-read answer

    run(scenario)


def test_client_errors() -> None:
    async def main() -> None:
        with socket_that_refuses() as port:
            upstream = Upstream(f"http://127.0.0.1:{port}", connect_timeout=1)
            with pytest.raises(ConnectError, match="cannot connect"):
                await upstream.request("GET", "/")

        async def serve(reply: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(reply)
            await writer.drain()
            writer.close()

        for reply, error in [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", ConnectionClosed),
            (b"SPDY/9 999 what\r\n\r\n", ProtocolError),
            (b"", ConnectionClosed),
        ]:
            server = await asyncio.start_server(lambda r, w, reply=reply: serve(reply, r, w), "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            upstream = Upstream(f"http://127.0.0.1:{port}", connect_timeout=1)
            with pytest.raises(error):
                response = await upstream.request("GET", "/")
                await response.read()
            server.close()
            await server.wait_closed()

    asyncio.run(main())


class socket_that_refuses:
    """A port where nothing listens (bound, never listening, so no one else takes it meanwhile)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        port: Any = self.sock.getsockname()[1]
        return int(port)

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_many_pipelined_requests_are_all_answered_in_order() -> None:
    async def scenario(server: Server, seen: list[Request]) -> None:
        requests = b"".join(b"GET /n%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(100))
        out = await raw(server.port, requests + b"GET /last HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert out.count(b"HTTP/1.1 200 OK") == 101
        order = [int(part.split(b"GET /n", 1)[1].split(b"?", 1)[0]) for part in out.split(b"HTTP/1.1 200")[1:-1]]
        assert order == list(range(100))

    run(scenario)


def test_a_client_that_never_finishes_its_request_is_cut_off() -> None:
    async def main() -> None:
        server = Server(echo, Limits(idle_timeout=0.3))
        await server.start("127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")  # 7 bytes never come
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        writer.close()
        await server.close(grace=0.1)

    asyncio.run(main())


# -- the limits a library holds (issue 14): each of these failed on the server before it held them ----------


async def _send_until_closed(port: int, head: bytes, piece: bytes, most: int) -> bytes:
    """Send ``head`` then ``piece`` after ``piece`` (up to ``most`` bytes) until the server answers or closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    sent = 0
    try:
        while sent < most:
            writer.write(piece)
            await writer.drain()
            sent += len(piece)
            try:
                answer = await asyncio.wait_for(reader.read(65536), 0.001)
            except TimeoutError:
                continue
            return answer + await reader.read()
        return await reader.read()
    except ConnectionError:
        return await reader.read()
    finally:
        writer.close()


def test_an_unterminated_header_is_refused_431_as_it_grows() -> None:
    async def scenario(server: Server, seen: list[Request]) -> None:
        # a header value that never ends: refused once the head passes its limit, not buffered for ever
        out = await _send_until_closed(server.port, b"GET / HTTP/1.1\r\nX-Endless: ", b"a" * 16384, 1 << 20)
        assert out.startswith(b"HTTP/1.1 431 ") and b"request_header_fields_too_large" in out
        assert seen == []

    run(scenario)


def test_a_head_that_comes_too_slowly_is_refused_408() -> None:
    async def main() -> None:
        server = Server(echo, Limits(head_timeout=0.2, idle_timeout=30))
        await server.start("127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n")  # and then nothing
        out = await asyncio.wait_for(reader.read(), 10)  # well before the 30 s idle timeout
        assert out.startswith(b"HTTP/1.1 408 ") and b"request_timeout" in out
        writer.close()
        await server.close(grace=0.1)

    asyncio.run(main())


def test_a_client_that_stops_reading_a_stream_is_cut_off_and_its_handler_released() -> None:
    released: list[str] = []

    async def endless(request: Request, responder: Responder) -> None:
        await responder.start(200, [("content-type", "text/plain")])
        try:
            while True:
                await responder.write(b"x" * 65536)
                await asyncio.sleep(0)  # as an engine's next token would: the loop turns, the write goes out
        except ConnectionResetError:
            released.append("released")  # where the gateway gives back its lease and reservation
            raise

    async def main() -> None:
        server = Server(endless, Limits(write_timeout=0.3))
        await server.start("127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, limit=1024)
        writer.write(b"GET /forever HTTP/1.1\r\nHost: h\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")  # the head, then this client reads nothing more
        async with asyncio.timeout(10):  # far beyond the 0.3 s write timeout; without one, never
            while not released:  # noqa: ASYNC110 (the handler's own list: no event to wait on)
                await asyncio.sleep(0.05)
        writer.close()
        await server.close(grace=0.1)

    asyncio.run(main())


@pytest.mark.parametrize(
    "value", ["a\r\nx-injected: 1", "a\nx-injected: 1", "/\u20ac"], ids=["crlf", "lf", "not-latin-1"]
)
def test_a_header_that_cannot_go_out_is_a_500_sent_at_once(value: str) -> None:
    async def handler(request: Request, responder: Responder) -> None:
        await responder.send(303, b"", [("location", value)])

    async def main() -> None:
        server = Server(handler, Limits(idle_timeout=30))
        await server.start("127.0.0.1", 0)
        out = await asyncio.wait_for(raw(server.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"), 10)
        assert out.startswith(b"HTTP/1.1 500 ") and b"x-injected" not in out
        await server.close(grace=0.1)

    asyncio.run(main())


def test_a_request_before_garbage_is_answered_before_the_400() -> None:
    async def scenario(server: Server, seen: list[Request]) -> None:
        out = await raw(server.port, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nNOT HTTP AT ALL\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200 ") and b"GET /a? 0" in out
        assert b"HTTP/1.1 400 " in out and out.index(b"HTTP/1.1 400 ") > out.index(b"GET /a? 0")

    run(scenario)


def test_100_continue_never_overtakes_an_earlier_response() -> None:
    async def scenario(server: Server, seen: list[Request]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"GET /trickle HTTP/1.1\r\nHost: h\r\n\r\n"
            b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        first = await reader.readuntil(b"\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 200 ")  # the streamed answer to the first request, not 100 Continue
        writer.write(b"abc")  # a client that got no 100 sends its body after a short wait
        rest = await reader.read()
        assert b"100 Continue" not in first + rest and b"POST /x? 3" in rest
        writer.close()

    run(scenario)


def test_the_client_reads_a_body_far_larger_than_its_read_ahead_and_refuses_one_past_its_limit() -> None:
    big = bytes(range(256)) * (20 * 4096)  # 20 MiB, every byte value, so a lost or reordered piece shows

    async def handler(request: Request, responder: Responder) -> None:
        if request.path == "/big":
            await responder.send(200, big, [("content-type", "application/octet-stream")])
        else:  # one line that never ends, streamed
            await responder.start(200, [("content-type", "text/plain")])
            for _ in range(64):
                await responder.write(b"y" * 65536)
            await responder.end()

    async def main() -> None:
        server = Server(handler)
        await server.start("127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.port}"
        async with asyncio.timeout(60):  # a client that stops reading at its buffer would hang here
            upstream = Upstream(url, connect_timeout=5)
            async with await upstream.request("GET", "/big") as response:
                assert await response.read() == big
            upstream.close()
            small = Upstream(url, connect_timeout=5, max_response=1 << 20)
            with pytest.raises(ResponseTooLarge, match="longer than 1048576 bytes"):
                await (await small.request("GET", "/big")).read()
            with pytest.raises(ResponseTooLarge):
                async for _ in (await small.request("GET", "/line")).lines():
                    pass
            small.close()
        await server.close(grace=0.1)

    asyncio.run(main())


async def _open(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


def test_connections_per_client_are_capped_and_another_address_is_still_served() -> None:
    async def main() -> None:
        server = Server(echo, Limits(max_per_client=3, max_connections=100, idle_timeout=30))
        await server.start("127.0.0.1", 0)
        idle = [await _open(server.port, "127.0.0.2") for _ in range(3)]
        reader, writer = await _open(server.port, "127.0.0.2")  # the fourth from one address
        writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        out = await asyncio.wait_for(reader.read(), 10)
        assert out.startswith(b"HTTP/1.1 429 ") and b"too_many_connections" in out and b"retry-after: 1" in out
        writer.close()
        # another address is served while the first holds its three
        reader, writer = await _open(server.port, "127.0.0.3")
        writer.write(b"GET /other HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 200 ")
        writer.close()
        # one of the three leaves: its address may open one again
        idle.pop()[1].close()
        async with asyncio.timeout(10):
            while server.per_client.get("127.0.0.2") != 2:  # noqa: ASYNC110 (the server's count: no event)
                await asyncio.sleep(0.01)
        reader, writer = await _open(server.port, "127.0.0.2")
        writer.write(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 200 ")
        for _, w in [*idle, (reader, writer)]:
            w.close()
        await server.close(grace=0.1)

    asyncio.run(main())


def test_nginx_on_this_machine_is_not_capped_per_client_but_counts_toward_the_total() -> None:
    async def main() -> None:
        server = Server(echo, Limits(max_per_client=2, max_connections=5, idle_timeout=30))
        await server.start("127.0.0.1", 0)
        local = [await _open(server.port, "127.0.0.1") for _ in range(5)]  # over the per-client cap: fine
        async with asyncio.timeout(10):
            while len(server.connections) < 5:  # noqa: ASYNC110 (the server's count: no event)
                await asyncio.sleep(0.01)
        reader, writer = await _open(server.port, "127.0.0.4")
        out = await asyncio.wait_for(reader.read(), 10)  # refused at once, before it sends anything
        assert out.startswith(b"HTTP/1.1 503 ") and b"too_many_connections" in out
        writer.close()
        reader, writer = local[0]
        writer.write(b"GET /still HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 200 ")
        for _, w in local:
            w.close()
        await server.close(grace=0.1)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("address", "key"),
    [("192.0.2.7", "192.0.2.7"), ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"), ("fe80::1%eth0", "fe80::/64")],
)
def test_a_client_is_counted_by_its_address_or_its_ipv6_64(address: str, key: str) -> None:
    from ark.wire.server import client_key

    assert client_key(address) == key


def test_head_is_answered_with_the_head_alone_and_the_next_request_still_parses() -> None:
    async def scenario(server: Server, seen: list[Request]) -> None:
        out = await raw(
            server.port,
            b"HEAD /a HTTP/1.1\r\nHost: h\r\n\r\nHEAD /stream HTTP/1.1\r\nHost: h\r\n\r\n"
            b"GET /b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        )
        first, second, third = out.split(b"HTTP/1.1 200 OK")[1:]
        assert first.endswith(b"\r\n\r\n") and b"content-length: 10\r\n" in first  # what GET would say: "HEAD /a? 0"
        assert second.endswith(b"\r\n\r\n") and b"transfer-encoding: chunked" in second and b"line" not in second
        assert third.endswith(b"GET /b? 0")

    run(scenario)


def test_a_pipelining_client_that_reads_nothing_is_cut_off_not_buffered_for() -> None:
    answered: list[int] = []

    async def big(request: Request, responder: Responder) -> None:
        answered.append(1)
        await responder.send(200, b"x" * 65536, [("content-type", "text/plain")])

    async def main() -> None:
        server = Server(big, Limits(write_timeout=0.3, idle_timeout=30))
        await server.start("127.0.0.1", 0)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        many = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" * 2000  # 128 MiB of answers, were they all made
        with contextlib.suppress(OSError):
            await asyncio.wait_for(asyncio.get_running_loop().sock_sendall(sock, many), 10)
        async with asyncio.timeout(10):  # cut off after the write timeout; without one, never
            while server.connections:  # noqa: ASYNC110 (the server's set: no event to wait on)
                await asyncio.sleep(0.05)
        assert len(answered) < 100  # reading stopped while answers waited: a bounded buffer
        sock.close()
        await server.close(grace=0.1)

    asyncio.run(main())


def test_a_refusal_never_lands_inside_the_stream_before_it() -> None:
    async def scenario(server: Server, seen: list[Request]) -> None:
        out = await raw(server.port, b"GET /stream HTTP/1.1\r\nHost: h\r\n\r\nNOT HTTP AT ALL\r\n\r\n")
        assert out.index(b"HTTP/1.1 400 ") > out.index(b"line 2\n\r\n0\r\n\r\n")  # after the stream's last chunk

    run(scenario)


def test_refused_connections_linger_only_a_bounded_few_at_once() -> None:
    async def main() -> None:
        server = Server(echo, Limits(max_connections=50, max_per_client=10, idle_timeout=30))
        await server.start("127.0.0.1", 0)
        held = [await _open(server.port, "127.0.0.2") for _ in range(200)]  # 190 refused, none reading
        async with asyncio.timeout(10):
            while len(server.connections) < 10:  # noqa: ASYNC110 (the server's set: no event to wait on)
                await asyncio.sleep(0.01)
        assert server.max_lingering == 16 and server.lingering <= 16
        for _, writer in held:
            writer.close()
        await server.close(grace=0.1)

    asyncio.run(main())


def test_a_connection_that_never_sends_a_byte_is_closed_without_an_answer() -> None:
    async def main() -> None:
        server = Server(echo, Limits(head_timeout=0.2, idle_timeout=30))
        await server.start("127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed after the head timeout, no 408
        writer.close()
        await server.close(grace=0.1)

    asyncio.run(main())
