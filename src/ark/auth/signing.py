"""The secret that signs session cookies, CSRF tokens and identity tokens, and the signing itself.

One 256-bit random secret is generated once, at the first start, and kept in ``DATA/auth.key`` (mode
0600; a file others may read is refused). Nothing about it can be guessed from the configuration,
the host or the time. Each use gets its own key derived from it (HMAC with a label), so that a value
signed for one purpose is never valid for another: a session cookie is not an identity token.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from ark.errors import AuthError

SECRET_FILE = "auth.key"  # noqa: S105 - a file name, not a secret
_SECRET_BYTES = 32


class SecretFileError(AuthError):
    """DATA/auth.key cannot be read, is malformed, or others may read it."""


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    """Decode unpadded base64url; ValueError on anything else (never a partial decode)."""
    if not text or len(text) % 4 == 1 or not text.isascii():
        raise ValueError("not base64url")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except ValueError:
        raise ValueError("not base64url") from None


def load_secret(data_dir: Path) -> bytes:
    """The data directory's secret, created at the first call (atomically: two processes get the same)."""
    path = data_dir / SECRET_FILE
    if not path.exists():
        _create(path)
    try:
        info = path.stat()
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretFileError(f"{path}: cannot read the auth secret ({exc})") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretFileError(
            f"{path}: other users may read the auth secret (mode {stat.S_IMODE(info.st_mode):o}); "
            f"run `chmod 600 {path}`, or delete it to sign everyone out and make a new one"
        )
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) != _SECRET_BYTES:
        raise SecretFileError(f"{path}: not {_SECRET_BYTES * 2} hex digits; delete it to make a new one")
    return secret


def _create(path: Path) -> None:
    """Write a new secret under a temporary name, then link it into place: whoever links first wins."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_bytes(_SECRET_BYTES).hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def derive(secret: bytes, purpose: str) -> bytes:
    """A key for one purpose only ("session", "csrf", "identity")."""
    return hmac.new(secret, b"ark/auth/v1/" + purpose.encode(), hashlib.sha256).digest()


def mac(key: bytes, message: str) -> str:
    return b64(hmac.new(key, message.encode(), hashlib.sha256).digest())


def sign(key: bytes, value: str) -> str:
    """``value.signature``; value must not contain a dot."""
    return f"{value}.{mac(key, value)}"


def unsign(key: bytes, signed: str, max_length: int = 4096) -> str | None:
    """The value if the signature is right, else None (compared in constant time)."""
    if len(signed) > max_length:
        return None
    value, dot, signature = signed.rpartition(".")
    if not dot or not value:
        return None
    if not hmac.compare_digest(mac(key, value).encode(), signature.encode("ascii", "replace")):
        return None
    return value
