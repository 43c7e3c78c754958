"""The htpasswd file behind Prometheus's basic auth.

bcrypt, at a modest cost: Nginx checks the password on *every* request, inside
its event loop, so a cost of 12 (~0.3 s) would stall every connection of that
worker on each Prometheus page load. Cost 8 (~20 ms) is still far beyond apr1's
MD5. An existing line that still matches the password is kept as is, so
re-rendering does not rewrite the file with a fresh salt.
"""

from __future__ import annotations

import bcrypt

from ark.errors import ConfigError

BCRYPT_COST = 8


def htpasswd(user: str, password: str, existing: bytes | None) -> str:
    """``user:hash`` for a password, reusing the existing hash when it still verifies; empty: no user."""
    if not password:
        return "# no password set ([edge] prometheus_password): nobody can log in\n"
    secret = password.encode()
    if len(secret) > 72:
        raise ConfigError("[edge] prometheus_password: at most 72 bytes (bcrypt's limit)")
    for line in (existing or b"").decode(errors="replace").splitlines():
        name, _, hashed = line.partition(":")
        if name == user and hashed.startswith("$2") and _matches(secret, hashed.encode()):
            return f"{user}:{hashed}\n"
    return f"{user}:{bcrypt.hashpw(secret, bcrypt.gensalt(BCRYPT_COST)).decode()}\n"


def _matches(secret: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(secret, hashed)
    except ValueError:  # not a bcrypt hash after all
        return False
