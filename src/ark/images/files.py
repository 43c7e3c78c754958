"""Generated images kept for ``response_format=url``: files under DATA/images, each served only through a
signed URL that expires, and deleted after the retention time.

A file's name is 32 random hex digits and ``.png``; its URL carries ``expires`` (Unix seconds) and ``sig``,
an HMAC-SHA256 of name and expiry with a key derived from DATA/auth.key. Serving checks the name's shape
first (no path, no dot-dot, nothing but what ARK writes), then the signature (in constant time), then the
expiry, then opens the one file: there is no listing and nothing else to reach.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

_NAME = re.compile(r"[0-9a-f]{32}\.png")
_EXPIRES = re.compile(r"[0-9]{1,12}")  # ASCII digits: str.isdigit() takes "²", which int() refuses
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
PATH = "/v1/images/files/"


@dataclass(frozen=True)
class Verdict:
    path: Path | None  # the file to send, when the URL is good
    status: int  # 200, 403 (bad signature or expired) or 404
    why: str = ""


class ImageFiles:
    def __init__(self, folder: Path, secret: bytes, ttl_s: int, retention_s: float) -> None:
        self.folder, self.ttl_s, self.retention_s = folder, ttl_s, retention_s
        self._key = hmac.new(secret, b"ark images: signed URLs", hashlib.sha256).digest()

    def save(self, data: bytes) -> str:
        """Write one image (atomically, owner-only) and return its name."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = secrets.token_hex(16) + ".png"
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, self.folder / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return name

    def url(self, base: str, name: str, now: float) -> str:
        """The signed URL of ``name`` under ``base`` (scheme and host), valid ``ttl_s`` from ``now``."""
        expires = int(now) + self.ttl_s
        return f"{base}{PATH}{name}?expires={expires}&sig={self._sign(name, expires)}"

    def check(self, name: str, query: dict[str, str], now: float) -> Verdict:
        if not _NAME.fullmatch(name):
            return Verdict(None, 404, "no such image")
        expires, sig = query.get("expires", ""), query.get("sig", "")
        if not _EXPIRES.fullmatch(expires) or not hmac.compare_digest(
            self._sign(name, int(expires)).encode(), sig.encode()
        ):
            return Verdict(None, 403, "this image URL is not signed by this ARK")
        if int(expires) <= now:
            return Verdict(None, 403, "this image URL has expired")
        path = self.folder / name
        if not path.is_file():
            return Verdict(None, 404, "this image is gone (images are kept for [images] retention_hours)")
        return Verdict(path, 200)

    def prune(self, now: float) -> int:
        """Delete the images older than the retention time (and parts left by a crash); returns how many."""
        deleted = 0
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return 0
        for entry in entries:
            if not (_NAME.fullmatch(entry.name) or entry.name.startswith(".part-")) or not entry.is_file():
                continue
            if now - entry.stat().st_mtime > self.retention_s:
                Path(entry.path).unlink(missing_ok=True)
                deleted += 1
        return deleted

    def _sign(self, name: str, expires: int) -> str:
        return hmac.new(self._key, f"{name}:{expires}".encode(), hashlib.sha256).hexdigest()[:32]


def base_url(host: str | None, forwarded_proto: str | None, fallback: str) -> str:
    """Scheme and host of the URLs handed out: as the client reached ARK (Nginx's Host and
    X-Forwarded-Proto), or the gateway's own address when the Host header is missing or malformed."""
    if host is None or not _HOST.fullmatch(host):
        return fallback
    scheme = "https" if (forwarded_proto or "").strip().lower() == "https" else "http"
    return f"{scheme}://{host}"
