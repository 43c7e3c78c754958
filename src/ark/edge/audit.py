"""`ark audit`: compare what this machine exposes with what the port map says it should.

Checks, each a pure function over collected facts (sockets, firewall state,
HTTP answers, certificates), so tests feed them plain data:

- public-bind        a service that must be loopback-only listens on a public address
- unexpected-port    something listens publicly that the port map does not know
- no-firewall        neither ARK's nft table nor its iptables chain (INPUT jumping to ARK-INPUT) is loaded
- not-persisted      ARK's rules are loaded but no confirm wrote them where the boot loads them
                     (``[firewall] persist``), or the written files / the loaded rules changed since
- open-without-auth  Ollama, ComfyUI or Prometheus answers 200 without credentials from a
                     public address, or a guarded site answers 200 through Nginx without a login
- cert-expiring      a certificate (rendered bundle, DATA/certbot's live ones) expires within
                     ``[edge] cert_warn_days`` (expired: error)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ark.config import Settings
from ark.edge.apply import FirewallGuard
from ark.edge.certs import LETSENCRYPT, not_after
from ark.edge.firewall import HOOK
from ark.edge.persist import Persister, PersistStatus
from ark.edge.ports import PortMap, port_map
from ark.edge.sites import edge_sites
from ark.edge.sockets import ListeningSocket, listening_sockets
from ark.edge.wireguard import PeerStore

Severity = Literal["error", "warning"]
# service -> a path that answers 200 when nobody asks for credentials
UNAUTH_PROBES = {"ollama": "/api/tags", "art": "/system_stats", "prometheus": "/api/v1/status/buildinfo"}
HttpProbe = Callable[[str, int, str, str | None], int | None]  # address, port, path, TLS server name -> status


@dataclass(frozen=True)
class Problem:
    check: str
    severity: Severity
    subject: str
    detail: str


@dataclass(frozen=True)
class FirewallState:
    readable: bool  # False: not root, or no tool to ask
    nft_table: bool  # table inet ark is loaded
    iptables_chain: bool  # INPUT jumps to ARK-INPUT (which ends in the default DROP)


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    sockets: list[ListeningSocket] = field(default_factory=list)
    certificates: dict[str, str] = field(default_factory=dict)  # path -> expiry (ISO)

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "problems": [vars(p) for p in self.problems],
            "sockets": [{"proto": s.proto, "address": s.address, "port": s.port} for s in self.sockets],
            "certificates": self.certificates,
        }


# -- checks (pure) --------------------------------------------------------------------------------


def check_sockets(
    sockets: Iterable[ListeningSocket], ports: PortMap, vpn_address: str, allow: dict[str, tuple[int, ...]]
) -> list[Problem]:
    """Public listeners that should be loopback, and public listeners nobody declared."""
    problems = []
    for sock in sockets:
        if sock.is_loopback:
            continue
        service = ports.find(sock.port, sock.proto)
        if service is None:
            if sock.port in allow.get(sock.proto, ()):
                continue
            severity: Severity = "error" if sock.proto == "tcp" else "warning"
            detail = "not in the port map: stop it, bind it to 127.0.0.1, or add it to [firewall] allow_" + sock.proto
            problems.append(Problem("unexpected-port", severity, str(sock), detail))
        elif service.binding == "loopback" or (service.binding == "loopback_or_vpn" and sock.address != vpn_address):
            where = "127.0.0.1" + (f" or the WireGuard address {vpn_address}" if service.binding != "loopback" else "")
            detail = f"{service.title} must listen on {where} only (Nginx is in front of it)"
            problems.append(Problem("public-bind", "error", str(sock), detail))
    return problems


def check_firewall(state: FirewallState) -> list[Problem]:
    if not state.readable:
        return [Problem("no-firewall", "warning", "firewall", "cannot read the rules (run as root with nft/iptables)")]
    if state.nft_table or state.iptables_chain:
        return []
    return [Problem("no-firewall", "error", "firewall", "no default-DROP ruleset is loaded: `ark firewall apply`")]


def check_persisted(status: PersistStatus, state: FirewallState) -> list[Problem]:
    """Would a reboot bring back the rules loaded now? (Only asked when ``[firewall] persist`` is on.)"""
    if not status.enabled:
        return []
    if status.record is None:
        if not (state.nft_table or state.iptables_chain):
            return []  # nothing loaded: no-firewall says so
        detail = "the loaded rules were never persisted: a reboot drops them (`ark firewall apply`, then `confirm`)"
        return [Problem("not-persisted", "warning", "firewall", detail)]
    problems = [
        Problem("not-persisted", "warning", path, f"{file_state} since `ark firewall confirm` wrote it")
        for path, file_state in status.files.items()
        if file_state != "same"
    ]
    if status.loaded == "differs":
        detail = "the loaded rules differ from the persisted ones: a reboot loads the persisted ones"
        problems.append(Problem("not-persisted", "warning", "firewall", detail))
    return problems


def check_unauthenticated(
    sockets: Iterable[ListeningSocket], ports: PortMap, vpn_address: str, probe: HttpProbe
) -> list[Problem]:
    """Ollama, ComfyUI, Prometheus answering without credentials on a public address."""
    problems = []
    for name, path in UNAUTH_PROBES.items():
        service = ports[name]
        for sock in sockets:
            if sock.proto != "tcp" or sock.port != service.port or sock.is_loopback or sock.address == vpn_address:
                continue
            address = "127.0.0.1" if sock.is_wildcard else sock.address
            if probe(address, sock.port, path, None) == 200:
                detail = f"{service.title} answers {path} without credentials on a public address"
                problems.append(Problem("open-without-auth", "error", str(sock), detail))
    return problems


def check_sites(settings: Settings, ports: PortMap, probe: HttpProbe) -> list[Problem]:
    """Through Nginx: every guarded site must refuse (401/302) a request without a login."""
    address = settings.edge.listen_address or "127.0.0.1"
    problems = []
    for site in edge_sites(settings, ports):
        if site.access not in ("session", "basic"):
            continue
        status = probe(address, settings.edge.https_port, "/", site.host)
        if status is not None and 200 <= status < 300:
            detail = f"answers {status} through Nginx without a login (auth_request/basic auth missing?)"
            problems.append(Problem("open-without-auth", "error", f"https://{site.host}/", detail))
    return problems


def check_certificates(expiry: dict[str, dt.datetime], now: dt.datetime, warn_days: int) -> list[Problem]:
    problems = []
    for path, end in sorted(expiry.items()):
        left = end - now
        if left <= dt.timedelta(0):
            problems.append(Problem("cert-expired", "error", path, f"expired on {end:%Y-%m-%d}"))
        elif left <= dt.timedelta(days=warn_days):
            detail = f"expires on {end:%Y-%m-%d} ({left.days} days)"
            problems.append(Problem("cert-expiring", "warning", path, detail))
    return problems


# -- facts (the edges) ----------------------------------------------------------------------------


def firewall_state(run: Callable[[Sequence[str]], subprocess.CompletedProcess[str]] | None = None) -> FirewallState:
    """Ask nft and iptables what is loaded (read only)."""
    run = run or (lambda argv: subprocess.run(list(argv), capture_output=True, text=True, timeout=30))
    nft = iptables = False
    readable = False
    if shutil.which("nft"):
        result = run(["nft", "list", "tables"])
        readable |= result.returncode == 0
        nft = result.returncode == 0 and "inet ark" in result.stdout
    if shutil.which("iptables-save"):
        result = run(["iptables-save", "-t", "filter"])
        readable |= result.returncode == 0
        iptables = result.returncode == 0 and HOOK in result.stdout.splitlines()
    return FirewallState(readable, nft, iptables)


def http_status(address: str, port: int, path: str, server_name: str | None, timeout: float = 3.0) -> int | None:
    """Status of a GET (HTTPS with SNI when ``server_name`` is set; certificates not checked); None: no answer."""
    try:
        if server_name is None:
            conn: http.client.HTTPConnection = http.client.HTTPConnection(address, port, timeout=timeout)
        else:
            conn = _SniConnection(address, port, server_name, timeout)
        try:
            conn.request("GET", path, headers={"Host": server_name or address})
            return conn.getresponse().status
        finally:
            conn.close()
    except (OSError, http.client.HTTPException):
        return None


class _SniConnection(http.client.HTTPSConnection):
    """HTTPS to an address with another name in SNI (curl's --resolve), verification off: status only."""

    def __init__(self, address: str, port: int, server_name: str, timeout: float) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        super().__init__(address, port, timeout=timeout, context=context)
        self.server_name = server_name
        self.tls = context

    def connect(self) -> None:
        raw = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self.tls.wrap_socket(raw, server_hostname=self.server_name)


def certificate_expiry(paths: Iterable[Path]) -> dict[str, dt.datetime]:
    found = {}
    for path in paths:
        try:
            found[str(path)] = not_after(path.read_bytes())
        except (OSError, ValueError):
            continue
    return found


def certificate_files(bundle: Path, letsencrypt: Path = LETSENCRYPT) -> list[Path]:
    paths = sorted((bundle / "certs").glob("*/fullchain.pem")) if (bundle / "certs").is_dir() else []
    with contextlib.suppress(PermissionError):
        paths += sorted(letsencrypt.glob("*/fullchain.pem"))
    return paths


@dataclass
class Auditor:
    """Collects the facts and runs the checks; every edge can be replaced (tests)."""

    settings: Settings
    bundle: Path
    proc: Path = Path("/proc")
    probe: HttpProbe = http_status
    firewall: Callable[[], FirewallState] = firewall_state
    persisted: Callable[[], PersistStatus] | None = None  # None: what the last `ark firewall confirm` wrote
    letsencrypt: Path = LETSENCRYPT
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)

    def run(self) -> Report:
        ports = port_map(self.settings)
        vpn_address = PeerStore(self.settings.data_dir, self.settings.wireguard.subnet).server_address
        allow = {"tcp": self.settings.firewall.allow_tcp, "udp": self.settings.firewall.allow_udp}
        sockets = listening_sockets(self.proc)
        expiry = certificate_expiry(certificate_files(self.bundle, self.letsencrypt))
        report = Report(sockets=sockets, certificates={p: e.isoformat() for p, e in expiry.items()})
        report.problems += check_sockets(sockets, ports, vpn_address, allow)
        state = self.firewall()
        report.problems += check_firewall(state)
        persisted = self.persisted or Persister(FirewallGuard(self.settings.data_dir), self.settings.firewall).status
        report.problems += check_persisted(persisted(), state)
        report.problems += check_unauthenticated(sockets, ports, vpn_address, self.probe)
        if self.settings.edge.domain and any(s.port == self.settings.edge.https_port for s in sockets):
            report.problems += check_sites(self.settings, ports, self.probe)
        report.problems += check_certificates(expiry, self.now(), self.settings.edge.cert_warn_days)
        return report
