"""Value types of settings: each parses a TOML or environment value, or says what it expected.

A type's ``parse`` raises ``ValueError`` whose message is the *expectation*
("an integer between 1 and 65535"); the loader adds where the value came from.
Environment values are always strings, so every type also accepts its text form.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T", covariant=True)  # a Type[dict[str, str]] declares a Mapping[str, str] setting
U = TypeVar("U")


@dataclass(frozen=True)
class Secret:
    """A string that never shows itself in logs, reprs or tracebacks."""

    value: str

    def __repr__(self) -> str:
        return "Secret('**********')" if self.value else "Secret('')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self.value)

    def prefix(self) -> str:
        """A recognisable, harmless prefix (``sk-ark-ab12…``) for logs and status."""
        return self.value[:11] + "…" if self.value else ""


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    def local(self) -> str:
        """host:port to reach this listener on this machine (a wildcard address is reached on loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


class Type(Generic[T]):
    """A setting's type: parses a value and describes itself in errors and docs."""

    expected = "a value"

    def parse(self, value: Any) -> T:
        raise NotImplementedError

    def fail(self) -> ValueError:
        return ValueError(self.expected)

    def within(self, parse: Callable[[Any], U], part: Any) -> U:
        """``parse(part)`` for a part of this type's value (a port, an address), failing as this type."""
        try:
            return parse(part)
        except ValueError:
            raise self.fail() from None


class Str(Type[str]):
    expected = "a string"

    def __init__(self, *, non_empty: bool = False) -> None:
        self.non_empty = non_empty
        if non_empty:
            self.expected = "a non-empty string"

    def parse(self, value: Any) -> str:
        if not isinstance(value, str) or (self.non_empty and not value.strip()):
            raise self.fail()
        return value


class SecretStr(Type[Secret]):
    expected = "a string of at least 16 characters"

    def __init__(self, *, min_length: int = 16, allow_empty: bool = True) -> None:
        self.min_length = min_length
        self.allow_empty = allow_empty
        self.expected = f"a string of at least {min_length} characters" + (" (or empty)" if allow_empty else "")

    def parse(self, value: Any) -> Secret:
        if not isinstance(value, str):
            raise self.fail()
        if value == "" and self.allow_empty:
            return Secret("")
        if len(value) < self.min_length or any(c.isspace() for c in value):
            raise self.fail()
        return Secret(value)


class Int(Type[int]):
    def __init__(self, lo: int | None = None, hi: int | None = None) -> None:
        self.lo, self.hi = lo, hi
        if lo is not None and hi is not None:
            self.expected = f"an integer between {lo} and {hi}"
        elif lo is not None:
            self.expected = f"an integer >= {lo}"
        else:
            self.expected = "an integer"

    def parse(self, value: Any) -> int:
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise self.fail() from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail()
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise self.fail()
        return value


PORT = Int(1, 65535)  # every port: the ones that are a setting and the ones inside one (host:port, lists)


class Float(Type[float]):
    def __init__(self, lo: float | None = None, *, exclusive: bool = False, hi: float | None = None) -> None:
        self.lo, self.exclusive, self.hi = lo, exclusive, hi
        if lo is None:
            self.expected = "a number"
        else:
            self.expected = f"a number {'>' if exclusive else '>='} {lo:g}"
        if hi is not None:
            self.expected += f" and <= {hi:g}"

    def parse(self, value: Any) -> float:
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise self.fail() from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail()
        number = float(value)
        if number != number or number in (float("inf"), float("-inf")):
            raise self.fail()
        if self.lo is not None and (number <= self.lo if self.exclusive else number < self.lo):
            raise self.fail()
        if self.hi is not None and number > self.hi:
            raise self.fail()
        return number


class Bool(Type[bool]):
    expected = "true or false"
    _TEXT = {
        "true": True,
        "1": True,
        "yes": True,
        "on": True,
        "false": False,
        "0": False,
        "no": False,
        "off": False,
    }

    def parse(self, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in self._TEXT:
            return self._TEXT[value.strip().lower()]
        raise self.fail()


class Choice(Type[str]):
    def __init__(self, *choices: str) -> None:
        self.choices = choices
        self.expected = "one of " + ", ".join(f'"{c}"' for c in choices)

    def parse(self, value: Any) -> str:
        if not isinstance(value, str) or value not in self.choices:
            raise self.fail()
        return value


class HostPort(Type[Address]):
    expected = 'host:port with a port between 1 and 65535 (e.g. "127.0.0.1:4000")'

    def parse(self, value: Any) -> Address:
        if not isinstance(value, str):
            raise self.fail()
        host, sep, port_text = value.strip().rpartition(":")
        host = host.strip("[]")  # [::1]:4000
        if not sep or not host:
            raise self.fail()
        return Address(host, self.within(PORT.parse, port_text))


class Url(Type[str]):
    expected = 'an http(s) URL (e.g. "http://127.0.0.1:11434")'

    def __init__(self, *, allow_empty: bool = False) -> None:
        self.allow_empty = allow_empty
        if allow_empty:
            self.expected = 'an http(s) URL (e.g. "http://127.0.0.1:8188"), or empty'

    def parse(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail()
        if self.allow_empty and not value.strip():
            return ""
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self.fail()
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise self.fail() from None
        return value.strip().rstrip("/")


class PathType(Type[Path]):
    expected = "a file system path"

    def parse(self, value: Any) -> Path:
        if not isinstance(value, str) or "\x00" in value:
            raise self.fail()
        return Path(value).expanduser()


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "ki": 1024, "mi": 1024**2, "gi": 1024**3}


class ByteSize(Type[int]):
    expected = 'a size in bytes (an integer, or text such as "512KiB", "4MiB", "1GB")'

    def parse(self, value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        if not isinstance(value, str) or not (match := _SIZE.match(value)):
            raise self.fail()
        unit = (match.group(2) or "").lower().removesuffix("b")
        size = int(float(match.group(1)) * _UNITS[unit])
        if size <= 0:
            raise self.fail()
        return size


_DURATION = re.compile(r"^(-?\d+(?:\.\d+)?)(ms|s|m|h)?$")


class KeepAlive(Type[str]):
    """Ollama's keep_alive: a duration ("5m", "30s", "1h"), 0 (unload now) or negative (forever)."""

    expected = 'a duration such as "5m", "30s", "1h", "0" (unload at once) or "-1" (keep loaded)'

    def parse(self, value: Any) -> str:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str) or not (value.strip() == "" or _DURATION.match(value.strip())):
            raise self.fail()
        return value.strip()


class DatabaseUrl(Type[str]):
    """Empty (SQLite in the data directory), sqlite:///PATH or postgresql://USER:PASS@HOST:PORT/DB."""

    expected = 'empty, "sqlite:///PATH" or "postgresql://user:password@host:port/database"'

    def parse(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail()
        url = value.strip()
        if url and urlsplit(url).scheme not in ("sqlite", "postgresql", "postgresql+psycopg", "postgres"):
            raise self.fail()
        return url
