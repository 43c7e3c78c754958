"""Lean HTTP/1.1 on asyncio.Protocol + httptools: the gateway's server and its upstream client.

Only the hot path lives here; everything else (model downloads, status probes) uses aiohttp.
"""

from __future__ import annotations

from ark.wire.client import ConnectError, ConnectionClosed, ProtocolError, Response, Upstream
from ark.wire.server import Limits, Request, Responder, Server

__all__ = [
    "ConnectError",
    "ConnectionClosed",
    "Limits",
    "ProtocolError",
    "Request",
    "Responder",
    "Response",
    "Server",
    "Upstream",
]
