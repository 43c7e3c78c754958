"""Gateway keys ARK makes for the services it runs (Open WebUI, n8n): one per service, kept in
``DATA/<service>.key`` (mode 0600, written through a fresh temporary file), made again when the store no
longer has it as a usable key (revoked, blocked, expired, or no longer trusted as the service needs)."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from ark.store import Store, key_id

log = logging.getLogger("ark.store")


def service_key(store: Store, data_dir: Path, service: str, *, trust_user_headers: bool = False) -> str:
    """The gateway key of ``service`` (also its alias and its file's name)."""
    path = data_dir / f"{service}.key"
    with contextlib.suppress(OSError, UnicodeDecodeError):
        secret = path.read_text(encoding="ascii").strip()
        key = store.keys.get_key(key_id(secret)) if secret else None
        if (
            key is not None
            and key.trust_user_headers == trust_user_headers
            and not key.blocked
            and not key.expired(datetime.now(UTC))
        ):
            return secret
    secret, _ = store.keys.create_key(
        {
            "key_alias": service,
            "trust_user_headers": trust_user_headers,
            "metadata": {"service": service, "made_by": "ark up"},
        }
    )
    fd, temporary = tempfile.mkstemp(dir=data_dir, prefix=f".{service}-key-")  # mode 0600, a fresh name
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(secret + "\n")
    os.replace(temporary, path)
    log.info("made %s's gateway key (%s…), kept in %s", service, secret[:11], path)
    return secret
