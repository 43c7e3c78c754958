"""Signing a delivery as the Standard Webhooks specification says (standardwebhooks.com), so that any of
its verifying libraries, or twenty lines of code (docs/automation.md), can check it.

A delivery carries ``webhook-id`` (the same on every retry: a receiver drops duplicates by it),
``webhook-timestamp`` (Unix seconds when it was sent: a receiver refuses old ones) and
``webhook-signature``: ``v1,`` and the base64 HMAC-SHA256, keyed with the secret's bytes (``whsec_`` and
base64), of ``ID.TIMESTAMP.BODY``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from ark.config.events import SECRET_PREFIX


def new_secret() -> str:
    """A fresh signing secret: whsec_ and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str, msg_id: str, timestamp: int, body: bytes, event_type: str) -> dict[str, str]:
    """The headers of one delivery (``x-ark-event`` is a convenience for routing; it is not signed)."""
    return {
        "content-type": "application/json",
        "user-agent": "ARK-webhooks/1",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, msg_id, timestamp, body),
        "x-ark-event": event_type,
    }
