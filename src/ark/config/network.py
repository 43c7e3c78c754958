"""Setting types for network values that end up inside Nginx, nftables and WireGuard files.

They are stricter than plain strings on purpose: a value is pasted into a
configuration language, so a stray ``;`` or ``}`` in a domain or a CIDR would
inject directives. Checking here means `ark config check` catches it before
anything is rendered.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, TypeVar

from ark.config.types import PORT, Type

T = TypeVar("T")

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def is_hostname(value: str) -> bool:
    """A DNS name of letters, digits and hyphens (no trailing dot, at most 253 characters)."""
    labels = value.split(".")
    return 0 < len(value) <= 253 and all(_LABEL.match(label) for label in labels)


class Hostname(Type[str]):
    """A DNS name such as ``example.org`` (lower-cased), or empty."""

    expected = 'a DNS name such as "example.org" (letters, digits, hyphens and dots), or empty'

    def parse(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail()
        name = value.strip().lower()
        if name and not is_hostname(name):
            raise self.fail()
        return name


def _network(text: str) -> str:
    return str(ipaddress.ip_network(text, strict=False))


def _address(text: str) -> str:
    return str(ipaddress.ip_address(text))


class _ItemList(Type[tuple[T, ...]]):
    """Comma-separated text or a TOML array; each non-empty item goes through ``item`` (ValueError: bad)."""

    def item(self, text: str) -> T:
        raise NotImplementedError

    def parse(self, value: Any) -> tuple[T, ...]:
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        if not isinstance(value, str):
            raise self.fail()
        return tuple(self.within(self.item, p.strip()) for p in value.split(",") if p.strip())


class Cidr(Type[str]):
    """An IPv4 or IPv6 network in CIDR notation, normalised (``10.8.0.0/24``)."""

    expected = 'a network in CIDR notation such as "10.8.0.0/24"'

    def parse(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail()
        return self.within(_network, value.strip())


class CidrList(_ItemList[str]):
    """Comma-separated CIDR networks (``"10.8.0.0/24, 192.168.1.0/24"``), or empty."""

    expected = 'comma-separated networks in CIDR notation such as "10.8.0.0/24, fd00::/64", or empty'

    def item(self, text: str) -> str:
        return _network(text)


class IpList(_ItemList[str]):
    """Comma-separated IP addresses (``"10.8.0.1, 1.1.1.1"``), or empty."""

    expected = 'comma-separated IP addresses such as "10.8.0.1, 1.1.1.1", or empty'

    def item(self, text: str) -> str:
        return _address(text)


class NameList(_ItemList[str]):
    """Comma-separated names (models, say) as a TOML array or text, or empty."""

    expected = 'names as an array ["llama3.2:3b", "sdxl"] or comma-separated text, or empty'

    def item(self, text: str) -> str:
        if len(text) > 256 or any(ord(c) < 32 or ord(c) == 127 for c in text):
            raise ValueError(f"{text[:40]!r} is not a name")
        return text


class PortList(_ItemList[int]):
    """Ports as a TOML array of integers or comma-separated text (``"8443, 9000"``), sorted, unique."""

    expected = 'ports between 1 and 65535: an array [8443, 9000] or text "8443, 9000", or empty'

    def item(self, text: str) -> int:
        return PORT.parse(text)

    def parse(self, value: Any) -> tuple[int, ...]:
        return tuple(sorted(set(super().parse(value))))


class NamedPorts(Type[dict[str, int]]):
    """``name=port`` pairs (``"chat=3000, grafana=3001"``) or a TOML table ``{ chat = 3000 }``."""

    expected = 'name=port pairs such as "chat=3000, grafana=3001" (or a table), ports between 1 and 65535'

    def parse(self, value: Any) -> dict[str, int]:
        if isinstance(value, str):
            pairs = [p.partition("=") for p in value.split(",") if p.strip()]
            if any(not sep for _, sep, _ in pairs):
                raise self.fail()
            value = {k.strip(): v.strip() for k, _, v in pairs}
        if not isinstance(value, dict):
            raise self.fail()
        if not all(_NAME.match(str(name)) for name in value):
            raise self.fail()
        return {str(name): self.within(PORT.parse, port) for name, port in value.items()}


class Word(Type[str]):
    """A name pasted into configuration files: a Unix user, an interface (letters, digits, ``_.-``)."""

    expected = "a name of letters, digits, '_', '.' or '-' (at most 32 characters)"

    def __init__(self, *, allow_empty: bool = False, max_length: int = 32) -> None:
        self.allow_empty = allow_empty
        self.max_length = max_length
        self.expected = f"a name of letters, digits, '_', '.' or '-' (at most {max_length} characters)" + (
            ", or empty" if allow_empty else ""
        )

    def parse(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail()
        text = value.strip()
        if text == "" and self.allow_empty:
            return text
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", text) or len(text) > self.max_length:
            raise self.fail()
        return text


class Endpoint(Type[str]):
    """``host:port`` where host is a DNS name or an IP address (IPv6 in brackets), or empty."""

    expected = 'host:port such as "vpn.example.org:51820" or "[2001:db8::1]:51820", or empty'

    def parse(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail()
        text = value.strip()
        if not text:
            return ""
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise self.fail()
        port = self.within(PORT.parse, port_text)
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            address = ipaddress.ip_address(bare)
        except ValueError:
            if not is_hostname(bare.lower()):
                raise self.fail() from None
            return f"{bare.lower()}:{port}"
        shown = f"[{address}]" if address.version == 6 else str(address)
        return f"{shown}:{port}"


class IpAddress(Type[str]):
    """One IP address (``127.0.0.1``, ``::1``), or empty."""

    expected = 'an IP address such as "127.0.0.1" or "::1", or empty'

    def parse(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail()
        text = value.strip().strip("[]")
        if not text:
            return ""
        return self.within(_address, text)
