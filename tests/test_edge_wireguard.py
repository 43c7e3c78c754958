"""WireGuard: keys as `wg` makes them, `ark peers`, and a real tunnel between two namespaces.

This kernel has no WireGuard module, so the tunnel runs on userspace wireguard-go (what `wg-quick`
falls back to). wireguard-go keeps its control sockets in one folder for all namespaces, so the
server's and the peer's interfaces get different names, both carrying this process's id.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from ark.cli.main import main
from ark.edge.wireguard import generate_private_key, public_key
from tests.conftest import MASTER_KEY, wait_until
from tests.netns import Pair, netns_pair, sh

SUBNET = "10.231.8"
VPN = "10.8.77"
SERVER_IF = f"wgs{os.getpid() % 100000}"
PEER_IF = f"wgp{os.getpid() % 100000}"
needs_wg = pytest.mark.skipif(shutil.which("wg") is None, reason="wireguard-tools is not installed")


@pytest.fixture
def config(tmp_path: Path) -> list[str]:
    path = tmp_path / "ark.toml"
    path.write_text(
        f'master_key = "{MASTER_KEY}"\n[edge]\ndomain = "ark.test"\n'
        f'[wireguard]\ninterface = "{SERVER_IF}"\nsubnet = "{VPN}.0/24"\nendpoint = "{SUBNET}.1:51820"\n'
    )
    return ["--config", str(path), "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "bundle")]


@needs_wg
def test_keys_match_wg_pubkey() -> None:
    for _ in range(3):
        private = generate_private_key()
        expected = sh("wg", "pubkey", input=private + "\n").strip()
        assert public_key(private) == expected


@needs_wg
def test_wg_reads_the_keys_it_would_make() -> None:
    private = sh("wg", "genkey").strip()
    assert public_key(private) == sh("wg", "pubkey", input=private).strip()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_peers_add_list_show_remove(runner: CliRunner, config: list[str], tmp_path: Path) -> None:
    data, bundle = tmp_path / "data", tmp_path / "bundle"
    added = runner.invoke(main, ["peers", "add", "phone", "--no-qr", *config])
    assert added.exit_code == 0, added.output
    peer_json = data / "wireguard" / "peers" / "phone.json"
    assert _mode(peer_json) == 0o600 and _mode(data / "wireguard" / "server.key") == 0o600
    assert _mode(data / "wireguard") == 0o700
    private = json.loads(peer_json.read_text())["private_key"]
    assert f"{VPN}.2" in added.output and private not in added.output

    assert runner.invoke(main, ["peers", "add", "laptop", "--ip", f"{VPN}.9", "--no-qr", *config]).exit_code == 0
    taken = runner.invoke(main, ["peers", "add", "tablet", "--ip", f"{VPN}.9", *config])
    assert taken.exit_code != 0 and "taken" in taken.output
    outside = runner.invoke(main, ["peers", "add", "tablet", "--ip", "10.9.0.5", *config])
    assert outside.exit_code != 0 and "not a host address" in outside.output
    twice = runner.invoke(main, ["peers", "add", "phone", *config])
    assert twice.exit_code != 0 and "exists already" in twice.output
    assert runner.invoke(main, ["peers", "add", "../evil", *config]).exit_code != 0

    listed = runner.invoke(main, ["peers", "list", "--json", *config[:4]])
    assert listed.exit_code == 0 and private not in listed.output
    assert [p["name"] for p in json.loads(listed.output)] == ["phone", "laptop"]

    shown = runner.invoke(main, ["peers", "show", "phone", *config])
    assert shown.exit_code == 0 and "█" in shown.output and private not in shown.output

    server = bundle / "wireguard" / f"{SERVER_IF}.conf"
    peer_file = bundle / "wireguard" / "peers" / "phone.conf"
    assert _mode(server) == 0o600 and _mode(peer_file) == 0o600
    assert f"PrivateKey = {private}" in peer_file.read_text()
    assert f"Endpoint = {SUBNET}.1:51820" in peer_file.read_text()
    assert server.read_text().count("[Peer]") == 2

    removed = runner.invoke(main, ["peers", "remove", "laptop", *config])
    assert removed.exit_code == 0, removed.output
    assert server.read_text().count("[Peer]") == 1
    assert not (bundle / "wireguard" / "peers" / "laptop.conf").exists()


@contextmanager
def wireguard_go(ns: str, iface: str, conf: Path) -> Iterator[None]:
    """A userspace interface in ``ns`` configured from a wg-quick file (what `wg-quick up` would do)."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, "wireguard-go", "-f", iface], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        assert wait_until(lambda: Path(f"/var/run/wireguard/{iface}.sock").exists(), timeout=10)
        stripped = sh("wg-quick", "strip", str(conf))  # fails loudly on a field wg does not know
        sh("ip", "netns", "exec", ns, "wg", "setconf", iface, "/dev/stdin", input=stripped)
        text = conf.read_text()
        address = next(line.split("=", 1)[1].strip() for line in text.splitlines() if line.startswith("Address"))
        sh("ip", "-n", ns, "addr", "add", address, "dev", iface)
        sh("ip", "-n", ns, "link", "set", iface, "up")
        for line in text.splitlines():
            if line.startswith("AllowedIPs"):
                for network in line.split("=", 1)[1].split(","):
                    sh("ip", "-n", ns, "route", "replace", network.strip(), "dev", iface)
        yield
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.mark.skipif(
    shutil.which("wireguard-go") is None or shutil.which("wg-quick") is None,
    reason="wireguard-go / wg-quick are not installed (scripts/install --test installs them)",
)
def test_rendered_configs_bring_a_tunnel_up(runner: CliRunner, config: list[str], tmp_path: Path) -> None:
    assert runner.invoke(main, ["peers", "add", "phone", "--no-qr", *config]).exit_code == 0
    bundle = tmp_path / "bundle" / "wireguard"
    peer_conf = tmp_path / f"{PEER_IF}.conf"  # wg-quick names the interface after the file
    peer_conf.write_text((bundle / "peers" / "phone.conf").read_text())
    peer_conf.chmod(0o600)
    with (
        netns_pair("wg", SUBNET) as pair,
        serving_http(pair),
        wireguard_go(pair.a, SERVER_IF, bundle / f"{SERVER_IF}.conf"),
        wireguard_go(pair.b, PEER_IF, peer_conf),
    ):
        reply = pair.run_b("curl", "-s", "-m", "5", f"http://{VPN}.1:18080/")
        assert reply == "ok\n"
        handshakes = pair.run_a("wg", "show", SERVER_IF, "latest-handshakes").split()
        assert len(handshakes) == 2 and int(handshakes[1]) > 0


@contextmanager
def serving_http(pair: Pair) -> Iterator[None]:
    server = Path(__file__).parent / "fakes" / "ports_server.py"
    proc = subprocess.Popen(
        ["ip", "netns", "exec", pair.a, sys.executable, str(server), "18080"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        yield
    finally:
        proc.kill()
        proc.wait(5)
        assert proc.stdout is not None
        proc.stdout.close()
