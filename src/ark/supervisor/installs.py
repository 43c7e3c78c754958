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


def run_step(
    step: str,
    argv: list[str],
    on_line: Callable[[str], None] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> None:
    """Run one install step; raises :class:`InstallError` with the last lines of its output when it fails."""
    tail: list[str] = []
    try:
        process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
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
