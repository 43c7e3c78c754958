"""Time-based one-time passwords (RFC 6238 over RFC 4226 HOTP): HMAC-SHA1, 6 digits, 30 s steps.

These are the parameters every authenticator app supports; others (SHA-256, 8 digits) are ignored by
some apps, which then show wrong codes. A code is accepted one step early or late (clock drift) and
only once: the caller stores the step it was accepted for and refuses that step and earlier ones.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
from urllib.parse import quote, urlencode

DIGITS = 6
STEP_S = 30
DRIFT_STEPS = 1
SECRET_BYTES = 20  # 160 bits, RFC 4226's recommendation for HMAC-SHA1


def new_secret() -> str:
    """A fresh shared secret, base32 without padding (what otpauth:// URIs carry)."""
    return base64.b32encode(secrets.token_bytes(SECRET_BYTES)).decode().rstrip("=")


def _key(secret: str) -> bytes:
    padded = secret.upper() + "=" * (-len(secret) % 8)
    return base64.b32decode(padded)


def hotp(secret: str, counter: int) -> str:
    """RFC 4226: the code for one counter value."""
    digest = hmac.new(_key(secret), struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    number = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(number % 10**DIGITS).zfill(DIGITS)


def step_at(now: float) -> int:
    return int(now // STEP_S)


def code_at(secret: str, now: float) -> str:
    """The code an authenticator shows at Unix time ``now``."""
    return hotp(secret, step_at(now))


def match(secret: str, code: str, now: float, last_step: int | None) -> int | None:
    """The step ``code`` is valid for (within the drift window, after ``last_step``), or None.

    Every candidate is compared in constant time and the loop does not stop early, so the answer
    takes the same time whichever step (if any) matched.
    """
    code = code.strip().replace(" ", "")
    if len(code) != DIGITS or not code.isascii() or not code.isdigit():
        return None
    found = None
    current = step_at(now)
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        if hmac.compare_digest(hotp(secret, step), code) and (last_step is None or step > last_step):
            found = step if found is None else found
    return found


def otpauth_uri(secret: str, account: str, issuer: str) -> str:
    """The ``otpauth://totp/...`` URI that authenticator apps read from a QR code."""
    label = quote(f"{issuer}:{account}", safe="")
    query = urlencode(
        {"secret": secret, "issuer": issuer, "algorithm": "SHA1", "digits": DIGITS, "period": STEP_S}, quote_via=quote
    )
    return f"otpauth://totp/{label}?{query}"
