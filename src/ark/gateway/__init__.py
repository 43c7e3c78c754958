"""The OpenAI-compatible API gateway (port 4000)."""

from __future__ import annotations

from ark.gateway.app import Gateway
from ark.gateway.server import serve

__all__ = ["Gateway", "serve"]
