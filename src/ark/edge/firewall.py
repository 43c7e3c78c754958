"""The default-DROP input firewall, as an nftables ruleset and as iptables-restore + ipset files.

Both say the same thing, derived from the port map:

- drop everything arriving that is not allowed below (``policy drop``);
- allow loopback, replies (established/related), essential ICMP;
- drop the scanner blocklist everywhere, the geo-block sets on the gateway port (or every public port);
- allow SSH, HTTP/HTTPS, WireGuard, the gateway and ``allow_tcp``/``allow_udp`` from anywhere;
- allow the receiver and Ollama only from the WireGuard subnet, on the WireGuard interface;
- allow the metrics exporters only from the Docker bridge.

Only ARK's own objects are touched, so Docker's rules survive: the nft file replaces
``table inet ark`` (create, delete and define again in one transaction, which ``nft -f``
applies atomically); the iptables file flushes and refills the INPUT chain only and is
loaded with ``iptables-restore --noflush``. Forwarding is left alone (Docker and WireGuard
routing live there).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from ark.config import Settings
from ark.edge.blocklists import Blocklists, split_families
from ark.edge.files import Files, FileSpec
from ark.edge.ports import PortMap

HEADER = "# Rendered by `ark render` from ark.toml; loaded by `ark firewall apply`."
TABLE = "ark"
SET_GEO, SET_SCAN = "ark_geo", "ark_scan"
ICMP4 = ("echo-request", "destination-unreachable", "time-exceeded", "parameter-problem")


@dataclass(frozen=True)
class FirewallPlan:
    ssh_port: int
    public_tcp: tuple[int, ...]  # HTTP, HTTPS, allow_tcp
    public_udp: tuple[int, ...]  # WireGuard, allow_udp
    gateway_port: int
    vpn_interface: str
    vpn_subnet: str
    vpn_tcp: tuple[int, ...]  # receiver, Ollama
    bridge_nets: tuple[str, ...]
    bridge_tcp: tuple[int, ...]  # exporters
    geo: tuple[str, ...]
    scanners: tuple[str, ...]
    geoblock_everywhere: bool


def firewall_plan(settings: Settings, ports: PortMap, lists: Blocklists) -> FirewallPlan:
    """What the rules say, as plain data (tested without loading anything)."""
    fw = settings.firewall
    web = (ports.port("http"), ports.port("https"))
    return FirewallPlan(
        ssh_port=fw.ssh_port,
        public_tcp=tuple(sorted({*web, *fw.allow_tcp} - {fw.ssh_port, ports.port("llm")})),
        public_udp=tuple(sorted({ports.port("wireguard"), *fw.allow_udp})),
        gateway_port=ports.port("llm"),
        vpn_interface=settings.wireguard.interface,
        vpn_subnet=settings.wireguard.subnet,
        vpn_tcp=ports.with_binding("vpn", "loopback_or_vpn"),
        bridge_nets=fw.docker_subnet,
        bridge_tcp=ports.with_binding("bridge"),
        geo=lists.geo,
        scanners=lists.scanners,
        geoblock_everywhere=fw.geoblock_scope == "public",
    )


def render_firewall(plan: FirewallPlan) -> Files:
    """``firewall/ruleset.nft``, ``firewall/rules.v4``, ``firewall/rules.v6``, ``firewall/ipsets``."""
    return {
        "firewall/ruleset.nft": FileSpec.text(render_nft(plan)),
        "firewall/rules.v4": FileSpec.text(render_iptables(plan, 4)),
        "firewall/rules.v6": FileSpec.text(render_iptables(plan, 6)),
        "firewall/ipsets": FileSpec.text(render_ipsets(plan)),
    }


def _family(network: str) -> int:
    return ipaddress.ip_network(network).version


def _ports(ports: Iterable[int]) -> str:
    items = sorted(ports)
    return str(items[0]) if len(items) == 1 else "{ " + ", ".join(map(str, items)) + " }"


# -- nftables -------------------------------------------------------------------------------------


def render_nft(plan: FirewallPlan) -> str:
    geo4, geo6 = split_families(plan.geo)
    scan4, scan6 = split_families(plan.scanners)
    lines = [
        HEADER,
        "# Replaces table inet ark in one transaction (nft -f is atomic); other tables (Docker's) stay.",
        f"table inet {TABLE} {{}}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
        *_nft_set(f"{SET_GEO}4", "ipv4_addr", geo4),
        *_nft_set(f"{SET_GEO}6", "ipv6_addr", geo6),
        *_nft_set(f"{SET_SCAN}4", "ipv4_addr", scan4),
        *_nft_set(f"{SET_SCAN}6", "ipv6_addr", scan6),
        "    chain input {",
        "        type filter hook input priority filter; policy drop;",
        *(f"        {rule}" for rule in _nft_rules(plan)),
        "    }",
        "}",
        "",
    ]
    return "\n".join(lines)


def _nft_set(name: str, kind: str, networks: tuple[str, ...]) -> list[str]:
    lines = [f"    set {name} {{", f"        type {kind}", "        flags interval", "        auto-merge"]
    if networks:
        lines.append("        elements = {")
        for start in range(0, len(networks), 8):
            chunk = networks[start : start + 8]
            last = start + 8 >= len(networks)
            lines.append("            " + ", ".join(chunk) + ("" if last else ","))
        lines.append("        }")
    return [*lines, "    }"]


def _nft_rules(plan: FirewallPlan) -> list[str]:
    vpn_ip = "ip" if _family(plan.vpn_subnet) == 4 else "ip6"
    rules = [
        'iif "lo" accept',
        "ct state established,related accept",
        "ct state invalid drop",
        f"ip saddr @{SET_SCAN}4 drop",
        f"ip6 saddr @{SET_SCAN}6 drop",
        f"ip protocol icmp icmp type {{ {', '.join(ICMP4)} }} accept",
        "meta l4proto ipv6-icmp accept  # neighbour discovery, path MTU",
        f"tcp dport {plan.ssh_port} accept",
        f"udp dport {_ports(plan.public_udp)} accept",
    ]
    geo_ports = "" if plan.geoblock_everywhere else f"tcp dport {plan.gateway_port} "
    rules += [f"ip saddr @{SET_GEO}4 {geo_ports}drop", f"ip6 saddr @{SET_GEO}6 {geo_ports}drop"]
    if plan.public_tcp:
        rules.append(f"tcp dport {_ports(plan.public_tcp)} accept")
    rules.append(f"tcp dport {plan.gateway_port} accept")
    if plan.vpn_tcp:
        rules.append(
            f'iifname "{plan.vpn_interface}" {vpn_ip} saddr {plan.vpn_subnet} tcp dport {_ports(plan.vpn_tcp)} accept'
        )
    for version, keyword in ((4, "ip"), (6, "ip6")):
        nets = [n for n in plan.bridge_nets if _family(n) == version]
        if nets and plan.bridge_tcp:
            rules.append(f"{keyword} saddr {{ {', '.join(nets)} }} tcp dport {_ports(plan.bridge_tcp)} accept")
    return rules


# -- iptables + ipset -----------------------------------------------------------------------------


def render_iptables(plan: FirewallPlan, version: int) -> str:
    """For ``iptables-restore --noflush`` (4) or ``ip6tables-restore --noflush`` (6): INPUT only."""
    suffix = str(version)
    icmp = (
        [f"-A INPUT -p icmp -m icmp --icmp-type {kind} -j ACCEPT" for kind in ICMP4]
        if version == 4
        else ["-A INPUT -p ipv6-icmp -j ACCEPT"]
    )
    geo = f"-m set --match-set {SET_GEO}{suffix} src -j DROP"
    lines = [
        HEADER,
        "# Load with --noflush: only INPUT is flushed and refilled; Docker's chains stay.",
        "*filter",
        ":INPUT DROP [0:0]",
        "-F INPUT",
        "-A INPUT -i lo -j ACCEPT",
        "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        "-A INPUT -m conntrack --ctstate INVALID -j DROP",
        f"-A INPUT -m set --match-set {SET_SCAN}{suffix} src -j DROP",
        *icmp,
        f"-A INPUT -p tcp --dport {plan.ssh_port} -j ACCEPT",
        *_multiport("udp", plan.public_udp, "-j ACCEPT"),
        f"-A INPUT {geo}" if plan.geoblock_everywhere else f"-A INPUT -p tcp --dport {plan.gateway_port} {geo}",
        *_multiport("tcp", plan.public_tcp, "-j ACCEPT"),
        f"-A INPUT -p tcp --dport {plan.gateway_port} -j ACCEPT",
    ]
    if _family(plan.vpn_subnet) == version and plan.vpn_tcp:
        lines += _multiport("tcp", plan.vpn_tcp, "-j ACCEPT", f"-i {plan.vpn_interface} -s {plan.vpn_subnet} ")
    for net in (n for n in plan.bridge_nets if _family(n) == version):
        lines += _multiport("tcp", plan.bridge_tcp, "-j ACCEPT", f"-s {net} ")
    return "\n".join([*lines, "COMMIT", ""])


def _multiport(proto: str, ports: tuple[int, ...], target: str, match: str = "") -> list[str]:
    """One rule per 15 ports (multiport's limit)."""
    rules = []
    for start in range(0, len(ports), 15):
        chunk = ports[start : start + 15]
        spec = f"--dport {chunk[0]}" if len(chunk) == 1 else f"-m multiport --dports {','.join(map(str, chunk))}"
        rules.append(f"-A INPUT {match}-p {proto} {spec} {target}")
    return rules


def render_ipsets(plan: FirewallPlan) -> str:
    """For ``ipset restore -exist``: sets exist before the rules that name them; refilled from scratch."""
    lines = [HEADER]
    for name, networks in ((SET_GEO, plan.geo), (SET_SCAN, plan.scanners)):
        for version, family_networks in zip((4, 6), split_families(networks), strict=True):
            set_name = f"{name}{version}"
            family = "inet" if version == 4 else "inet6"
            lines += [
                f"create {set_name} hash:net family {family} hashsize 1024 maxelem 1048576",
                f"flush {set_name}",
                *(f"add {set_name} {network}" for network in family_networks),
            ]
    return "\n".join(lines) + "\n"
