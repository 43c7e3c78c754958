"""Lean HTTP/1.1 on asyncio.Protocol + httptools: the gateway's server and its upstream client.

Model downloads (ark.engines.pull) use aiohttp instead: they need redirects and resumable ranges.
"""

from __future__ import annotations

from ark.wire.client import (
    ConnectError,
    ConnectionClosed,
    ConnectTimeout,
    ProtocolError,
    Response,
    ResponseTooLarge,
    Upstream,
)
from ark.wire.router import RouteError, Router
from ark.wire.server import Limits, Request, Responder, Server

__all__ = [
    "ConnectError",
    "ConnectTimeout",
    "ConnectionClosed",
    "Limits",
    "ProtocolError",
    "Request",
    "Responder",
    "Response",
    "ResponseTooLarge",
    "RouteError",
    "Router",
    "Server",
    "Upstream",
]
