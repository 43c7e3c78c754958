"""One JSON line per API request: who, which model, outcome, tokens, latency. Never the prompt
unless ``[gateway] log_prompts`` is on.

Lines are buffered and written at most every ``FLUSH_S`` (or per 64 KiB): the access log is for
reading, and saving a system call per request matters on the hot path. What must survive a crash is
the usage ledger, which has its own journal written before each response ends.

The file rotates by size: at ``max_bytes`` it becomes ``access.jsonl.1`` (the older ones move up, the
oldest beyond ``keep`` is deleted) and a fresh file starts. Several processes may share the file: one
that finds it already rotated by another only reopens it. Rotation by an outside tool (logrotate with
``copytruncate``, or a rename) also works: writes are appends, and a renamed file is noticed.
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
    def __init__(self, target: str, logs_dir: Path, max_bytes: int = 0, keep: int = 5) -> None:
        self._file: BinaryIO | None
        self._owned = False
        self._path: Path | None = None
        self._max_bytes, self._keep = max_bytes, keep
        self._buffer: list[bytes] = []
        self._buffered = 0
        if target == "off":
            self._file = None
        elif target == "-":
            self._file = sys.stdout.buffer
        else:
            self._path = Path(target) if target else logs_dir / "access.jsonl"
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self._open(self._path)
            self._owned = True

    @staticmethod
    def _open(path: Path) -> BinaryIO:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return os.fdopen(fd, "ab", buffering=0)  # whole lines per write: none split by a crash

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
            elif self._max_bytes:
                self._maybe_rotate()
        self._buffer.clear()
        self._buffered = 0

    def _maybe_rotate(self) -> None:
        assert self._file is not None and self._path is not None
        ours = os.fstat(self._file.fileno())
        try:
            current = os.stat(self._path)
        except FileNotFoundError:
            current = None
        if current is not None and (current.st_ino, current.st_dev) == (ours.st_ino, ours.st_dev):
            if ours.st_size < self._max_bytes:
                return
            self._shift()
        # rotated here, by another process or by an outside tool: continue in a fresh file
        self._file.close()
        self._file = self._open(self._path)

    def _shift(self) -> None:
        """access.jsonl -> .1 -> .2 ...; the one beyond ``keep`` is deleted."""
        assert self._path is not None
        name = self._path.name
        older = self._path.with_name(f"{name}.{self._keep}")
        older.unlink(missing_ok=True)
        for index in range(self._keep - 1, 0, -1):
            source = self._path.with_name(f"{name}.{index}")
            if source.exists():
                source.rename(self._path.with_name(f"{name}.{index + 1}"))
        if self._keep:
            self._path.rename(self._path.with_name(f"{name}.1"))
        else:
            self._path.unlink()

    def close(self) -> None:
        self.flush()
        if self._file is not None and self._owned:
            self._file.close()
        self._file = None
