"""Listening sockets, read from ``/proc/net/{tcp,tcp6,udp,udp6}`` (no psutil, no root needed).

The proc root is a parameter so tests can hand in recorded files (as
prometheus/client_python does with ``ProcessCollector(proc=...)``). Sockets of
the namespace this process runs in are listed: run `ark audit` through
``ip netns exec`` to audit another one.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

TCP_LISTEN = "0A"
UDP_UNCONNECTED = "07"


@dataclass(frozen=True, order=True)
class ListeningSocket:
    proto: Literal["tcp", "udp"]
    address: str  # "0.0.0.0", "::", "127.0.0.1"
    port: int

    @property
    def is_loopback(self) -> bool:
        return ipaddress.ip_address(self.address).is_loopback

    @property
    def is_wildcard(self) -> bool:
        return ipaddress.ip_address(self.address).is_unspecified

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}/{self.proto}"


def listening_sockets(proc: Path = Path("/proc")) -> list[ListeningSocket]:
    """TCP sockets in LISTEN and unconnected UDP sockets, deduplicated and sorted."""
    found: set[ListeningSocket] = set()
    for name, proto, state in (
        ("tcp", "tcp", TCP_LISTEN),
        ("tcp6", "tcp", TCP_LISTEN),
        ("udp", "udp", UDP_UNCONNECTED),
        ("udp6", "udp", UDP_UNCONNECTED),
    ):
        try:
            text = (proc / "net" / name).read_text()
        except FileNotFoundError:  # no IPv6 in this kernel
            continue
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 4 or fields[3] != state:
                continue
            if proto == "udp" and not _remote_is_unset(fields[2]):
                continue
            address, port = decode_address(fields[1])
            found.add(ListeningSocket(proto, address, port))  # type: ignore[arg-type]
    return sorted(found)


def decode_address(field: str) -> tuple[str, int]:
    """``0100007F:1F90`` -> ("127.0.0.1", 8080); IPv6 is four little-endian 32-bit words."""
    hex_address, hex_port = field.split(":")
    raw = bytes.fromhex(hex_address)
    swapped = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(swapped)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address), int(hex_port, 16)


def _remote_is_unset(field: str) -> bool:
    hex_address, _, hex_port = field.partition(":")
    return int(hex_address, 16) == 0 and int(hex_port, 16) == 0
