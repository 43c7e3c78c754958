"""The firewall, enforced for real inside two network namespaces joined by a veth pair.

Namespace A is the ARK box (ports 4000, 8099, 5555 answer 200 when allowed), B a client with four
source addresses: an ordinary one (.2), one in a geo-blocked zone (.66), one on the scanner blocklist
(.70) and one in the "WireGuard" subnet (.130; the test's wireguard interface is A's eth0). Every rule
is loaded with `ark firewall apply --netns A`, never in this machine's own namespace; a module fixture
checks that the machine's own rules are the same afterwards. The IPv6 test gives both ends SUBNET6
addresses (::1 for A; ::2, ::66, ::70 for B) and probes the same way over IPv6. A dropped probe costs
its 1.5 s timeout; probes run in parallel.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from ark.cli.main import main
from ark.edge.apply import FirewallGuard
from ark.edge.blocklists import BlocklistStore
from ark.edge.firewall import ArkChains, ark_chains, firewall_plan, render_nft, restore_chains
from ark.edge.ports import port_map
from tests.conftest import MASTER_KEY, wait_until
from tests.netns import Pair, netns_pair, own_rules, sh

SUBNET = "10.231.7"
SUBNET6 = "fd07:231:7"  # the same layout over IPv6: A ::1, B ::2, geo-blocked ::66, blocklisted ::70
FAKES = Path(__file__).parent / "fakes"
TOOLS = ("nft", "iptables-restore", "ipset", "curl")


def _missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


pytestmark = pytest.mark.skipif(
    bool(_missing_tools()), reason=f"firewall tools missing ({_missing_tools()}): scripts/install --test installs them"
)


@pytest.fixture(scope="module", autouse=True)
def own_namespace_untouched() -> Iterator[None]:
    before = own_rules()
    yield
    assert own_rules() == before, "the machine's own firewall changed: a rule was loaded outside the test namespace"


def persist_settings(etc: Path) -> str:
    """[firewall] lines that make confirm persist under ``etc`` (a test must never write the real /etc)."""
    return (
        f'persist_nft_path = "{etc}/nftables.conf"\npersist_rules_v4_path = "{etc}/iptables/rules.v4"\n'
        f'persist_rules_v6_path = "{etc}/iptables/rules.v6"\npersist_ipsets_path = "{etc}/iptables/ipsets"\n'
    )


def _config(path: Path, backend: str, allow_tcp: str = "") -> Path:
    path.write_text(
        f'master_key = "{MASTER_KEY}"\n[gateway]\nlisten = "127.0.0.1:4000"\n'
        f'[wireguard]\ninterface = "eth0"\nsubnet = "{SUBNET}.128/26"\n'
        f'[firewall]\nconfirm_s = 5\nbackend = "{backend}"\nallow_tcp = "{allow_tcp}"\n'
        + persist_settings(path.parent / "etc")
    )
    return path


@contextmanager
def serving(pair: Pair, ports: tuple[int, ...]) -> Iterator[None]:
    """The ports answer 200 inside A, before any rule is loaded."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", pair.a, sys.executable, str(FAKES / "ports_server.py"), *map(str, ports)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        for host in (66, 70, 130):
            sh("ip", "-n", pair.b, "addr", "add", f"{SUBNET}.{host}/24", "dev", "eth0")
        assert wait_until(lambda: _reach(pair, 2, ports[0]), timeout=10), "baseline: A unreachable without rules"
        yield
    finally:
        proc.kill()
        proc.wait(5)
        assert proc.stdout is not None
        proc.stdout.close()


def _reach(pair: Pair, source: int | str, port: int) -> bool:
    """From B's address ``source`` (an int: SUBNET.N over IPv4; a str: SUBNET6::H over IPv6) to A's port."""
    if isinstance(source, int):
        address, url = f"{SUBNET}.{source}", f"http://{SUBNET}.1:{port}/"
    else:
        address, url = f"{SUBNET6}::{source}", f"http://[{SUBNET6}::1]:{port}/"
    curl = ["curl", "-g", "-s", "-o", "/dev/null", "-m", "1.5", "-w", "%{http_code}", "--interface", address]
    argv = ["ip", "netns", "exec", pair.b, *curl, url]
    return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout == "200"


Probe = tuple[int | str, int]


