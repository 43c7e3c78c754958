"""Checked reading of the JSON objects of a workload file: every key read once, its type and range
checked, unknown keys refused, and every problem a :class:`WorkloadError` that names the line."""

from __future__ import annotations

import json
import math
from typing import Any

from ark.errors import ArkError


class WorkloadError(ArkError):
    """The workload file is not valid; the message names the line."""


MISSING: Any = object()


class Fields:
    """The keys of one JSON object, each read once with its type checked; ``done()`` refuses the rest."""

    def __init__(self, obj: dict[str, Any], number: int, prefix: str) -> None:
        self.obj, self.line, self.prefix, self.seen = obj, number, prefix, set[str]()

    @classmethod
    def nested(cls, raw: Any, number: int, prefix: str) -> Fields:
        if not isinstance(raw, dict):
            raise WorkloadError(f"line {number}: {prefix} must be a JSON object, got {show(raw)}")
        return cls(raw, number, prefix + ".")

    def error(self, key: str, value: Any, expected: str) -> WorkloadError:
        return WorkloadError(f'line {self.line}: "{self.prefix}{key}" must be {expected}, got {show(value)}')

    def value(self, key: str, default: Any = MISSING) -> Any:
        self.seen.add(key)
        if key in self.obj:
            return self.obj[key]
        if default is MISSING:
            raise WorkloadError(f'line {self.line}: "{self.prefix}{key}" is missing')
        return default

    def number(self, key: str, *, lo: float, hi: float, open_lo: bool = False, default: float | None = None) -> float:
        value = self.value(key, MISSING if default is None else default)
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value > hi or value < lo or (open_lo and value == lo):
            raise self.error(key, value, f"a number {'>' if open_lo else '>='} {lo:g} and <= {hi:g}")
        return float(value)

    def whole(self, key: str, *, hi: int, lo: int = 0, default: int | None = None) -> int:
        value = self.value(key, MISSING if default is None else default)
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise self.error(key, value, f"a whole number from {lo} to {hi}")
        return value

    def text(self, key: str) -> str:
        value = self.value(key)
        if not isinstance(value, str) or not is_name(value):
            raise self.error(key, value, "a non-empty string of printable characters")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.value(key, default)
        if not isinstance(value, bool):
            raise self.error(key, value, "true or false")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.value(key, default)
        if value not in choices:
            raise self.error(key, value, " or ".join(f'"{c}"' for c in choices))
        return str(value)

    def table(self, key: str) -> Fields:
        return Fields.nested(self.value(key), self.line, self.prefix + key)

    def mapping(self, key: str) -> dict[str, Any]:
        value = self.value(key)
        if not isinstance(value, dict):
            raise self.error(key, value, "a JSON object")
        return value

    def done(self) -> None:
        unknown = sorted(set(self.obj) - self.seen)
        if unknown:
            raise WorkloadError(f'line {self.line}: unknown key "{self.prefix}{clip(unknown[0])}"')


def is_name(text: str) -> bool:
    """A name that prints anywhere: printable, valid UTF-8 (no lone surrogates), at most 200 characters."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return 0 < len(text) <= 200 and text.isprintable() and bool(text.strip())


def show(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, str | int | float | bool) or value is None else type(value).__name__
    return clip(text)


def clip(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."
