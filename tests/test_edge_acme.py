"""`ark certs letsencrypt` / `ark certs renew`: certbot's commands, and a real issue against Pebble.

The live test runs Let's Encrypt's test CA (Pebble) on free ports of 127.0.0.1, with
pebble-challtestsrv as its DNS server answering 127.0.0.1 for every name; Pebble validates
HTTP-01 on the port where a real Nginx, started from a self-signed render, serves the bundle's
webroot. certbot trusts Pebble's API through REQUESTS_CA_BUNDLE; the HTTPS check trusts Pebble's
issuing root (its management port, /roots/0) and nothing else.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ark.cli.main import main
from ark.config import Settings, load_settings
from ark.edge.acme import Acme, CertbotDirs, Probe, Reporter, certonly_argv, lineage_server, renew_argv
from ark.edge.certs import certbot_commands
from ark.edge.render import make_context, render_files
from ark.errors import EdgeError
from tests.conftest import MASTER_KEY, free_port, wait_until
from tests.test_edge_nginx import _stop_nginx

D = "ark.test"
NAMES = [D, *(f"{s}.{D}" for s in ("axl", "chat", "llm", "art", "grafana", "n8n", "prometheus", "chromadb"))]
LIVE_TOOLS = ("pebble", "pebble-challtestsrv", "certbot", "nginx", "curl")


def _settings(tmp_path: Path, extra: str = "") -> Settings:
    path = tmp_path / "ark.toml"
    path.write_text(f'master_key = "{MASTER_KEY}"\n[edge]\ndomain = "{D}"\nemail = "ops@{D}"\n{extra}')
    return load_settings(config_path=path, data_dir=tmp_path / "data", env={})


# -- commands and plumbing, with certbot and Nginx replaced ----------------------------------------


class Recorder:
    """Stands in for certbot and nginx: records each command, fails the names it is told to."""

    def __init__(self, fail: Sequence[str] = ()) -> None:
        self.calls: list[list[str]] = []
        self.fail = set(fail)

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        name = argv[argv.index("-d") + 1] if "-d" in argv else None
        if name in self.fail:
            message = f"Certbot failed to authenticate some domains\n  Domain: {name}\n  Detail: 404 Not Found"
            return subprocess.CompletedProcess(list(argv), 1, "", message)
        return subprocess.CompletedProcess(list(argv), 0, "", "")


def _serving(webroot: Path) -> Probe:
    """An Nginx that serves the webroot: answers with the file the check put there."""

    def probe(address: str, port: int, path: str, host: str) -> bytes | None:
        return (webroot / path.lstrip("/")).read_bytes()

    return probe


class Recording(Reporter):
    def __init__(self) -> None:
        self.steps: list[str] = []
        self.outcomes: list[tuple[str, bool]] = []

    def step(self, text: str) -> None:
        self.steps.append(text)

    def outcome(self, text: str, ok: bool = True) -> None:
        self.outcomes.append((text, ok))


@pytest.fixture
def tools(monkeypatch: pytest.MonkeyPatch) -> None:
    """certbot and nginx look installed (the Recorder answers for them)."""
    monkeypatch.setattr(shutil, "which", lambda tool: f"/usr/bin/{tool}")


def test_settings_default_to_lets_encrypt_production(tmp_path: Path) -> None:
    assert _settings(tmp_path).edge.acme_directory == "https://acme-v02.api.letsencrypt.org/directory"
    staging = 'acme_directory = "https://acme-staging-v02.api.letsencrypt.org/directory"\n'
    assert "staging" in _settings(tmp_path, staging).edge.acme_directory


def test_certbot_commands_use_arks_directories(tmp_path: Path) -> None:
    dirs = CertbotDirs.under(tmp_path / "data")
    argv = certonly_argv("chat.ark.test", tmp_path / "out" / "acme", dirs, "ops@ark.test", "https://ca/dir")
    assert argv[:3] == ["certbot", "certonly", "--webroot"]
    for flag, value in [
        ("-w", str(tmp_path / "out" / "acme")),
        ("-d", "chat.ark.test"),
        ("--cert-name", "chat.ark.test"),
        ("--server", "https://ca/dir"),
        ("-m", "ops@ark.test"),
        ("--config-dir", str(tmp_path / "data" / "certbot" / "config")),
        ("--work-dir", str(tmp_path / "data" / "certbot" / "work")),
        ("--logs-dir", str(tmp_path / "data" / "certbot" / "logs")),
    ]:
        assert argv[argv.index(flag) + 1] == value, flag
    assert {"--non-interactive", "--agree-tos", "--keep-until-expiring"} <= set(argv)
    anonymous = certonly_argv("x", tmp_path, dirs, "", "https://ca/dir", force=True)
    assert "--register-unsafely-without-email" in anonymous and "-m" not in anonymous
    assert "--force-renewal" in anonymous and "--keep-until-expiring" not in anonymous
    renew = renew_argv(dirs)
    assert renew[:2] == ["certbot", "renew"] and "--no-random-sleep-on-renew" in renew
    assert "--config-dir" in renew and "--force-renewal" in renew_argv(dirs, force=True)


def test_lineage_server_reads_certbots_renewal_file() -> None:
    conf = "version = 2.1.0\n[renewalparams]\nauthenticator = webroot\nserver = https://ca.example/dir/\n"
    assert lineage_server(conf) == "https://ca.example/dir"
    assert lineage_server("[renewalparams]\n") is None


def test_letsencrypt_sites_read_certbots_live_directory_under_the_data_dir(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    files = render_files(make_context(settings, tmp_path / "out", "letsencrypt"), ["certs", "nginx"])
    chat = files["nginx/sites/chat_ark_test.conf"].content.decode()
    live = tmp_path / "data" / "certbot" / "config" / "live" / "chat.ark.test"
    assert f'ssl_certificate "{live}/fullchain.pem";' in chat
    assert f'ssl_certificate_key "{live}/privkey.pem";' in chat
    script = files["certs/certbot.sh"].content.decode()
    assert f'exec ark certs letsencrypt --out "{tmp_path / "out"}" "$@"' in script
    assert certbot_commands(["a.test"], "", tmp_path / "acme").count("(none: [edge] email is empty)") == 1


def test_obtain_issues_every_name_then_renders_checks_and_skips_a_stopped_nginx(tmp_path: Path, tools: None) -> None:
    webroot = tmp_path / "out" / "acme"
    settings = _settings(tmp_path, f'nginx_run_dir = "{tmp_path / "run"}"\n')
    runner = Recorder()
    report = Recording()
    result = Acme(settings, tmp_path / "out", runner=runner, probe=_serving(webroot)).obtain(report=report)
    assert result.names == NAMES and not result.reloaded
    issued = [argv[argv.index("-d") + 1] for argv in runner.calls if argv[:2] == ["certbot", "certonly"]]
    assert issued == NAMES
    conf = str(tmp_path / "out" / "nginx" / "nginx.conf")
    assert runner.calls[-1] == ["nginx", "-t", "-q", "-e", str(tmp_path / "run" / "error.log"), "-c", conf]
    assert any("not running" in note for note in result.notes)  # no pid file: no reload attempted
    assert (tmp_path / "out" / "nginx" / "sites" / "chat_ark_test.conf").is_file()
    assert report.steps[0].startswith("checking") and report.steps[-1] == "nginx -t"
    assert (f"chat.{D}: issued", True) in report.outcomes and report.outcomes[-1] == ("nginx -t passed", True)
    assert not list((webroot / ".well-known" / "acme-challenge").iterdir())  # the check cleaned up


def test_obtain_reloads_a_running_nginx_unless_told_not_to(tmp_path: Path, tools: None) -> None:
    webroot = tmp_path / "out" / "acme"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "nginx.pid").write_text(f"{os.getpid()}\n")  # a live process
    settings = _settings(tmp_path, f'nginx_run_dir = "{tmp_path / "run"}"\n')
    runner = Recorder()
    assert Acme(settings, tmp_path / "out", runner=runner, probe=_serving(webroot)).obtain().reloaded
    assert runner.calls[-1][-2:] == ["-s", "reload"]
    runner = Recorder()
    result = Acme(settings, tmp_path / "out", runner=runner, probe=_serving(webroot)).obtain(reload=False, check=False)
    assert not result.reloaded and runner.calls[-1][:2] == ["nginx", "-t"]


def test_obtain_reports_certbots_message_for_each_failed_name_and_renders_nothing(tmp_path: Path, tools: None) -> None:
    runner = Recorder(fail=[f"chat.{D}", f"n8n.{D}"])
    with pytest.raises(EdgeError) as caught:
        Acme(_settings(tmp_path), tmp_path / "out", runner=runner).obtain(check=False)
    message = str(caught.value)
    assert message.startswith("certbot failed (ark.test, axl.ark.test, llm.ark.test, "), message
    assert str(tmp_path / "data" / "certbot" / "logs") in message
    assert f"Domain: chat.{D}" in message and f"Domain: n8n.{D}" in message and "404 Not Found" in message
    assert len([c for c in runner.calls if c[0] == "certbot"]) == 9  # one failure does not stop the others
    assert not any(c[0] == "nginx" for c in runner.calls)
    assert not (tmp_path / "out" / "nginx").exists()


def test_obtain_gives_up_when_the_first_names_all_fail(tmp_path: Path, tools: None) -> None:
    runner = Recorder(fail=NAMES)
    with pytest.raises(EdgeError, match="the first 2 names failed, the rest were not tried"):
        Acme(_settings(tmp_path), tmp_path / "out", runner=runner).obtain(check=False)
    assert len(runner.calls) == 2  # a CA that cannot be reached fails every name the same way


def test_obtain_refuses_when_nginx_does_not_serve_the_webroot(tmp_path: Path, tools: None) -> None:
    runner = Recorder()
    acme = Acme(_settings(tmp_path), tmp_path / "out", runner=runner, probe=lambda *_: None)
    with pytest.raises(EdgeError, match=r"does not serve .* at /\.well-known/acme-challenge/ for ark\.test, axl"):
        acme.obtain()
    assert runner.calls == []  # nothing asked of the CA


def test_a_certificate_from_another_directory_is_replaced(tmp_path: Path, tools: None) -> None:
    settings = _settings(tmp_path)
    renewal = tmp_path / "data" / "certbot" / "config" / "renewal"
    renewal.mkdir(parents=True)
    (renewal / f"chat.{D}.conf").write_text("server = https://acme-staging-v02.api.letsencrypt.org/directory\n")
    (renewal / f"llm.{D}.conf").write_text(f"server = {settings.edge.acme_directory}\n")
    runner = Recorder()
    Acme(settings, tmp_path / "out", runner=runner).obtain(check=False)
    forced = {c[c.index("-d") + 1] for c in runner.calls if "--force-renewal" in c}
    assert forced == {f"chat.{D}"}


def test_renew_reloads_only_when_a_certificate_changed(tmp_path: Path, tools: None) -> None:
    settings = _settings(tmp_path)
    live = tmp_path / "data" / "certbot" / "config" / "live" / f"chat.{D}"
    live.mkdir(parents=True)
    (live / "cert.pem").write_text("old")
    runner = Recorder()
    assert Acme(settings, tmp_path / "out", runner=runner).renew().names == []
    assert [c[:2] for c in runner.calls] == [["certbot", "renew"]]

    def renewing(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        if argv[:2] == ["certbot", "renew"]:
            (live / "cert.pem").write_text("new")
        return runner(argv)

    runner.calls.clear()
    result = Acme(settings, tmp_path / "out", runner=renewing).renew(force=True)
    assert result.names == [f"chat.{D}"] and "--force-renewal" in runner.calls[0]
    assert runner.calls[1][:2] == ["nginx", "-t"]


def test_renew_that_fails_for_some_still_reloads_the_ones_renewed(tmp_path: Path, tools: None) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "nginx.pid").write_text(f"{os.getpid()}\n")  # a live process
    settings = _settings(tmp_path, f'nginx_run_dir = "{tmp_path / "run"}"\n')
    live = tmp_path / "data" / "certbot" / "config" / "live"
    for name in (f"chat.{D}", f"llm.{D}"):
        (live / name).mkdir(parents=True)
        (live / name / "cert.pem").write_text("old")
    runner = Recorder()

    def partly(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        if argv[:2] != ["certbot", "renew"]:
            return runner(argv)
        runner.calls.append(list(argv))
        (live / f"chat.{D}" / "cert.pem").write_text("new")
        failure = f"The following certificates could not be renewed:\n  {live}/llm.{D}/fullchain.pem (failure)\n"
        return subprocess.CompletedProcess(list(argv), 1, "", failure)

    with pytest.raises(EdgeError) as caught:
        Acme(settings, tmp_path / "out", runner=partly).renew()
    message = str(caught.value)
    assert [c[:2] for c in runner.calls] == [["certbot", "renew"], ["nginx", "-t"], ["nginx", "-e"]]
    assert runner.calls[-1][-2:] == ["-s", "reload"]  # the renewed certificate is served now
    assert message.startswith(f"renewed chat.{D} (Nginx reloaded), but certbot renew failed for llm.{D};"), message
    # nothing renewed: nothing to reload, only certbot's failure
    runner.calls.clear()
    with pytest.raises(EdgeError, match=f"^certbot renew failed for llm.{D}"):
        Acme(settings, tmp_path / "out", runner=partly).renew()
    assert [c[:2] for c in runner.calls] == [["certbot", "renew"]]


def test_renew_without_certificates_says_what_to_run(tmp_path: Path, tools: None) -> None:
    with pytest.raises(EdgeError, match="run `ark certs letsencrypt` first"):
        Acme(_settings(tmp_path), tmp_path / "out", runner=Recorder()).renew()


# -- the real thing: certbot, Pebble, Nginx --------------------------------------------------------


@dataclass
class LiveEdge:
    base: Path
    config: Path
    http: int
    https: int
    pebble_ca: Path  # what Pebble's API serves TLS with (certbot trusts it)
    management: int

    @property
    def cli(self) -> list[str]:
        return ["--config", str(self.config), "--data-dir", str(self.base / "data"), "--out", str(self.bundle)]

    @property
    def bundle(self) -> Path:
        return self.base / "bundle"

    @property
    def live(self) -> Path:
        return self.base / "data" / "certbot" / "config" / "live"

    def root(self) -> Path:
        """Pebble's issuing root (a fresh one each time Pebble starts)."""
        reply = httpx.get(
            f"https://127.0.0.1:{self.management}/roots/0",
            verify=ssl.create_default_context(cafile=self.pebble_ca),
            timeout=10,
        )
        reply.raise_for_status()
        path = self.base / "pebble-root.pem"
        path.write_bytes(reply.content)
        return path

    def https_status(self, name: str, root: Path) -> str:
        """``verify-result status`` of an HTTPS request that trusts only ``root``."""
        argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{ssl_verify_result} %{http_code}", "--max-time", "5"]
        argv += ["--cacert", str(root), "--resolve", f"{name}:{self.https}:127.0.0.1"]
        out = subprocess.run([*argv, f"https://{name}:{self.https}/auth/verify"], capture_output=True, text=True)
        return out.stdout if out.returncode == 0 else f"curl {out.returncode}: {out.stderr.strip()}"


