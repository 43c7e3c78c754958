"""One HTTP client per upstream engine, and the one place where transport errors become ARK's."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson

from ark.config import EngineSettings
from ark.errors import ApiError, InvalidRequest, ModelNotFound, QueueFull, UpstreamError, UpstreamTimeout
from ark.wire import ConnectError, ConnectionClosed, ConnectTimeout, ProtocolError, ResponseTooLarge, Upstream
from ark.wire.client import MAX_RESPONSE


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a client connects when no engine settings say: ComfyUI, or a driver given a URL alone."""

    name: str
    url: str
    connect_timeout: float = 5.0  # the engines' default
    max_parallel: int = 8
    max_response_bytes: int = MAX_RESPONSE


def make_upstream(settings: EngineSettings | Endpoint, headers: Mapping[str, str] | None = None) -> Upstream:
    # Only the connect phase is bounded here; first-token and total deadlines are the
    # gateway's, so that they apply to every engine alike.
    return Upstream(
        settings.url,
        connect_timeout=settings.connect_timeout,
        headers=headers,
        max_idle=settings.max_parallel,
        max_response=settings.max_response_bytes,
    )


@asynccontextmanager
async def upstream_errors(engine: str, url: str) -> AsyncIterator[None]:
    """Translate transport failures into ARK errors that name the engine and its URL."""
    try:
        yield
    except ApiError:
        raise
    except ConnectTimeout as exc:
        raise UpstreamTimeout(f"Engine '{engine}' at {url}: {exc}") from exc
    except ConnectError as exc:
        raise UpstreamError(f"Engine '{engine}' is unreachable at {url}: {exc}") from exc
    except ConnectionClosed as exc:
        raise UpstreamError(f"Engine '{engine}' closed the connection before the response was complete") from exc
    except ResponseTooLarge as exc:
        raise UpstreamError(f"Engine '{engine}': {exc} ([engines.{engine}] max_response_bytes)") from exc
    except ProtocolError as exc:
        raise UpstreamError(f"Engine '{engine}' sent an invalid response: {exc}") from exc
    except OSError as exc:
        raise UpstreamError(f"Engine '{engine}' failed: {exc}") from exc
    except orjson.JSONDecodeError as exc:
        raise UpstreamError(f"Engine '{engine}' sent a response that is not JSON") from exc


def upstream_status_error(engine: str, status: int, body: bytes, model: str | None = None) -> ApiError:
    """Map a non-2xx answer of an engine to the error the client should see."""
    message = _error_message(body) or f"HTTP {status}"
    if status == 404 and model is not None and "not found" in message.lower():
        return ModelNotFound(model)
    if status in (400, 413, 422):
        return InvalidRequest(f"Engine '{engine}' rejected the request: {message}")
    if status == 429:
        return QueueFull(f"Engine '{engine}' is overloaded: {message}", retry_after=1.0)
    if status in (401, 403):
        return UpstreamError(f"Engine '{engine}' refused ARK's credentials (HTTP {status}): {message}")
    return UpstreamError(f"Engine '{engine}' failed with HTTP {status}: {message}")


def _error_message(body: bytes) -> str:
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:300].decode("utf-8", "replace").strip()
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error or data)[:300]


class JsonUpstream:
    """JSON over HTTP to one engine: requests, answers and errors in ARK's terms.

    The one client of its engine: the GPU arbiter's driver of an Ollama engine talks through it too
    (``call``, which leaves the status to the caller)."""

    def __init__(
        self,
        settings: EngineSettings | Endpoint,
        headers: Mapping[str, str] | None = None,
        upstream: Upstream | None = None,
    ) -> None:
        self.engine = settings.name
        self.base_url = settings.url
        self._settings = settings
        self._headers = headers
        self._upstream = upstream

    @property
    def upstream(self) -> Upstream:
        if self._upstream is None:  # created on first use: inside the running event loop
            self._upstream = make_upstream(self._settings, self._headers)
        return self._upstream

    def close(self) -> None:
        if self._upstream is not None:
            self._upstream.close()

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        """One request and its whole answer, whatever the status."""
        async with upstream_errors(self.engine, self.base_url + path):
            response = await self.upstream.request(method, path, None if body is None else orjson.dumps(body))
            async with response:  # a read cut short (cancelled) closes the connection instead of pooling it
                return response.status, await response.read()

    async def get(self, path: str) -> Any:
        return await self._json("GET", path, None, None)

    async def post(self, path: str, body: Any, model: str) -> Any:
        return await self._json("POST", path, body, model)

    async def _json(self, method: str, path: str, body: Any, model: str | None) -> Any:
        status, raw = await self.call(method, path, body)
        if status != 200:
            raise upstream_status_error(self.engine, status, raw, model)
        async with upstream_errors(self.engine, self.base_url + path):
            return orjson.loads(raw)

    async def post_lines(self, path: str, body: Any, model: str) -> AsyncIterator[bytes]:
        """POST, then the response body line by line as it arrives (SSE, NDJSON)."""
        async with upstream_errors(self.engine, self.base_url + path):
            response = await self.upstream.request("POST", path, orjson.dumps(body))
            async with response:
                if response.status != 200:
                    raise upstream_status_error(self.engine, response.status, await response.read(), model)
                async for line in response.lines():
                    yield line
