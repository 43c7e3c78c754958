"""Persisting a confirmed ruleset: the files confirm writes load, and reproduce the rules, in a fresh namespace.

Every rule is loaded inside network namespaces made here (A: where ARK applies, B: a fresh one that
loads only the persisted files, as a boot would); the persistence paths point under tmp_path, never
at /etc. An apply in a namespace is not persisted (the boot files are the host's) unless confirm
gets the hidden --persist-netns, which these tests pass to check the files a confirm writes. A
module fixture checks that the machine's own rules are the same afterwards.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from ark.cli.main import main
from ark.config import load_settings
from ark.edge.apply import FirewallGuard, Pending
from ark.edge.audit import FirewallState, check_persisted
from ark.edge.persist import (
    MARK,
    NFT_MODE,
    Persisted,
    Persister,
    PersistStatus,
    keep_previous,
    persisted_files,
)
from ark.errors import EdgeError
from tests.conftest import MASTER_KEY
from tests.netns import netns_pair, own_rules
from tests.test_edge_firewall import persist_settings

SUBNET = "10.231.9"
TOOLS = ("nft", "iptables-restore", "ip6tables-restore", "ipset")
DEBIAN_NFTABLES_CONF = """#!/usr/sbin/nft -f

flush ruleset

table inet filter {
\tchain input {
\t\ttype filter hook input priority filter;
\t}
}
"""


def _missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


@pytest.fixture(scope="module", autouse=True)
def own_namespace_untouched() -> Iterator[None]:
    before = own_rules()
    yield
    assert own_rules() == before, "the machine's own firewall changed: a rule was loaded outside the test namespace"


needs_tools = pytest.mark.skipif(
    bool(_missing_tools()), reason=f"firewall tools missing ({_missing_tools()}): scripts/install --test installs them"
)


def _config(tmp_path: Path, backend: str, allow_tcp: str = "", persist: bool = True) -> Path:
    path = tmp_path / f"ark-{backend}-{allow_tcp or 'strict'}-{persist}.toml"
    path.write_text(
        f'master_key = "{MASTER_KEY}"\n[wireguard]\ninterface = "eth0"\nsubnet = "{SUBNET}.128/26"\n'
        f'[firewall]\nconfirm_s = 30\nbackend = "{backend}"\nallow_tcp = "{allow_tcp}"\n'
        f"persist = {str(persist).lower()}\n" + persist_settings(tmp_path / "etc")
    )
    return path


def _ark(runner: CliRunner, config: Path, tmp_path: Path, *args: str) -> Result:
    result = runner.invoke(main, [*args, "--config", str(config), "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    return result


def _apply(runner: CliRunner, config: Path, tmp_path: Path, netns: str) -> Result:
    return _ark(runner, config, tmp_path, "firewall", "apply", "--out", str(tmp_path / "bundle"), "--netns", netns)


def _text(result: Result) -> str:
    return result.output


def _persister(tmp_path: Path, config: Path) -> Persister:
    return Persister(FirewallGuard(tmp_path / "data"), load_settings(config_path=config, env={}).firewall)


def _set_members(saved: str) -> list[str]:
    """ARK's sets and their members from ``ipset save`` (without sizes and hash seeds)."""
    rows = [line.split() for line in saved.splitlines()]
    return sorted(" ".join(words[:3]) for words in rows if len(words) >= 3 and words[1].startswith("ark_"))


def _etc(tmp_path: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in sorted((tmp_path / "etc").rglob("*")) if path.is_file()}