def _reachable(pair: Pair, probes: dict[Probe, bool]) -> dict[Probe, bool]:
    """All probes at once: each drop costs its timeout, in parallel they cost one."""
    with ThreadPoolExecutor(len(probes)) as pool:
        results = {key: pool.submit(_reach, pair, *key) for key in probes}
        return {key: future.result() for key, future in results.items()}


@contextmanager
def serving_dual_stack(pair: Pair, ports: tuple[int, ...], root: Path) -> Iterator[None]:
    """The ports answer 200 inside A over IPv6 and IPv4 (http.server on ``::`` is dual-stack)."""
    root.mkdir(exist_ok=True)
    procs = [
        subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                pair.a,
                sys.executable,
                "-m",
                "http.server",
                "-b",
                "::",
                "-d",
                str(root),
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    try:
        for port in ports:
            assert wait_until(lambda p=port: _reach(pair, "2", p), timeout=10), (
                f"baseline: [{SUBNET6}::1]:{port} unreachable"
            )
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(5)


def _apply(runner: CliRunner, config: Path, data: Path, out: Path, netns: str) -> None:
    args = ["firewall", "apply", "--config", str(config), "--data-dir", str(data), "--out", str(out)]
    result = runner.invoke(main, [*args, "--netns", netns])
    assert result.exit_code == 0, result.output


def _alive(pid: int) -> bool:
    """Running and not a zombie (the watcher is nobody's child once detached, so init reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _events(data: Path) -> list[object]:
    return [entry["event"] for entry in FirewallGuard(data).history()]


@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_ruleset_is_enforced_rolled_back_unless_confirmed_and_kept_when_confirmed(
    backend: str, runner: CliRunner, tmp_path: Path
) -> None:
    data, out = tmp_path / "data", tmp_path / "bundle"
    strict = _config(tmp_path / "strict.toml", backend)
    opened = _config(tmp_path / "opened.toml", backend, allow_tcp="5555")
    zone = tmp_path / "cn.zone"
    zone.write_text(f"# test zone\n{SUBNET}.64/26\n")
    added = runner.invoke(
        main, ["firewall", "geoblock", "add", str(zone), "--config", str(strict), "--data-dir", str(data)]
    )
    assert added.exit_code == 0 and "1 networks" in added.output, added.output
    blocked = runner.invoke(
        main, ["firewall", "block", f"{SUBNET}.70", "--config", str(strict), "--data-dir", str(data)]
    )
    assert blocked.exit_code == 0, blocked.output

    with netns_pair(backend[:2], SUBNET) as pair, serving(pair, (4000, 8099, 5555)):
        try:
            _apply(runner, strict, data, out, pair.a)
            expected = {(2, 4000): True, (2, 5555): False, (66, 4000): False, (2, 8099): False, (130, 8099): True}
            expected |= {(70, 4000): False}  # the scanner blocklist
            assert _reachable(pair, expected) == expected
            status = runner.invoke(main, ["firewall", "status", "--config", str(strict), "--data-dir", str(data)])
            assert "Waiting for confirmation" in status.output
            watcher = FirewallGuard(data).watcher_pid()
            assert watcher is not None and _alive(watcher)
            # --persist-netns: this test's persist paths are its own files, not the host's boot files
            confirm = ["firewall", "confirm", "--persist-netns", "--config", str(strict), "--data-dir", str(data)]
            confirmed = runner.invoke(main, confirm)
            assert confirmed.exit_code == 0, confirmed.output

            # confirmed: the watcher is gone (nothing is left that could roll back) and the rules stay
            assert wait_until(lambda: not _alive(watcher), timeout=5)
            assert _reachable(pair, {(2, 4000): True, (2, 5555): False}) == {(2, 4000): True, (2, 5555): False}
            assert _events(data) == ["armed", "applied", "confirmed"]
            persisted = {p: p.read_bytes() for p in (tmp_path / "etc").rglob("*") if p.is_file()}
            assert persisted, "confirm persists the rules"

            # a new apply opens 5555 ... and, unconfirmed, the strict rules come back by themselves
            _apply(runner, opened, data, out, pair.a)
            assert _reach(pair, 2, 5555)
            assert wait_until(lambda: "rolled_back" in _events(data), timeout=15), _events(data)
            after = _reachable(pair, {(2, 4000): True, (2, 5555): False, (66, 4000): False})
            assert after == {(2, 4000): True, (2, 5555): False, (66, 4000): False}
            # what rolled back was never persisted: the files still hold the confirmed rules
            assert {p: p.read_bytes() for p in (tmp_path / "etc").rglob("*") if p.is_file()} == persisted
        finally:
            FirewallGuard(data).pending_path.unlink(missing_ok=True)  # a watcher left behind exits


@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_ipv6_is_enforced_like_ipv4(backend: str, runner: CliRunner, tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "bundle"
    config = _config(tmp_path / "ark.toml", backend)
    base = ["--config", str(config), "--data-dir", str(data)]
    zone = tmp_path / "xx.zone"
    zone.write_text(f"{SUBNET}.64/26\n{SUBNET6}::60/124\n")  # ::60 to ::6f, one zone for both families
    added = runner.invoke(main, ["firewall", "geoblock", "add", str(zone), *base])
    assert added.exit_code == 0, added.output
    assert runner.invoke(main, ["firewall", "block", f"{SUBNET6}::70", *base]).exit_code == 0

    with netns_pair("6" + backend[:2], SUBNET) as pair:
        pair.add_ipv6(SUBNET6, ("66", "70"))
        with serving_dual_stack(pair, (4000, 8099, 5555), tmp_path / "www"):
            try:
                _apply(runner, config, data, out, pair.a)
                confirmed = runner.invoke(main, ["firewall", "confirm", *base])
                assert confirmed.exit_code == 0, confirmed.output  # no rollback half-way through the probes
                # forget the neighbours learnt before the rules: the allowed port now answers only when
                # neighbour discovery (ICMPv6 133-136) gets through the default-drop input chain
                for ns in (pair.a, pair.b):
                    sh("ip", "-n", ns, "neigh", "flush", "dev", "eth0")
                expected: dict[Probe, bool] = {
                    ("2", 4000): True,  # the gateway, open to all
                    ("2", 5555): False,  # not in the port map: dropped
                    ("2", 8099): False,  # the receiver: the VPN subnet only (an IPv4 one here)
                    ("66", 4000): False,  # geo-blocked
                    ("70", 4000): False,  # on the scanner blocklist
                    (2, 4000): True,  # IPv4 beside it still works
                }
                assert _reachable(pair, expected) == expected
                neighbours = pair.run_b("ip", "-6", "neigh", "show", "dev", "eth0")
                learnt = [line for line in neighbours.splitlines() if line.startswith(f"{SUBNET6}::1 ")]
                assert learnt and "lladdr" in learnt[0], neighbours  # learnt again, through the firewall
            finally:
                FirewallGuard(data).pending_path.unlink(missing_ok=True)


def _others(pair: Pair) -> dict[str, list[str]]:
    """A's filter tables and sets without ARK's objects (``-S``: no counters)."""
    listed = {tool: pair.run_a(tool, "-S").splitlines() for tool in ("iptables", "ip6tables")}
    others = {tool: [line for line in lines if "ARK-" not in line] for tool, lines in listed.items()}
    return others | {"sets": sorted(n for n in pair.run_a("ipset", "list", "-n").split() if not n.startswith("ark_"))}


def _arks(pair: Pair) -> dict[str, list[str]]:
    """ARK's chains, jumps and sets (with their members) in A."""
    listed = {tool: pair.run_a(tool, "-S").splitlines() for tool in ("iptables", "ip6tables")}
    arks = {tool: [line for line in lines if "ARK-" in line] for tool, lines in listed.items()}
    rows = [line.split() for line in pair.run_a("ipset", "save").splitlines()]
    return arks | {"sets": sorted(" ".join(w[:3]) for w in rows if len(w) >= 3 and w[1].startswith("ark_"))}


def test_iptables_touches_arks_chains_and_sets_only(runner: CliRunner, tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "bundle"
    strict = _config(tmp_path / "strict.toml", "iptables")
    opened = _config(tmp_path / "opened.toml", "iptables", allow_tcp="5555")
    base = ["--config", str(strict), "--data-dir", str(data)]
    assert runner.invoke(main, ["firewall", "block", f"{SUBNET}.70", *base]).exit_code == 0
    with netns_pair("fo", SUBNET) as pair, serving(pair, (4000, 5555)):
        # other software's objects: a chain jumped from INPUT, Docker's DOCKER-USER off FORWARD, a set
        pair.run_a("ipset", "create", "f2b-test", "hash:ip")
        for tool in ("iptables", "ip6tables"):
            pair.run_a(tool, "-N", "FOREIGN")
            pair.run_a(tool, "-A", "FOREIGN", "-p", "tcp", "--dport", "6000", "-j", "RETURN")
            pair.run_a(tool, "-A", "INPUT", "-j", "FOREIGN")
            pair.run_a(tool, "-N", "DOCKER-USER")
            pair.run_a(tool, "-A", "DOCKER-USER", "-j", "RETURN")
            pair.run_a(tool, "-I", "FORWARD", "-j", "DOCKER-USER")
        pair.run_a("iptables", "-A", "FOREIGN", "-m", "set", "--match-set", "f2b-test", "src", "-j", "DROP")
        others = _others(pair)
        try:
            # nothing of ARK's yet: its chain ends in the default DROP, INPUT jumps to it first, policy untouched
            _apply(runner, strict, data, out, pair.a)
            assert _others(pair) == others
            for tool in ("iptables", "ip6tables"):
                assert pair.run_a(tool, "-S", "INPUT").splitlines()[:3] == [
                    "-P INPUT ACCEPT",
                    "-A INPUT -j ARK-INPUT",
                    "-A INPUT -j FOREIGN",
                ]
                assert pair.run_a(tool, "-S", "ARK-INPUT").splitlines()[-1] == "-A ARK-INPUT -j DROP"
            assert _reachable(pair, {(2, 4000): True, (2, 5555): False}) == {(2, 4000): True, (2, 5555): False}

            # others add rules meanwhile (fail2ban's jump at the top, Docker's rules): a rollback keeps
            # them and removes ARK's chains, jump and sets, since there were none
            pair.run_a("iptables", "-N", "f2b-sshd")
            pair.run_a("iptables", "-A", "f2b-sshd", "-j", "RETURN")
            pair.run_a("iptables", "-I", "INPUT", "1", "-j", "f2b-sshd")
            pair.run_a("ip6tables", "-I", "DOCKER-USER", "1", "-s", "fd00:99::/64", "-j", "RETURN")
            others = _others(pair)
            assert runner.invoke(main, ["firewall", "rollback", *base]).exit_code == 0
            assert _events(data)[-1] == "rolled_back", FirewallGuard(data).history()[-1]
            assert _others(pair) == others
            assert _arks(pair) == {"iptables": [], "ip6tables": [], "sets": []}
            assert _reach(pair, 2, 5555)

            # confirmed ARK rules; fail2ban's jump moves above ARK's, and a new apply leaves INPUT's order alone
            _apply(runner, strict, data, out, pair.a)
            assert runner.invoke(main, ["firewall", "confirm", *base]).exit_code == 0
            assert _others(pair) == others
            pair.run_a("iptables", "-D", "INPUT", "-j", "f2b-sshd")
            pair.run_a("iptables", "-I", "INPUT", "1", "-j", "f2b-sshd")
            hooked, confirmed = pair.run_a("iptables", "-S", "INPUT"), _arks(pair)
            assert hooked.splitlines()[1:3] == ["-A INPUT -j f2b-sshd", "-A INPUT -j ARK-INPUT"]
            assert runner.invoke(main, ["firewall", "block", f"{SUBNET}.71", *base]).exit_code == 0
            _apply(runner, opened, data, out, pair.a)
            assert pair.run_a("iptables", "-S", "INPUT") == hooked  # one jump, where it was
            assert _reach(pair, 2, 5555) and _arks(pair) != confirmed

            # a rollback brings ARK's confirmed chains and set members back, and keeps what others added
            pair.run_a("iptables", "-A", "DOCKER-USER", "-s", "10.98.0.0/16", "-j", "RETURN")
            others = _others(pair)
            assert runner.invoke(main, ["firewall", "rollback", *base]).exit_code == 0
            assert _events(data)[-1] == "rolled_back", FirewallGuard(data).history()[-1]
            assert _arks(pair) == confirmed and _others(pair) == others
            assert pair.run_a("iptables", "-S", "INPUT") == hooked
            assert _reachable(pair, {(2, 4000): True, (2, 5555): False}) == {(2, 4000): True, (2, 5555): False}
        finally:
            FirewallGuard(data).pending_path.unlink(missing_ok=True)


def test_restore_chains_puts_back_arks_part_only() -> None:
    hook = "-A INPUT -j ARK-INPUT"
    applied = ark_chains(
        "*filter\n:INPUT ACCEPT [5:300]\n:ARK-INPUT - [0:0]\n:FOREIGN - [0:0]\n"
        f"{hook}\n-A INPUT -j FOREIGN\n{hook}\n-A ARK-INPUT -p tcp -m tcp --dport 22 -j ACCEPT\n"
        "-A ARK-INPUT -j DROP\n-A FOREIGN -j RETURN\nCOMMIT\n"
    )
    assert applied.chains == {"ARK-INPUT": ("-A ARK-INPUT -p tcp -m tcp --dport 22 -j ACCEPT", "-A ARK-INPUT -j DROP")}
    assert applied.jumps == (hook, hook) and ark_chains(applied.text()) == applied
    # nothing before: ARK's chain emptied, both jumps deleted, the chain removed; FOREIGN never named
    assert restore_chains(ArkChains(), applied).splitlines() == [
        "*filter",
        ":ARK-INPUT - [0:0]",
        "-D INPUT -j ARK-INPUT",
        "-D INPUT -j ARK-INPUT",
        "-X ARK-INPUT",
        "COMMIT",
    ]
    # ARK's rules before, its jump removed by hand since: refilled and hooked again at the top
    before = ArkChains({"ARK-INPUT": ("-A ARK-INPUT -j DROP",)}, (hook,))
    assert restore_chains(before, ArkChains({"ARK-INPUT": ()}, ())).splitlines() == [
        "*filter",
        ":ARK-INPUT - [0:0]",
        "-A ARK-INPUT -j DROP",
        "-I INPUT 1 -j ARK-INPUT",
        "COMMIT",
    ]


def test_a_ruleset_that_does_not_load_changes_nothing(runner: CliRunner, tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "bundle"
    config = _config(tmp_path / "ark.toml", "nft")
    with netns_pair("bad", SUBNET) as pair:
        runner.invoke(
            main, ["render", "--only", "firewall", "--config", str(config), "--data-dir", str(data), "--out", str(out)]
        )
        (out / "firewall" / "ruleset.nft").write_text("table inet ark { chain input { nonsense } }\n")
        guard = FirewallGuard(data)
        from ark.errors import EdgeError

        with pytest.raises(EdgeError, match="does not load"):
            guard.apply(out, "nft", 5, pair.a)
        assert guard.pending() is None
        assert "table inet ark" not in pair.run_a("nft", "list", "ruleset")


def test_plan_opens_what_the_port_map_says(tmp_path: Path) -> None:
    from ark.config import load_settings

    config = _config(tmp_path / "ark.toml", "nft", allow_tcp="8443")
    settings = load_settings(config_path=config, env={})
    plan = firewall_plan(settings, port_map(settings), BlocklistStore(tmp_path).load())
    assert plan.public_tcp == (80, 443, 8443) and plan.public_udp == (51820,)
    assert plan.gateway_port == 4000 and plan.vpn_tcp == (8099, 11434) and plan.bridge_tcp == (9100, 9835)
    text = render_nft(plan)
    assert "policy drop;" in text and "flush ruleset" not in text  # Docker's tables survive an apply
    assert f'iifname "eth0" ip saddr {SUBNET}.128/26 tcp dport {{ 8099, 11434 }} accept' in text


def test_blocklist_and_zones_are_checked_and_rendered(runner: CliRunner, tmp_path: Path) -> None:
    config = _config(tmp_path / "ark.toml", "nft")
    base = ["--config", str(config), "--data-dir", str(tmp_path / "data")]
    assert runner.invoke(main, ["firewall", "block", "203.0.113.7", "2001:db8::/32", *base]).exit_code == 0
    bad = tmp_path / "xx.zone"
    bad.write_text("10.0.0.0/8\nnot-a-network\n")
    refused = runner.invoke(main, ["firewall", "geoblock", "add", str(bad), *base])
    assert refused.exit_code != 0 and "xx.zone:2" in refused.output
    out = tmp_path / "bundle"
    assert runner.invoke(main, ["render", "--only", "firewall", "--out", str(out), *base]).exit_code == 0
    nft = (out / "firewall" / "ruleset.nft").read_text()
    assert "203.0.113.7/32" in nft and "2001:db8::/32" in nft
    assert "add ark_scan4 203.0.113.7/32" in (out / "firewall" / "ipsets").read_text()
    assert runner.invoke(main, ["firewall", "unblock", "203.0.113.7", *base]).exit_code == 0
    assert runner.invoke(main, ["render", "--only", "firewall", "--out", str(out), *base]).exit_code == 0
    assert "203.0.113.7" not in (out / "firewall" / "ruleset.nft").read_text()
