"""A small real HTTP file server for download tests.

Serves in-memory files at ``/files/{name}`` with Content-Length, a strong ETag
and single-range support (206/416, If-Range), redirects ``/redirect/{name}``
there, answers 404 for unknown names, and has switches to ignore Range headers
and to drop the connection part-way through the next response.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from types import TracebackType

from aiohttp import web

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


@dataclass(frozen=True)
class SeenRequest:
    """What the server was asked for, for assertions."""

    path: str
    range: str | None
    if_range: str | None


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:16] + '"'


class FileServer:
    """``async with FileServer() as server: url = server.add("m.gguf", data)``."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.ignore_range = False
        # One-shot: the next file response closes the connection after this many body bytes.
        self.drop_after: int | None = None
        self.requests: list[SeenRequest] = []
        self.port = 0
        app = web.Application()
        app.router.add_get("/files/{name}", self._serve_file)
        app.router.add_get("/redirect/{name}", self._redirect)
        self._runner = web.AppRunner(app, access_log=None)

    def add(self, name: str, body: bytes) -> str:
        self.files[name] = body
        return self.url(f"/files/{name}")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def __aenter__(self) -> FileServer:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._runner.cleanup()

    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        raise web.HTTPFound(f"/files/{request.match_info['name']}")

    async def _serve_file(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        body = self.files.get(request.match_info["name"])
        if body is None:
            raise web.HTTPNotFound()
        etag = etag_of(body)
        span = self._requested_span(request, etag, len(body))
        if span is None:
            return await self._send(request, 200, body, {"ETag": etag})
        start, end = span
        if start >= len(body):
            return web.Response(status=416, headers={"Content-Range": f"bytes */{len(body)}"})
        headers = {"ETag": etag, "Content-Range": f"bytes {start}-{end - 1}/{len(body)}"}
        return await self._send(request, 206, body[start:end], headers)

    def _record(self, request: web.Request) -> None:
        seen = SeenRequest(request.path, request.headers.get("Range"), request.headers.get("If-Range"))
        self.requests.append(seen)

    def _requested_span(self, request: web.Request, etag: str, size: int) -> tuple[int, int] | None:
        """The [start, end) byte span asked for, or None to send the whole file."""
        match = _RANGE.fullmatch(request.headers.get("Range", ""))
        if self.ignore_range or match is None:
            return None
        if_range = request.headers.get("If-Range")
        if if_range is not None and if_range != etag:
            return None
        end = int(match[2]) + 1 if match[2] else size
        return int(match[1]), min(end, size)

    async def _send(
        self, request: web.Request, status: int, payload: bytes, headers: dict[str, str]
    ) -> web.StreamResponse:
        headers |= {
            "Accept-Ranges": "bytes",
            "Content-Length": str(len(payload)),
            "Content-Type": "application/octet-stream",
        }
        resp = web.StreamResponse(status=status, headers=headers)
        await resp.prepare(request)
        cut, self.drop_after = self.drop_after, None
        if cut is None:
            await resp.write(payload)
            await resp.write_eof()
            return resp
        await resp.write(payload[:cut])
        assert request.transport is not None
        request.transport.close()
        return resp
