"""One JSON line per API request: who, which model, outcome, tokens, latency. Never the prompt
unless ``[gateway] log_prompts`` is on."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, BinaryIO

import orjson


class AccessLog:
    def __init__(self, target: str, logs_dir: Path) -> None:
        self._file: BinaryIO | None
        self._owned = False
        if target == "off":
            self._file = None
        elif target == "-":
            self._file = sys.stdout.buffer
        else:
            path = Path(target) if target else logs_dir / "access.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._file = os.fdopen(fd, "ab", buffering=0)  # one write per line: no line split by a crash
            self._owned = True
        self.path = None if target in ("off", "-") else (Path(target) if target else logs_dir / "access.jsonl")

    def write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(orjson.dumps(record) + b"\n")

    def close(self) -> None:
        if self._file is not None and self._owned:
            self._file.close()
        self._file = None
