"""What `ark services install` shares between services: where their environments go, how a step runs (its
output read as it comes, for a progress bar, and its end kept for the error), and the error it raises."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

from ark.config import Settings
from ark.errors import ArkError

Progress = Callable[[str, int, int | None], None]  # (what, done, total or None)


class InstallError(ArkError):
    """An install step failed; the message names the step and the end of its output."""


def services_dir(settings: Settings) -> Path:
    """Where each service's environment goes, one folder per pinned version ([chat] services_dir)."""
    configured = settings.chat.services_dir
    return Path(configured).expanduser() if configured else settings.data_dir / "services"


# What a step that runs others' install scripts (npm's) keeps of ARK's environment: no ARK_* secret
_KEPT = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "SSL_CERT_DIR")
_KEPT_PREFIXES = ("npm_config_", "NPM_CONFIG_", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy")


def run_step(
    step: str,
    argv: list[str],
    on_line: Callable[[str], None] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    *,
    inherit: bool = True,
) -> None:
    """Run one install step; raises :class:`InstallError` with the last lines of its output when it fails.
    ``inherit=False``: only the basics of ARK's environment (:data:`_KEPT`), then ``env``."""
    base = (
        dict(os.environ)
        if inherit
        else {k: v for k, v in os.environ.items() if k in _KEPT or k.startswith(_KEPT_PREFIXES)}
    )
    tail: list[str] = []
    try:
        process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**base, **(env or {})},
            cwd=cwd,
            bufsize=1,
        )
    except OSError as exc:
        raise InstallError(f"{step} failed: cannot run {argv[0]}: {exc.strerror}") from None
    with process:
        assert process.stdout is not None
        for line in process.stdout:
            tail = [*tail[-19:], line.rstrip()]
            if on_line is not None:
                on_line(line)
    if process.returncode != 0:
        raise InstallError(f"{step} failed (exit {process.returncode}):\n" + "\n".join(tail))
