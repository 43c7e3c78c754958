"""Talk to the running gateway's management API with the master key (for `ark keys`, `ark teams`, `ark usage`)."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlencode

import orjson

from ark.config import Settings
from ark.errors import ArkError
from ark.wire import ConnectError, Upstream


class AdminError(ArkError):
    """The gateway could not be reached, or it refused the call (the message is its error message)."""


def call(
    settings: Settings,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    query: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Any:
    """One management call; returns the decoded JSON answer. ``timeout``: GPU actions (a load) take longer."""
    listen = settings.gateway.listen
    host = "127.0.0.1" if listen.host in ("0.0.0.0", "::") else listen.host
    base = f"http://{host}:{listen.port}"
    if not settings.master_key:
        raise AdminError("no master key configured: run `ark init` or set ARK_MASTER_KEY")

    async def run() -> tuple[int, bytes]:
        upstream = Upstream(base, connect_timeout=3, headers={"authorization": f"Bearer {settings.master_key.value}"})
        try:
            target = path + ("?" + urlencode(query) if query else "")
            response = await upstream.request(method, target, orjson.dumps(body) if body is not None else None)
            return response.status, await response.read()
        finally:
            upstream.close()

    try:
        status, raw = asyncio.run(asyncio.wait_for(run(), timeout))
    except ConnectError:
        raise AdminError(f"the gateway is not running at {base} (start it with `ark up`)") from None
    except TimeoutError:
        raise AdminError(f"the gateway at {base} did not answer in {timeout:g} s") from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise AdminError(f"the gateway answered HTTP {status} with something that is not JSON") from None
    if status != 200:
        error = data.get("error") if isinstance(data, dict) else None
        message = error.get("message") if isinstance(error, dict) else raw.decode(errors="replace")
        raise AdminError(f"{message} (HTTP {status})")
    return data
