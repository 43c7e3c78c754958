"""`ark audit`: listening sockets against the port map, the firewall, open services, certificates."""

from __future__ import annotations

import datetime as dt
import socket
from pathlib import Path

import orjson
from click.testing import CliRunner

from ark.cli.main import main
from ark.config import Settings, load_settings
from ark.edge.audit import (
    FirewallState,
    Report,
    check_certificates,
    check_firewall,
    check_sockets,
    check_unauthenticated,
)
from ark.edge.certs import self_signed_files
from ark.edge.files import write_files
from ark.edge.ports import port_map
from ark.edge.sockets import ListeningSocket, decode_address, listening_sockets
from tests.conftest import MASTER_KEY, free_port

TCP_HEAD = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


def test_decode_proc_addresses() -> None:
    assert decode_address("0100007F:1F90") == ("127.0.0.1", 8080)
    assert decode_address("00000000:0FA0") == ("0.0.0.0", 4000)
    assert decode_address("00000000000000000000000000000000:1F90") == ("::", 8080)
    assert decode_address("00000000000000000000000001000000:2382") == ("::1", 9090)
    assert decode_address("0000000000000000FFFF00000100007F:0050") == ("127.0.0.1", 80)  # v4-mapped


def test_listening_sockets_from_recorded_proc(tmp_path: Path) -> None:
    net = tmp_path / "net"
    net.mkdir()
    (net / "tcp").write_text(
        TCP_HEAD
        + "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  0 0 1 1\n"
        + "   1: 00000000:0FA0 00000000:0000 0A 00000000:00000000 00:00000000 00000000  0 0 2 1\n"
        + "   2: 0100007F:0FA0 0100007F:D431 01 00000000:00000000 00:00000000 00000000  0 0 3 1\n"  # established
    )
    (net / "udp").write_text(
        TCP_HEAD
        + "   0: 00000000:CA6C 00000000:0000 07 00000000:00000000 00:00000000 00000000  0 0 4 2\n"
        + "   1: 0100007F:0035 0100007F:1234 01 00000000:00000000 00:00000000 00000000  0 0 5 2\n"  # connected
    )
    assert listening_sockets(tmp_path) == [
        ListeningSocket("tcp", "0.0.0.0", 4000),
        ListeningSocket("tcp", "127.0.0.1", 8080),
        ListeningSocket("udp", "0.0.0.0", 51820),
    ]


def _settings(tmp_path: Path, extra: str = "") -> Settings:
    path = tmp_path / "ark.toml"
    path.write_text(f'master_key = "{MASTER_KEY}"\n[edge]\ndomain = "ark.test"\n{extra}')
    return load_settings(config_path=path, data_dir=tmp_path / "data", env={})


def test_socket_checks(tmp_path: Path) -> None:
    settings = _settings(tmp_path, '[firewall]\nallow_tcp = "8443"\n')
    ports = port_map(settings)
    sockets = [
        ListeningSocket("tcp", "0.0.0.0", 4000),  # the gateway: public by design
        ListeningSocket("tcp", "0.0.0.0", 3000),  # Open WebUI published to the world
        ListeningSocket("tcp", "127.0.0.1", 9090),  # fine
        ListeningSocket("tcp", "10.8.0.1", 11434),  # Ollama on the WireGuard address: fine
        ListeningSocket("tcp", "::", 11434),  # Ollama everywhere: not fine
        ListeningSocket("tcp", "0.0.0.0", 8099),  # receiver: firewall keeps it to the VPN
        ListeningSocket("tcp", "0.0.0.0", 6379),  # nobody declared Redis
        ListeningSocket("tcp", "0.0.0.0", 8443),  # allow_tcp
        ListeningSocket("udp", "0.0.0.0", 51820),
        ListeningSocket("udp", "0.0.0.0", 68),
    ]
    found = {(p.check, p.subject, p.severity) for p in check_sockets(sockets, ports, "10.8.0.1", {"tcp": (8443,)})}
    assert found == {
        ("public-bind", "0.0.0.0:3000/tcp", "error"),
        ("public-bind", "[::]:11434/tcp", "error"),
        ("unexpected-port", "0.0.0.0:6379/tcp", "error"),
        ("unexpected-port", "0.0.0.0:68/udp", "warning"),
    }