@needs_tools
def test_nft_confirm_persists_a_table_scoped_file_that_reproduces_the_ruleset(
    runner: CliRunner, tmp_path: Path
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    conf = etc / "nftables.conf"
    conf.write_text(DEBIAN_NFTABLES_CONF)
    conf.chmod(0o755)
    strict, opened = _config(tmp_path, "nft"), _config(tmp_path, "nft", allow_tcp="5555")
    with netns_pair("pn", SUBNET) as pair:
        # another program's table (Docker's, libvirt's) in both namespaces: loading the file must keep it
        for ns in (pair.run_a, pair.run_b):
            ns("nft", "add", "table", "ip", "other")
            ns("nft", "add", "chain", "ip", "other", "forward", "{ type filter hook forward priority 0; }")
        _apply(runner, strict, tmp_path, pair.a)
        assert conf.read_text() == DEBIAN_NFTABLES_CONF, "apply alone persists nothing"
        confirmed = _text(_ark(runner, strict, tmp_path, "firewall", "confirm", "--persist-netns"))
        assert "Persisted" in confirmed and ".ark-previous" in confirmed

        text = conf.read_text()
        assert text.startswith("#!/usr/sbin/nft -f\n") and MARK in text
        commands = [line.strip() for line in text.splitlines() if not line.startswith("#")]
        assert "flush ruleset" not in commands and "delete table inet ark" in commands
        assert conf.stat().st_mode & 0o7777 == NFT_MODE  # as Debian ships /etc/nftables.conf
        previous = etc / "nftables.conf.ark-previous"
        assert previous.read_text() == DEBIAN_NFTABLES_CONF and previous.stat().st_mode & 0o7777 == 0o755

        # check mode, then a "boot" in the fresh namespace B: the same table, the other one untouched
        pair.run_b("nft", "-c", "-f", str(conf))
        pair.run_b("nft", "-f", str(conf))
        listed = pair.run_a("nft", "-s", "list", "table", "inet", "ark")
        assert "tcp dport 5555" not in listed
        assert pair.run_b("nft", "-s", "list", "table", "inet", "ark") == listed
        assert "table ip other" in pair.run_b("nft", "list", "tables")
        pair.run_a("nft", "-f", str(conf))  # `systemctl reload nftables` while running: A keeps its other table
        assert "table ip other" in pair.run_a("nft", "list", "tables")

        status = _text(_ark(runner, strict, tmp_path, "firewall", "status"))
        assert "as written" in status and "The loaded rules are the persisted ones." in status
        assert _persister(tmp_path, strict).status().loaded == "same"

        # an apply that is rolled back writes nothing; meanwhile status says the loaded rules differ
        before = _etc(tmp_path)
        _apply(runner, opened, tmp_path, pair.a)
        assert "DIFFER" in _text(_ark(runner, strict, tmp_path, "firewall", "status"))
        _ark(runner, strict, tmp_path, "firewall", "rollback")
        assert _etc(tmp_path) == before
        assert "The loaded rules are the persisted ones." in _text(_ark(runner, strict, tmp_path, "firewall", "status"))

        # a second confirm rewrites the file but keeps the first .ark-previous (the distribution's file)
        _apply(runner, opened, tmp_path, pair.a)
        _ark(runner, opened, tmp_path, "firewall", "confirm", "--persist-netns")
        assert "tcp dport { 80, 443, 5555 } accept" in conf.read_text()
        assert previous.read_text() == DEBIAN_NFTABLES_CONF

        # a file changed by hand is reported by status and by the audit check
        with conf.open("a") as f:
            f.write("# edited\n")
        assert "CHANGED" in _text(_ark(runner, opened, tmp_path, "firewall", "status"))
        problems = check_persisted(_persister(tmp_path, opened).status(), FirewallState(True, True, False))
        assert [(p.check, p.subject) for p in problems] == [("not-persisted", str(conf))]


@needs_tools
def test_iptables_confirm_persists_files_netfilter_persistent_loads(runner: CliRunner, tmp_path: Path) -> None:
    config = _config(tmp_path, "iptables")
    zone = tmp_path / "cn.zone"
    zone.write_text(f"{SUBNET}.64/26\n2001:db8::/32\n")
    _ark(runner, config, tmp_path, "firewall", "geoblock", "add", str(zone))
    iptables = tmp_path / "etc" / "iptables"
    with netns_pair("pi", SUBNET) as pair:
        _apply(runner, config, tmp_path, pair.a)
        assert not iptables.exists(), "apply alone persists nothing"
        _ark(runner, config, tmp_path, "firewall", "confirm", "--persist-netns")
        files = {name: iptables / name for name in ("ipsets", "rules.v4", "rules.v6")}
        for path in files.values():
            assert path.read_text().startswith(MARK)
            assert path.stat().st_mode & 0o7777 == 0o640  # as `netfilter-persistent save` leaves them

        # in the fresh namespace B, what netfilter-persistent runs at boot: sets first, then the rules
        pair.run_b("ipset", "restore", "-exist", "-file", str(files["ipsets"]))
        for tool, name in (("iptables-restore", "rules.v4"), ("ip6tables-restore", "rules.v6")):
            pair.run_b(tool, "--test", str(files[name]))
            pair.run_b(tool, str(files[name]))
        for tool in ("iptables", "ip6tables"):
            for chain in ("INPUT", "ARK-INPUT"):
                assert pair.run_b(tool, "-S", chain) == pair.run_a(tool, "-S", chain)
            # INPUT's policy is not ARK's: INPUT jumps to ARK's chain, which ends in the default DROP
            assert pair.run_b(tool, "-S", "INPUT") == "-P INPUT ACCEPT\n-A INPUT -j ARK-INPUT\n"
            assert pair.run_b(tool, "-S", "ARK-INPUT").splitlines()[-1] == "-A ARK-INPUT -j DROP"
        members = {ns: _set_members(run("ipset", "save")) for ns, run in (("a", pair.run_a), ("b", pair.run_b))}
        assert members["b"] == members["a"]
        assert {f"add ark_geo4 {SUBNET}.64/26", "add ark_geo6 2001:db8::/32"} <= set(members["b"])

        status = _text(_ark(runner, config, tmp_path, "firewall", "status"))
        assert status.count("as written") == 3 and "The loaded rules are the persisted ones." in status


@needs_tools
def test_persist_off_writes_nothing_and_says_so(runner: CliRunner, tmp_path: Path) -> None:
    config = _config(tmp_path, "nft", persist=False)
    with netns_pair("po", SUBNET) as pair:
        _apply(runner, config, tmp_path, pair.a)
        confirmed = _text(_ark(runner, config, tmp_path, "firewall", "confirm", "--persist-netns"))
    assert "Not persisted" in confirmed and "reboot" in confirmed
    assert not (tmp_path / "etc").exists()
    assert "persist = false" in _text(_ark(runner, config, tmp_path, "firewall", "status"))


@needs_tools
def test_an_apply_in_a_namespace_is_not_persisted_into_the_hosts_boot_files(runner: CliRunner, tmp_path: Path) -> None:
    config = _config(tmp_path, "nft")
    with netns_pair("pd", SUBNET) as pair:
        _apply(runner, config, tmp_path, pair.a)
        confirmed = _text(_ark(runner, config, tmp_path, "firewall", "confirm"))
    assert f"applied in namespace {pair.a}: not persisted (boot files are the host's)" in confirmed
    assert "Persisted" not in confirmed and not (tmp_path / "etc").exists()
    assert not _persister(tmp_path, config).record_path.exists()


def test_persister_refuses_an_apply_made_in_a_namespace(tmp_path: Path) -> None:
    persister = _persister(tmp_path, _config(tmp_path, "nft"))
    pending = Pending(token="t", backend="nft", netns="ark-test", deadline=0.0, rollback=[], applied=[])
    with pytest.raises(EdgeError, match=r"applied in namespace ark-test: not persisted \(boot files are the host's\)"):
        persister.persist(pending)
    assert not (tmp_path / "etc").exists() and not persister.record_path.exists()


def test_persisted_files_and_the_previous_copy(tmp_path: Path) -> None:
    settings = load_settings(config_path=_config(tmp_path, "iptables"), env={})
    applied = {"ruleset.nft": b"table inet ark {}\n", "ipsets": b"s\n", "rules.v4": b"*filter\n", "rules.v6": b"6\n"}
    (nft,) = persisted_files("nft", settings.firewall, applied)
    assert nft.path == tmp_path / "etc" / "nftables.conf" and nft.mode == 0o755
    assert nft.content.startswith(b"#!/usr/sbin/nft -f\n") and nft.content.endswith(b"\ntable inet ark {}\n")
    targets = persisted_files("iptables", settings.firewall, applied)
    assert [t.path.name for t in targets] == ["ipsets", "rules.v4", "rules.v6"]
    assert {t.mode for t in targets} == {0o640}

    path = tmp_path / "rules.v4"
    assert keep_previous(path) is None  # nothing there: nothing kept
    path.write_text("operator's rules\n")
    path.chmod(0o600)
    kept = keep_previous(path)
    assert kept == tmp_path / "rules.v4.ark-previous" and kept.read_text() == "operator's rules\n"
    assert kept.stat().st_mode & 0o7777 == 0o600
    path.write_text("other rules\n")
    assert keep_previous(path) is None and kept.read_text() == "operator's rules\n"  # once
    kept.unlink()
    path.write_text(f"{MARK}: ...\n")
    assert keep_previous(path) is None  # ARK's own file is never "the previous one"


def test_audit_check_of_persistence() -> None:
    loaded, nothing = FirewallState(True, True, False), FirewallState(True, False, False)
    record = Persisted("t", "nft", None, 0.0, {"/etc/nftables.conf": "x"}, "y")
    never = PersistStatus(True, None, {}, "unknown", ("/etc/nftables.conf",))
    assert [(p.check, p.severity) for p in check_persisted(never, loaded)] == [("not-persisted", "warning")]
    assert check_persisted(never, nothing) == []  # no-firewall reports that
    assert check_persisted(PersistStatus(False, None, {}, "unknown", ()), loaded) == []  # persist = false
    same = PersistStatus(True, record, {"/etc/nftables.conf": "same"}, "same", ("/etc/nftables.conf",))
    assert check_persisted(same, loaded) == []
    drift = PersistStatus(True, record, {"/etc/nftables.conf": "missing"}, "differs", ("/etc/nftables.conf",))
    assert [p.subject for p in check_persisted(drift, loaded)] == ["/etc/nftables.conf", "firewall"]
