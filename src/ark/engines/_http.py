"""One HTTP client per upstream engine, and the one place where aiohttp's errors become ARK's."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from ark.config import EngineSettings
from ark.errors import ApiError, InvalidRequest, ModelNotFound, QueueFull, UpstreamError, UpstreamTimeout


def make_session(settings: EngineSettings, headers: Mapping[str, str] | None = None) -> aiohttp.ClientSession:
    # Only the connect phase is bounded here; first-token and total deadlines are the
    # gateway's (ark.gateway.deadlines), so that they apply to every engine alike.
    timeout = aiohttp.ClientTimeout(total=None, connect=settings.connect_timeout)
    connector = aiohttp.TCPConnector(limit=settings.max_parallel, keepalive_timeout=30, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        timeout=timeout,
        connector=connector,
        headers=dict(headers or {}),
        json_serialize=lambda obj: orjson.dumps(obj).decode(),
        auto_decompress=True,
    )


@asynccontextmanager
async def upstream_errors(engine: str, url: str) -> AsyncIterator[None]:
    """Translate transport failures into ARK errors that name the engine and its URL."""
    try:
        yield
    except ApiError:
        raise
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamError(f"Engine '{engine}' is unreachable at {url}: {exc.os_error.strerror or exc}") from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
        raise UpstreamError(f"Engine '{engine}' closed the connection before the response was complete") from exc
    except aiohttp.ServerTimeoutError as exc:
        raise UpstreamTimeout(f"Engine '{engine}' did not answer in time ({exc})") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamError(f"Engine '{engine}' failed: {type(exc).__name__}: {exc}") from exc
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
    if status == 401 or status == 403:
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
