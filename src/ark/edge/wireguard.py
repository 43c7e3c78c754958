"""WireGuard: keys made here, peers kept under the data directory, and their config files.

Keys are X25519 from PyPI ``cryptography``; ``wg pubkey`` derives the same public
key from the same private one. The server's key lives in
``DATA/wireguard/server.key`` and each peer in ``DATA/wireguard/peers/NAME.json``,
all 0600: the peer's private key stays so that its file and QR code can be shown
again (as wg-easy does), and never appears anywhere else.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import secrets
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ark.config import Settings
from ark.edge.files import PRIVATE, Files, FileSpec, write_atomic
from ark.errors import EdgeError

_PEER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
HEADER = "# Rendered by ARK (`ark render`, `ark peers`): keys are secret, keep this file 0600.\n"


def generate_private_key() -> str:
    """A fresh private key, base64 as ``wg genkey`` prints it."""
    raw = X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(raw).decode()


def public_key(private_key: str) -> str:
    """The public key of a base64 private key, as ``wg pubkey`` prints it."""
    try:
        key = X25519PrivateKey.from_private_bytes(base64.b64decode(private_key, validate=True))
    except ValueError:
        raise EdgeError("not a WireGuard private key (44 base64 characters)") from None
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def generate_preshared_key() -> str:
    """A symmetric key mixed into the handshake (``wg genpsk``): post-quantum insurance per peer."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass(frozen=True)
class Peer:
    name: str
    address: str  # 10.8.0.2
    private_key: str
    public_key: str
    preshared_key: str
    created: str


class PeerStore:
    """The server key and the peers, as files under ``DATA/wireguard`` (the only owner of them)."""

    def __init__(self, data_dir: Path, subnet: str) -> None:
        self.root = data_dir / "wireguard"
        self.network = ipaddress.ip_network(subnet, strict=False)

    @property
    def server_address(self) -> str:
        return str(next(self.network.hosts()))

    def server_private_key(self) -> str:
        """The server's key, created on first use."""
        path = self.root / "server.key"
        if path.exists():
            return path.read_text().strip()
        key = generate_private_key()
        self._private_dir()
        write_atomic(path, (key + "\n").encode(), PRIVATE)
        return key

    def peers(self) -> list[Peer]:
        directory = self.root / "peers"
        if not directory.is_dir():
            return []
        return sorted((self._load(p) for p in directory.glob("*.json")), key=lambda p: ipaddress.ip_address(p.address))

    def get(self, name: str) -> Peer:
        path = self._path(name)
        if not path.exists():
            raise EdgeError(f"no peer named {name!r} (see `ark peers list`)")
        return self._load(path)

    def add(self, name: str, address: str | None = None) -> Peer:
        path = self._path(name)
        if path.exists():
            raise EdgeError(f"a peer named {name!r} exists already (`ark peers remove {name}` first)")
        chosen = self._check_address(address) if address else self._next_address()
        key = generate_private_key()
        peer = Peer(
            name=name,
            address=chosen,
            private_key=key,
            public_key=public_key(key),
            preshared_key=generate_preshared_key(),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        self._private_dir()
        write_atomic(path, json.dumps(asdict(peer), indent=2).encode() + b"\n", PRIVATE)
        return peer

    def remove(self, name: str) -> Peer:
        peer = self.get(name)
        self._path(name).unlink()
        return peer

    def _path(self, name: str) -> Path:
        if not _PEER_NAME.match(name):
            raise EdgeError(f"{name!r}: a peer name is 1-32 letters, digits, '_', '.' or '-'")
        return self.root / "peers" / f"{name}.json"

    def _load(self, path: Path) -> Peer:
        try:
            return Peer(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise EdgeError(f"{path}: not a peer file ({exc})") from None

    def _used(self) -> set[str]:
        return {self.server_address} | {p.address for p in self.peers()}

    def _check_address(self, address: str) -> str:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise EdgeError(f"{address!r} is not an IP address") from None
        if ip not in self.network or ip in (self.network.network_address, self.network.broadcast_address):
            raise EdgeError(f"{address} is not a host address of the VPN subnet {self.network}")
        if str(ip) in self._used():
            raise EdgeError(f"{address} is taken (the server or another peer)")
        return str(ip)

    def _next_address(self) -> str:
        used = self._used()
        for host in self.network.hosts():
            if str(host) not in used:
                return str(host)
        raise EdgeError(f"the VPN subnet {self.network} is full")

    def _private_dir(self) -> None:
        for directory in (self.root, self.root / "peers"):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            directory.chmod(0o700)


def endpoint(settings: Settings) -> str:
    """Where peers connect: the explicit endpoint, else the domain and the listen port."""
    if settings.wireguard.endpoint:
        return settings.wireguard.endpoint
    if not settings.edge.domain:
        raise EdgeError("peers need an endpoint: set [wireguard] endpoint or [edge] domain")
    return f"{settings.edge.domain}:{settings.wireguard.listen_port}"


def render_server(settings: Settings, server_key: str, server_address: str, peers: list[Peer]) -> str:
    """The server's wg-quick file (``wg-quick up``, or ``wg setconf IFACE <(wg-quick strip FILE)``)."""
    prefix = ipaddress.ip_network(settings.wireguard.subnet).prefixlen
    lines = [
        HEADER.rstrip(),
        "[Interface]",
        f"Address = {server_address}/{prefix}",
        f"ListenPort = {settings.wireguard.listen_port}",
        f"PrivateKey = {server_key}",
    ]
    for peer in peers:
        host = 32 if ipaddress.ip_address(peer.address).version == 4 else 128
        lines += [
            "",
            f"# {peer.name}",
            "[Peer]",
            f"PublicKey = {peer.public_key}",
            f"PresharedKey = {peer.preshared_key}",
            f"AllowedIPs = {peer.address}/{host}",
        ]
    return "\n".join(lines) + "\n"


def render_peer(settings: Settings, server_public_key: str, peer: Peer) -> str:
    """A peer's own file: its key, its address, and the server as its one [Peer]."""
    host = 32 if ipaddress.ip_address(peer.address).version == 4 else 128
    allowed = settings.wireguard.peer_allowed_ips or (settings.wireguard.subnet,)
    lines = [
        HEADER.rstrip(),
        "[Interface]",
        f"PrivateKey = {peer.private_key}",
        f"Address = {peer.address}/{host}",
    ]
    if settings.wireguard.dns:
        lines.append(f"DNS = {', '.join(settings.wireguard.dns)}")
    lines += [
        "",
        "[Peer]",
        f"PublicKey = {server_public_key}",
        f"PresharedKey = {peer.preshared_key}",
        f"AllowedIPs = {', '.join(allowed)}",
        f"Endpoint = {endpoint(settings)}",
    ]
    if settings.wireguard.keepalive_s:
        lines.append(f"PersistentKeepalive = {settings.wireguard.keepalive_s}")
    return "\n".join(lines) + "\n"


def render_wireguard(settings: Settings, data_dir: Path) -> Files:
    """``wireguard/IFACE.conf`` and ``wireguard/peers/NAME.conf``, all 0600."""
    store = PeerStore(data_dir, settings.wireguard.subnet)
    server_key = store.server_private_key()
    peers = store.peers()
    files: Files = {
        f"wireguard/{settings.wireguard.interface}.conf": FileSpec.text(
            render_server(settings, server_key, store.server_address, peers), PRIVATE
        )
    }
    server_public = public_key(server_key)
    for peer in peers:
        files[f"wireguard/peers/{peer.name}.conf"] = FileSpec.text(render_peer(settings, server_public, peer), PRIVATE)
    return files
