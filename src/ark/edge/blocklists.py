"""Address lists the firewall drops: geo-block zones and the scanner blocklist.

Zone files are what ipdeny.com and similar publish: one CIDR per line,
``#`` comments. `ark firewall geoblock add cn.zone` checks every line and keeps a
normalised copy in ``DATA/firewall/geoblock/cn.zone``, so a later render does not
depend on the operator's download folder. The scanner blocklist is
``DATA/firewall/blocklist.zone`` (`ark firewall block CIDR...`).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from ark.edge.files import write_atomic
from ark.errors import EdgeError

_ZONE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class Blocklists:
    geo: tuple[str, ...]  # every geo-blocked network, all zones together
    scanners: tuple[str, ...]


def parse_zone(text: str, source: str) -> list[str]:
    """The networks of a zone file, normalised; a bad line is an error naming its number."""
    networks = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        try:
            networks.append(str(ipaddress.ip_network(line, strict=False)))
        except ValueError:
            raise EdgeError(
                f"{source}:{number}: {line!r} is not an IP network (expected CIDR such as 1.2.3.0/24)"
            ) from None
    return networks


def split_families(networks: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(IPv4, IPv6) networks: nftables and ipset keep one set per family."""
    v4 = tuple(n for n in networks if ":" not in n)
    v6 = tuple(n for n in networks if ":" in n)
    return v4, v6


class BlocklistStore:
    """The files under ``DATA/firewall`` that hold the lists."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "firewall"

    @property
    def geo_dir(self) -> Path:
        return self.root / "geoblock"

    @property
    def blocklist_path(self) -> Path:
        return self.root / "blocklist.zone"

    def add_zone(self, source: Path) -> tuple[str, int]:
        """Copy a zone file in (checked, normalised); returns its name and how many networks it holds."""
        name = source.name.removesuffix(".zone")
        if not _ZONE_NAME.match(name):
            raise EdgeError(f"{source}: name the file NAME.zone (NAME: letters, digits, '_' or '-')")
        try:
            text = source.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise EdgeError(f"{source}: cannot read it ({exc})") from None
        networks = parse_zone(text, str(source))
        write_atomic(self.geo_dir / f"{name}.zone", "".join(n + "\n" for n in networks).encode())
        return name, len(networks)

    def remove_zone(self, name: str) -> None:
        path = self.geo_dir / f"{name}.zone"
        if not _ZONE_NAME.match(name) or not path.exists():
            raise EdgeError(f"no geo-block zone named {name!r} (see `ark firewall geoblock list`)")
        path.unlink()

    def zones(self) -> dict[str, int]:
        """Zone name -> number of networks."""
        if not self.geo_dir.is_dir():
            return {}
        return {p.stem: len(self._read(p)) for p in sorted(self.geo_dir.glob("*.zone"))}

    def block(self, networks: list[str]) -> int:
        """Add networks to the scanner blocklist; returns how many it holds now."""
        current = self._read(self.blocklist_path)
        merged = current + [n for n in parse_zone("\n".join(networks), "argument") if n not in current]
        write_atomic(self.blocklist_path, "".join(n + "\n" for n in merged).encode())
        return len(merged)

    def unblock(self, networks: list[str]) -> int:
        drop = set(parse_zone("\n".join(networks), "argument"))
        kept = [n for n in self._read(self.blocklist_path) if n not in drop]
        write_atomic(self.blocklist_path, "".join(n + "\n" for n in kept).encode())
        return len(kept)

    def load(self) -> Blocklists:
        geo: list[str] = []
        if self.geo_dir.is_dir():
            for path in sorted(self.geo_dir.glob("*.zone")):
                geo += self._read(path)
        return Blocklists(geo=tuple(dict.fromkeys(geo)), scanners=tuple(self._read(self.blocklist_path)))

    def _read(self, path: Path) -> list[str]:
        try:
            return parse_zone(path.read_text(encoding="utf-8"), str(path))
        except FileNotFoundError:
            return []
