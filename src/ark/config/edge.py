"""The sections of what ``ark render`` writes around ARK: Nginx and TLS, WireGuard and the firewall."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ark.config.declare import section, setting
from ark.config.network import Cidr, CidrList, Endpoint, Hostname, IpAddress, IpList, NamedPorts, PortList, Word
from ark.config.types import Bool, ByteSize, Choice, Int, PathType, Secret, SecretStr, Str, Type, Url

# Console roles, lowest first (ark/auth/users.py keeps the users), and the sites behind the console's
# sign-in (access "session" in ark/edge/sites.py) with the least role each needs by default. Kept here
# so that the config package imports neither; tests/test_auth_units.py checks both against their owners.
ROLE_ORDER = ("user", "admin")
SITE_ROLES = {"chat": "user", "art": "user", "grafana": "user", "n8n": "admin", "chromadb": "admin"}


class SiteRoles(Type[dict[str, str]]):
    """``site=role`` pairs (``"grafana=admin, n8n=user"``) or a table, laid over ``base``: a site the value
    does not name keeps its role there, so restricting one site never opens another."""

    def __init__(self, base: Mapping[str, str], roles: tuple[str, ...]) -> None:
        self.base, self.roles = dict(base), roles
        self.expected = (
            'site=role pairs such as "grafana=admin, n8n=user" (or a table), each site once; '
            f"sites: {', '.join(base)}; roles: {', '.join(roles)}"
        )

    def parse(self, value: Any) -> dict[str, str]:
        if isinstance(value, str):
            pairs = [part.partition("=") for part in value.split(",") if part.strip()]
            names = [site.strip() for site, _, _ in pairs]
            if any(not sep for _, sep, _ in pairs) or len(set(names)) != len(names):
                raise self.fail()  # a site named twice is a typo, not "the last one wins"
            value = {site.strip(): role.strip() for site, _, role in pairs}
        if not isinstance(value, dict):
            raise self.fail()
        if not all(site in self.base and role in self.roles for site, role in value.items()):
            raise self.fail()
        return {**self.base, **value}


@section
class EdgeSettings:
    """What `ark render` writes for Nginx: one TLS site per subdomain of `domain` (docs/security.md)."""

    domain: str = setting(
        Hostname(),
        "",
        "The public domain D: sites chat.D, llm.D, art.D, grafana.D, n8n.D, prometheus.D, chromadb.D, axl.D "
        "and D itself (docs/security.md). Empty: no edge bundle.",
    )
    email: str = setting(Str(), "", "Contact for Let's Encrypt (certbot) certificates.")
    tls: str = setting(
        Choice("letsencrypt", "self-signed"),
        "letsencrypt",
        "Where the certificates come from: Let's Encrypt (`ark certs letsencrypt`), or a local CA "
        "(`ark certs self-signed`).",
    )
    acme_directory: str = setting(
        Url(),
        "https://acme-v02.api.letsencrypt.org/directory",
        "ACME directory `ark certs letsencrypt` asks for certificates (Let's Encrypt production; "
        "staging: https://acme-staging-v02.api.letsencrypt.org/directory).",
    )
    http_port: int = setting(Int(1, 65535), 80, "Port Nginx answers plain HTTP on (only to redirect to HTTPS).")
    https_port: int = setting(Int(1, 65535), 443, "Port Nginx serves the sites on (TLS).")
    listen_address: str = setting(
        IpAddress(),
        "",
        "Address Nginx listens on (e.g. 127.0.0.1 for a test). Empty: every IPv4 address, and every IPv6 one "
        "when ipv6 is true.",
    )
    ipv6: bool = setting(Bool(), True, "Also listen on IPv6 ([::]) when listen_address is empty.")
    hsts_max_age: int = setting(
        Int(0, 10 * 366 * 86400),
        63072000,
        "Seconds browsers remember to use HTTPS only (Strict-Transport-Security, with includeSubDomains).",
    )
    upload_max_bytes: int = setting(
        ByteSize(),
        "100MiB",
        "Largest request body Nginx accepts on chat, art, n8n and chromadb (uploads); llm uses [gateway] "
        "max_body_bytes, the console and Grafana 10 MiB.",
    )
    site_roles: Mapping[str, str] = setting(
        SiteRoles(SITE_ROLES, ROLE_ORDER),
        "n8n=admin, chromadb=admin",
        "The least role a signed-in user needs per site behind the sign-in (below it: 403). A site not named "
        "keeps its default: n8n (runs code) and chromadb (every collection, no auth of its own) admin; chat, "
        "art and grafana any user. prometheus has its own password, llm API keys (docs/security.md).",
    )
    prometheus_user: str = setting(Word(), "admin", "User name of Prometheus's basic auth (prometheus.D).")
    prometheus_password: Secret = setting(
        SecretStr(min_length=12),
        "",
        "Password of Prometheus's basic auth (stored bcrypt-hashed in the rendered htpasswd). "
        "Empty: nobody can log in to prometheus.D.",
    )
    upstreams: Mapping[str, int] = setting(
        NamedPorts(),
        "",
        "Ports of the services behind the sites when they are not the standard ones "
        '(e.g. "grafana=3300"): chat, art, grafana, n8n, prometheus, chromadb, ollama, receiver, node_exporter, '
        "gpu_exporter. The gateway's and the console's come from [gateway] listen and [console] listen.",
    )
    nginx_user: str = setting(
        Word(),
        "www-data",
        "User Nginx's workers run as (the rendered htpasswd is made readable by its group).",
    )
    nginx_run_dir: Path | None = setting(
        PathType(),
        None,
        "Directory for Nginx's pid file, error log and temporary files. Default: the system's "
        "(/run/nginx.pid, /var/log/nginx, /var/lib/nginx).",
    )
    cert_warn_days: int = setting(
        Int(1, 365),
        14,
        "`ark audit` reports certificates that expire within this many days.",
    )


@section
class WireguardSettings:
    """The VPN the experiment receiver and remote engines are reached through (docs/security.md)."""

    interface: str = setting(Word(max_length=15), "wg0", "Name of the server's WireGuard interface.")
    subnet: str = setting(Cidr(), "10.8.0.0/24", "Address range of the VPN; the server takes its first address.")
    listen_port: int = setting(Int(1, 65535), 51820, "UDP port the server listens on.")
    endpoint: str = setting(
        Endpoint(),
        "",
        "host:port peers connect to. Empty: [edge] domain and listen_port.",
    )
    peer_allowed_ips: tuple[str, ...] = setting(
        CidrList(),
        "",
        "Networks a peer sends through the tunnel (its AllowedIPs). Empty: only the VPN subnet "
        '(split tunnel); "0.0.0.0/0, ::/0" sends everything.',
    )
    dns: tuple[str, ...] = setting(
        IpList(),
        "",
        "DNS servers written into peer files (empty: none, the peer keeps its own).",
    )
    keepalive_s: int = setting(
        Int(0, 3600),
        25,
        "PersistentKeepalive of peer files, seconds (keeps NAT mappings open; 0: off).",
    )


@section
class FirewallSettings:
    """The default-DROP ruleset `ark render` writes and `ark firewall apply` loads (docs/security.md)."""

    ssh_port: int = setting(Int(1, 65535), 22, "SSH port that stays open.")
    confirm_s: int = setting(
        Int(5, 3600),
        60,
        "Seconds `ark firewall apply` waits for `ark firewall confirm` before restoring the previous rules.",
    )
    backend: str = setting(
        Choice("nft", "iptables"),
        "nft",
        "What `ark firewall apply` loads: the nftables ruleset (nft -f), or the iptables-restore and ipset files.",
    )
    docker_subnet: tuple[str, ...] = setting(
        CidrList(),
        "172.17.0.0/16",
        "Networks allowed to reach the metrics exporters (9100, 9835): Prometheus in Docker.",
    )
    allow_tcp: tuple[int, ...] = setting(
        PortList(),
        "",
        "More TCP ports open to everyone (the firewall opens, `ark audit` accepts).",
    )
    allow_udp: tuple[int, ...] = setting(PortList(), "", "More UDP ports open to everyone.")
    geoblock_scope: str = setting(
        Choice("gateway", "public"),
        "gateway",
        "Where addresses in the geo-block sets are dropped: gateway (the API port) or public (every open "
        "port but SSH and WireGuard).",
    )
    persist: bool = setting(
        Bool(),
        True,
        "Whether `ark firewall confirm` writes the confirmed ruleset where the system loads it at boot "
        "(the persist_*_path files; a file found there is kept once as PATH.ark-previous). "
        "false: the rules last until the next reboot.",
    )
    persist_nft_path: Path = setting(
        PathType(),
        "/etc/nftables.conf",
        "Where the nft backend's confirmed ruleset is written (nftables.service loads it at boot); it "
        "replaces table inet ark only. Point it at e.g. /etc/nftables.d/ark.nft to include it from your own "
        "nftables.conf.",
    )
    persist_rules_v4_path: Path = setting(
        PathType(),
        "/etc/iptables/rules.v4",
        "Where the iptables backend's confirmed IPv4 rules are written (netfilter-persistent loads them at boot).",
    )
    persist_rules_v6_path: Path = setting(
        PathType(),
        "/etc/iptables/rules.v6",
        "Where the iptables backend's confirmed IPv6 rules are written (netfilter-persistent).",
    )
    persist_ipsets_path: Path = setting(
        PathType(),
        "/etc/iptables/ipsets",
        "Where the iptables backend's confirmed ipsets are written (ipset-persistent loads them before the rules).",
    )