def test_firewall_and_open_service_checks(tmp_path: Path) -> None:
    assert check_firewall(FirewallState(True, True, False)) == []
    assert check_firewall(FirewallState(True, False, True)) == []
    assert [p.severity for p in check_firewall(FirewallState(True, False, False))] == ["error"]
    assert [p.severity for p in check_firewall(FirewallState(False, False, False))] == ["warning"]

    ports = port_map(_settings(tmp_path))
    sockets = [ListeningSocket("tcp", "0.0.0.0", 11434), ListeningSocket("tcp", "0.0.0.0", 9090)]
    asked = []

    def probe(address: str, port: int, path: str, sni: str | None) -> int | None:
        asked.append((address, port, path))
        return 200 if port == 11434 else 401

    problems = check_unauthenticated(sockets, ports, "10.8.0.1", probe)
    assert [(p.check, p.subject) for p in problems] == [("open-without-auth", "0.0.0.0:11434/tcp")]
    assert ("127.0.0.1", 11434, "/api/tags") in asked


def test_certificate_checks() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    expiry = {
        "a.pem": now + dt.timedelta(days=90),
        "b.pem": now + dt.timedelta(days=5),
        "c.pem": now - dt.timedelta(days=1),
    }
    found = {(p.check, p.severity, p.subject) for p in check_certificates(expiry, now, 14)}
    assert found == {("cert-expiring", "warning", "b.pem"), ("cert-expired", "error", "c.pem")}
    assert Report(check_certificates({"b.pem": expiry["b.pem"]}, now, 14)).ok  # expiring alone: not a failure


def test_audit_reports_a_public_socket_that_must_be_loopback(runner: CliRunner, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "ark.toml"
    config.write_text(
        f'master_key = "{MASTER_KEY}"\n[console]\nlisten = "127.0.0.1:{port}"\n[edge]\ndomain = "ark.test"\n'
    )
    bundle = tmp_path / "bundle"
    # a certificate that expires in about a week, in the bundle the audit reads
    soon = dt.datetime.now(dt.UTC) - dt.timedelta(days=390)
    write_files(bundle, self_signed_files("ark.test", ["chat.ark.test"], lambda _: None, now=soon))
    args = ["audit", "--json", "--config", str(config), "--data-dir", str(tmp_path / "data"), "--out", str(bundle)]
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", port))
        sock.listen()
        result = runner.invoke(main, args)
        table = runner.invoke(main, args[:1] + args[2:])
    assert result.exit_code == 1, result.output
    report = orjson.loads(result.output)
    assert report["ok"] is False
    problems = {(p["check"], p["severity"], p["subject"]) for p in report["problems"]}
    assert ("public-bind", "error", f"0.0.0.0:{port}/tcp") in problems
    assert ("cert-expiring", "warning", str(bundle / "certs" / "chat.ark.test" / "fullchain.pem")) in problems
    assert {"proto": "tcp", "address": "0.0.0.0", "port": port} in report["sockets"]
    assert table.exit_code == 1 and "public-bind" in table.output


def test_the_iptables_firewall_counts_as_loaded_when_input_jumps_to_arks_chain() -> None:
    import subprocess
    from collections.abc import Sequence

    from ark.edge import audit

    def saved(text: str) -> audit.FirewallState:
        def run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
            out = text if argv[0] == "iptables-save" else ""
            return subprocess.CompletedProcess(list(argv), 0 if argv[0] == "iptables-save" else 1, out, "")

        return audit.firewall_state(run)

    ark = "*filter\n:INPUT ACCEPT [0:0]\n:ARK-INPUT - [0:0]\n-A INPUT -j ARK-INPUT\n-A ARK-INPUT -j DROP\nCOMMIT\n"
    assert saved(ark).iptables_chain
    # someone else's default-DROP policy is not ARK's firewall, nor is ARK's chain without the jump to it
    assert not saved("*filter\n:INPUT DROP [0:0]\nCOMMIT\n").iptables_chain
    assert not saved("*filter\n:INPUT ACCEPT [0:0]\n:ARK-INPUT - [0:0]\n-A ARK-INPUT -j DROP\nCOMMIT\n").iptables_chain