def _pebble_tls(folder: Path) -> tuple[Path, Path]:
    """A certificate for Pebble's API on 127.0.0.1 (Debian's pebble ships none), self-signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "pebble.pem", folder / "pebble.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def _answers(url: str, ca: Path) -> bool:
    try:
        return httpx.get(url, verify=ssl.create_default_context(cafile=ca), timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def live_edge() -> Iterator[LiveEdge]:
    missing = [tool for tool in LIVE_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (scripts/install --test installs them)")
    if os.geteuid() != 0:
        pytest.skip("runs nginx as root (workers as www-data), as on a real box")
    # Nginx's workers (www-data) read the webroot and write temp files: not under pytest's 0700 tmp
    base = Path(tempfile.mkdtemp(prefix="ark-acme-"))
    base.chmod(0o755)
    (base / "run").mkdir(mode=0o755)
    http, https, api, management, dns, dns_management = (free_port() for _ in range(6))
    cert, key = _pebble_tls(base)
    (base / "pebble.json").write_text(
        '{"pebble": {'
        f'"listenAddress": "127.0.0.1:{api}", "managementListenAddress": "127.0.0.1:{management}", '
        f'"certificate": "{cert}", "privateKey": "{key}", "httpPort": {http}, "tlsPort": {free_port()}, '
        '"ocspResponderURL": "", "externalAccountBindingRequired": false}}'
    )
    config = base / "ark.toml"
    config.write_text(
        f'master_key = "{MASTER_KEY}"\n[edge]\ndomain = "{D}"\nemail = "ops@{D}"\n'
        f'http_port = {http}\nhttps_port = {https}\nlisten_address = "127.0.0.1"\n'
        f'nginx_run_dir = "{base / "run"}"\nacme_directory = "https://127.0.0.1:{api}/dir"\n'
    )
    procs: list[subprocess.Popen[bytes]] = []
    logs = base / "logs"
    logs.mkdir()
    try:
        # every A query answers 127.0.0.1 (no AAAA: Nginx listens on IPv4 only); the other servers off
        dns_argv = ["pebble-challtestsrv", "-dns01", f"127.0.0.1:{dns}", "-http01", "", "-https01", ""]
        dns_argv += ["-tlsalpn01", "", "-management", f"127.0.0.1:{dns_management}", "-defaultIPv6", ""]
        with (logs / "challtestsrv.log").open("wb") as log:
            procs.append(subprocess.Popen(dns_argv, stdout=log, stderr=subprocess.STDOUT))
        # no random validation sleeps, no rejected nonces: the test runs at full speed
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
        pebble_argv = ["pebble", "-config", str(base / "pebble.json"), "-strict=false"]
        with (logs / "pebble.log").open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [*pebble_argv, "-dnsserver", f"127.0.0.1:{dns}"], stdout=log, stderr=subprocess.STDOUT, env=env
                )
            )
        assert wait_until(lambda: _answers(f"https://127.0.0.1:{api}/dir", cert), timeout=15), (
            logs / "pebble.log"
        ).read_text()
        edge = LiveEdge(base, config, http, https, cert, management)
        # first start: Nginx with a self-signed render, serving the webroot on the HTTP port
        rendered = CliRunner().invoke(main, ["render", *edge.cli, "--tls", "self-signed"])
        assert rendered.exit_code == 0, rendered.output
        conf, error_log = str(edge.bundle / "nginx" / "nginx.conf"), str(base / "run" / "error.log")
        subprocess.run(["nginx", "-e", error_log, "-c", conf], check=True, timeout=10)
        assert wait_until(lambda: (base / "run" / "nginx.pid").exists(), timeout=10)
        yield edge
    finally:
        _stop_nginx(base / "run" / "nginx.pid")
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(base, ignore_errors=True)


def _subject_names(pem: bytes) -> list[str]:
    cert = x509.load_pem_x509_certificate(pem)
    return list(
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    )


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def _eventually_verified(edge: LiveEdge, name: str, root: Path) -> str:
    """A reload swaps workers gracefully: the first answers may still come from an old one."""
    seen = ""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        seen = edge.https_status(name, root)
        if seen.startswith("0 "):
            break
        time.sleep(0.1)
    return seen


def _served_serial(port: int, name: str) -> int:
    """Serial number of the certificate Nginx shows for ``name`` (not verified: just looked at)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_letsencrypt_against_pebble_issues_installs_and_reloads(live_edge: LiveEdge) -> None:
    edge = live_edge
    root = edge.root()
    assert edge.https_status(f"chat.{D}", root).startswith("curl 60")  # still the local CA's certificate
    env = {"REQUESTS_CA_BUNDLE": str(edge.pebble_ca)}
    result = CliRunner(env=env).invoke(main, ["certs", "letsencrypt", *edge.cli])
    assert result.exit_code == 0, result.output
    output = result.output
    assert "OK 9 certificates" in output and "Nginx reloaded" in output
    for name in NAMES:
        chain = (edge.live / name / "fullchain.pem").read_bytes()
        assert _subject_names(chain) == [name]
        assert chain.count(b"BEGIN CERTIFICATE") == 2  # the leaf and Pebble's intermediate
        assert (edge.live / name / "privkey.pem").is_file()
    checked = subprocess.run(
        [
            "nginx",
            "-t",
            "-q",
            "-e",
            str(edge.base / "run" / "error.log"),
            "-c",
            str(edge.bundle / "nginx" / "nginx.conf"),
        ],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stderr
    assert (
        str(edge.live / f"chat.{D}" / "fullchain.pem")
        in (edge.bundle / "nginx" / "sites" / "chat_ark_test.conf").read_text()
    )
    # verified against Pebble's root alone; /auth/verify is Nginx's own 404 on the console's names
    assert _eventually_verified(edge, D, root) == "0 404"
    for name in NAMES:
        assert edge.https_status(name, root).startswith("0 "), name


def test_renew_against_pebble_replaces_the_certificates(live_edge: LiveEdge) -> None:
    edge = live_edge
    if not (edge.live / f"chat.{D}" / "cert.pem").exists():
        pytest.skip("needs the certificates of test_letsencrypt_against_pebble_issues_installs_and_reloads")
    before = _serial(edge.live / f"chat.{D}" / "cert.pem")
    runner = CliRunner(env={"REQUESTS_CA_BUNDLE": str(edge.pebble_ca)})
    due = runner.invoke(main, ["certs", "renew", *edge.cli])
    assert due.exit_code == 0, due.output
    assert "renewed: none due" in due.output and _serial(edge.live / f"chat.{D}" / "cert.pem") == before
    forced = runner.invoke(main, ["certs", "renew", "--force", *edge.cli])
    assert forced.exit_code == 0, forced.output
    assert f"chat.{D}" in forced.output and "Nginx reloaded" in forced.output
    after = _serial(edge.live / f"chat.{D}" / "cert.pem")
    assert after != before
    root = edge.root()

    assert wait_until(
        lambda: _served_serial(edge.https, f"chat.{D}") == after, timeout=10
    )  # Nginx serves the renewed one
    assert edge.https_status(f"chat.{D}", root).startswith("0 ")
