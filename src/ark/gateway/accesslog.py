"""One JSON line per API request: who, which model, outcome, tokens, latency. Never the prompt
unless ``[gateway] log_prompts`` is on.

Lines are buffered and written at most every ``FLUSH_S`` (or per 64 KiB): the access log is for
reading, and saving a system call per request matters on the hot path. What must survive a crash is
the usage ledger, which has its own journal written before each response ends.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, BinaryIO

import orjson

FLUSH_S = 0.5
_MAX_BUFFER = 64 * 1024


class AccessLog:
    def __init__(self, target: str, logs_dir: Path) -> None:
        self._file: BinaryIO | None
        self._owned = False
        self._buffer: list[bytes] = []
        self._buffered = 0
        if target == "off":
            self._file = None
        elif target == "-":
            self._file = sys.stdout.buffer
        else:
            path = Path(target) if target else logs_dir / "access.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._file = os.fdopen(fd, "ab", buffering=0)  # whole lines per write: none split by a crash
            self._owned = True

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        line = orjson.dumps(record) + b"\n"
        self._buffer.append(line)
        self._buffered += len(line)
        if self._buffered >= _MAX_BUFFER:
            self.flush()

    def flush(self) -> None:
        if self._file is not None and self._buffer:
            self._file.write(b"".join(self._buffer))
            if not self._owned:
                self._file.flush()
        self._buffer.clear()
        self._buffered = 0

    def close(self) -> None:
        self.flush()
        if self._file is not None and self._owned:
            self._file.close()
        self._file = None
