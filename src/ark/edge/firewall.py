"""The default-DROP input firewall, as an nftables ruleset and as iptables-restore + ipset files.

Both say the same thing, derived from the port map:

- drop everything arriving that is not allowed below (``policy drop``);
- allow loopback, replies (established/related), essential ICMP;
- drop the scanner blocklist everywhere, the geo-block sets on the gateway port (or every public port);
- allow SSH, HTTP/HTTPS, WireGuard, the gateway and ``allow_tcp``/``allow_udp`` from anywhere;
- allow the receiver and Ollama only from the WireGuard subnet, on the WireGuard interface;
- allow the metrics exporters only from the Docker bridge.

Only ARK's own objects are touched, so Docker's, fail2ban's and libvirt's rules survive: the nft
file replaces ``table inet ark`` (create, delete and define again in one transaction, which
``nft -f`` applies atomically); the iptables file flushes and refills ARK's chain ``ARK-INPUT``
only, hooked from the top of INPUT by one jump, and is loaded with ``iptables-restore --noflush``.
INPUT's policy is not ARK's: the default DROP is the last rule of ``ARK-INPUT``, so every packet
that reaches the jump is decided there (rules others put in INPUT *above* the jump still run first,
those below it never see a packet). Forwarding is left alone (Docker and WireGuard routing live there).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import pairwise

from ark.config import Settings
from ark.edge.blocklists import Blocklists, split_families
from ark.edge.files import Files, FileSpec
from ark.edge.ports import PortMap

HEADER = "# Rendered by `ark render` from ark.toml; loaded by `ark firewall apply`."
TABLE = "ark"
SET_GEO, SET_SCAN = "ark_geo", "ark_scan"
CHAIN = "ARK-INPUT"  # iptables: ARK's input rules; other ARK-* chains count as ARK's too
CHAIN_PREFIX = "ARK-"
JUMP = f"-I INPUT 1 -j {CHAIN}"  # the hook, as the rendered file inserts it
HOOK = f"-A INPUT -j {CHAIN}"  # the hook, as iptables-save lists it
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
    """For ``iptables-restore --noflush`` (4) or ``ip6tables-restore --noflush`` (6): ARK's chain only.

    Declaring ``ARK-INPUT`` creates it or, with ``--noflush``, empties it; the jump from INPUT is in the
    file for a boot (netfilter-persistent loads it without ``--noflush``, on an empty table), and apply
    leaves that line out when INPUT has the jump already (:func:`without_jump`), so it is never doubled.
    """
    suffix = str(version)
    icmp = (
        [f"-A {CHAIN} -p icmp -m icmp --icmp-type {kind} -j ACCEPT" for kind in ICMP4]
        if version == 4
        else [f"-A {CHAIN} -p ipv6-icmp -j ACCEPT"]
    )
    geo = f"-m set --match-set {SET_GEO}{suffix} src -j DROP"
    gateway_geo = (
        f"-A {CHAIN} {geo}" if plan.geoblock_everywhere else f"-A {CHAIN} -p tcp --dport {plan.gateway_port} {geo}"
    )
    lines = [
        HEADER,
        f"# Load with --noflush: only {CHAIN} is emptied and refilled; INPUT's policy and other chains stay.",
        f"# The default DROP is {CHAIN}'s last rule; INPUT jumps to it first.",
        "*filter",
        f":{CHAIN} - [0:0]",
        JUMP,
        f"-A {CHAIN} -i lo -j ACCEPT",
        f"-A {CHAIN} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        f"-A {CHAIN} -m conntrack --ctstate INVALID -j DROP",
        f"-A {CHAIN} -m set --match-set {SET_SCAN}{suffix} src -j DROP",
        *icmp,
        f"-A {CHAIN} -p tcp --dport {plan.ssh_port} -j ACCEPT",
        *_multiport("udp", plan.public_udp, "-j ACCEPT"),
        gateway_geo,
        *_multiport("tcp", plan.public_tcp, "-j ACCEPT"),
        f"-A {CHAIN} -p tcp --dport {plan.gateway_port} -j ACCEPT",
    ]
    if _family(plan.vpn_subnet) == version and plan.vpn_tcp:
        lines += _multiport("tcp", plan.vpn_tcp, "-j ACCEPT", f"-i {plan.vpn_interface} -s {plan.vpn_subnet} ")
    for net in (n for n in plan.bridge_nets if _family(n) == version):
        lines += _multiport("tcp", plan.bridge_tcp, "-j ACCEPT", f"-s {net} ")
    return "\n".join([*lines, f"-A {CHAIN} -j DROP", "COMMIT", ""])


def _multiport(proto: str, ports: tuple[int, ...], target: str, match: str = "") -> list[str]:
    """One rule per 15 ports (multiport's limit)."""
    rules = []
    for start in range(0, len(ports), 15):
        chunk = ports[start : start + 15]
        spec = f"--dport {chunk[0]}" if len(chunk) == 1 else f"-m multiport --dports {','.join(map(str, chunk))}"
        rules.append(f"-A {CHAIN} {match}-p {proto} {spec} {target}")
    return rules


def without_jump(rules: str) -> str:
    """The rendered file without its jump line: what apply loads when INPUT jumps to ARK's chain already."""
    return "".join(line for line in rules.splitlines(keepends=True) if line.strip() != JUMP)


@dataclass(frozen=True)
class ArkChains:
    """ARK's part of ``iptables-save -t filter``: its chains with their rules, and the rules that jump to them."""

    chains: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> its "-A NAME ..." rules
    jumps: tuple[str, ...] = ()  # rules in other chains that jump to ARK's, e.g. HOOK (twice if doubled)

    def text(self) -> str:
        """In iptables-save's words, without counters (:func:`ark_chains` reads it back)."""
        lines = [f":{name} - [0:0]" for name in self.chains]
        for rules in self.chains.values():
            lines += rules
        return "".join(f"{line}\n" for line in [*lines, *self.jumps])


def ark_chains(saved: str) -> ArkChains:
    chains: dict[str, list[str]] = {}
    jumps = []
    for line in saved.splitlines():
        words = line.split()
        if words and words[0].startswith(":" + CHAIN_PREFIX):
            chains.setdefault(words[0][1:], [])
        elif len(words) >= 2 and words[0] == "-A":
            if words[1].startswith(CHAIN_PREFIX):
                chains.setdefault(words[1], []).append(line.strip())
            elif any(a in ("-j", "-g") and b.startswith(CHAIN_PREFIX) for a, b in pairwise(words)):
                jumps.append(line.strip())
    return ArkChains({name: tuple(rules) for name, rules in chains.items()}, tuple(jumps))


def restore_chains(before: ArkChains, now: ArkChains) -> str:
    """For ``iptables-restore --noflush``: from ARK's objects ``now`` back to ``before``, naming nothing else.

    Each of ARK's chains is declared (which empties it) and refilled as it was; jumps to them are deleted
    or put back (at the top of their chain) until there are as many as before; chains that were not
    there are removed. One restore is one transaction: all of it happens, or none.
    """
    names = [*before.chains, *(name for name in now.chains if name not in before.chains)]
    lines = ["*filter", *(f":{name} - [0:0]" for name in names)]
    for rules in before.chains.values():
        lines += rules
    for jump in dict.fromkeys([*before.jumps, *now.jumps]):
        chain, spec = jump.split(maxsplit=2)[1:]
        extra = now.jumps.count(jump) - before.jumps.count(jump)
        lines += [f"-D {chain} {spec}"] * extra + [f"-I {chain} 1 {spec}"] * -extra
    lines += [f"-X {name}" for name in names if name not in before.chains]
    return "\n".join([*lines, "COMMIT", ""])


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
