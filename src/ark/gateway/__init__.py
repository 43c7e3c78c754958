"""The OpenAI-compatible API gateway (port 4000)."""

from __future__ import annotations

from ark.gateway.app import GATEWAY, Gateway, create_app
from ark.gateway.server import serve

__all__ = ["GATEWAY", "Gateway", "create_app", "serve"]
