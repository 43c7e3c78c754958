"""The port map: which service listens where, and who may reach it.

One table drives the Nginx upstreams, the firewall and `ark audit`, so the three
cannot disagree. Third-party services have their standard ports (overridable by
``[edge] upstreams``); ARK's own ports come from their listen settings, and SSH,
Nginx and WireGuard from theirs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ark.config import Settings
from ark.errors import ConfigError

# public: anyone may connect (the firewall opens it)
# loopback: must bind 127.0.0.1/::1; reached through Nginx only
# vpn: binds anywhere, the firewall admits the WireGuard subnet only
# bridge: binds anywhere, the firewall admits the Docker bridge only (metrics)
# loopback_or_vpn: 127.0.0.1 or the WireGuard address, never a public one (Ollama)
Binding = Literal["public", "loopback", "vpn", "bridge", "loopback_or_vpn"]


@dataclass(frozen=True)
class Service:
    name: str
    port: int
    binding: Binding
    title: str
    proto: Literal["tcp", "udp"] = "tcp"


# name, standard port, binding, what it is
_THIRD_PARTY: tuple[tuple[str, int, Binding, str], ...] = (
    ("chat", 3000, "loopback", "Open WebUI"),
    ("grafana", 3001, "loopback", "Grafana"),
    ("n8n", 5678, "loopback", "n8n"),
    ("chromadb", 8000, "loopback", "ChromaDB"),
    ("receiver", 8099, "vpn", "ARK experiment receiver"),
    ("art", 8188, "loopback", "ComfyUI"),
    ("prometheus", 9090, "loopback", "Prometheus"),
    ("node_exporter", 9100, "bridge", "node_exporter"),
    ("gpu_exporter", 9835, "bridge", "GPU exporter"),
    ("ollama", 11434, "loopback_or_vpn", "Ollama"),
)
_OWN = ("ssh", "http", "https", "llm", "console", "wireguard")


@dataclass(frozen=True)
class PortMap:
    services: tuple[Service, ...]

    def __getitem__(self, name: str) -> Service:
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)

    def port(self, name: str) -> int:
        return self[name].port

    def find(self, port: int, proto: str = "tcp") -> Service | None:
        """The service expected on ``port`` (None: nothing should listen there publicly)."""
        return next((s for s in self.services if s.port == port and s.proto == proto), None)

    def with_binding(self, *bindings: Binding, proto: str = "tcp") -> tuple[int, ...]:
        return tuple(sorted({s.port for s in self.services if s.binding in bindings and s.proto == proto}))


def port_map(settings: Settings) -> PortMap:
    """The port map of this configuration; an unknown or ARK-owned name in ``upstreams`` is an error."""
    overrides = dict(settings.edge.upstreams)
    known = {name for name, *_ in _THIRD_PARTY}
    for name in overrides:
        if name in _OWN:
            raise ConfigError(f"[edge] upstreams: {name} is not set here (it comes from its own listen setting)")
        if name not in known:
            raise ConfigError(f"[edge] upstreams: unknown service {name!r}; known: {', '.join(sorted(known))}")
    own = (
        Service("ssh", settings.firewall.ssh_port, "public", "SSH"),
        Service("http", settings.edge.http_port, "public", "Nginx (redirects to HTTPS)"),
        Service("https", settings.edge.https_port, "public", "Nginx (TLS)"),
        Service("llm", settings.gateway.listen.port, "public", "ARK gateway (API key required)"),
        Service("console", settings.console.listen.port, "loopback", "ARK console and auth"),
        Service("wireguard", settings.wireguard.listen_port, "public", "WireGuard", "udp"),
    )
    third = tuple(
        Service(name, overrides.get(name, port), binding, title) for name, port, binding, title in _THIRD_PARTY
    )
    return PortMap(own + third)
