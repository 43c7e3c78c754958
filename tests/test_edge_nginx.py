"""A real Nginx, rendered by `ark render`, in front of a running ARK (gateway + console) and stand-ins.

Nginx listens on free high ports of 127.0.0.1 with the self-signed bundle; curl reaches every site by
name with ``--resolve`` (SNI and Host as a browser would send them) and trusts the bundle's CA. The
services that cannot run here (Open WebUI, ComfyUI, Grafana, n8n, Prometheus, ChromaDB) are echo
servers that answer with the headers they received. The gateway streams from the Ollama stand-in,
slowed down, to show that llm.D does not buffer Server-Sent Events.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest
from click.testing import CliRunner

from ark.cli.main import main
from ark.edge.audit import check_sites, http_status
from ark.edge.ports import port_map
from tests.conftest import MASTER_KEY, ArkProcess, LoopThread, free_port, start_ark, stop_ark, wait_until
from tests.fakes.echo import EchoServer
from tests.fakes.ollama import FakeOllama

pytestmark = pytest.mark.skipif(
    shutil.which("nginx") is None or shutil.which("curl") is None,
    reason="nginx and curl are not installed (scripts/install --test installs them)",
)

D = "ark.test"
STAND_INS = ("chat", "art", "grafana", "n8n", "prometheus", "chromadb")
PROM_PASSWORD = "prom-secret-123"
USER, PASSWORD = "alice", "correct horse battery"  # an admin: every site behind the sign-in
PLAIN_USER = "bob"  # role user: n8n and chromadb are admin-only by default ([edge] site_roles)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-cased names; the last value of each
    body: str
    protocol: str = ""  # HTTP/1.1, HTTP/2

    def echoed(self) -> dict[str, str]:
        """The headers an echo stand-in received, names lower-cased."""
        headers: dict[str, str] = orjson.loads(self.body)["headers"]
        return {name.lower(): value for name, value in headers.items()}


@dataclass
class Edge:
    base: Path
    http: int
    https: int
    ark: ArkProcess
    echoes: dict[str, EchoServer]
    names: list[str] = field(default_factory=list)

    @property
    def bundle(self) -> Path:
        return self.base / "bundle"

    def url(self, name: str, path: str = "/") -> str:
        return f"https://{name}:{self.https}{path}"

    def curl(self, url: str, *args: str, jar: Path | None = None) -> Reply:
        resolve = [a for n in self.names for p in (self.http, self.https) for a in ("--resolve", f"{n}:{p}:127.0.0.1")]
        argv = ["curl", "-sS", "-i", "--max-time", "10", "--cacert", str(self.bundle / "certs" / "ca.pem"), *resolve]
        if jar is not None:
            argv += ["-b", str(jar), "-c", str(jar)]
        out = subprocess.run([*argv, *args, url], capture_output=True, timeout=20)
        assert out.returncode == 0, out.stderr.decode()
        return _parse(out.stdout.decode("utf-8", "replace"))

    def login(self, jar: Path, rd: str, user: str = USER) -> Reply:
        """Through Nginx to ARK's console: the form, its CSRF value, the post; returns the 303."""
        form = self.curl(self.url(D, f"/auth/login?rd={rd}"), jar=jar)
        assert form.status == 200, form
        csrf = re.search(r'name=csrf value="([^"]+)"', form.body)
        assert csrf, form.body
        fields = {"username": user, "password": PASSWORD, "csrf": csrf.group(1), "rd": rd}
        data = [arg for k, v in fields.items() for arg in ("--data-urlencode", f"{k}={v}")]
        return self.curl(self.url(D, "/auth/login"), *data, "-H", f"Origin: https://{D}:{self.https}", jar=jar)


def _parse(raw: str) -> Reply:
    head, _, body = raw.replace("\r\n", "\n").partition("\n\n")
    lines = head.split("\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    protocol, status = lines[0].split()[:2]
    return Reply(int(status), headers, body, protocol)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, loop_thread: LoopThread) -> Iterator[Edge]:
    if os.geteuid() != 0:
        pytest.skip("runs nginx as root (workers as www-data), as on a real box")
    tmp = tmp_path_factory.mktemp("edge")
    ollama = FakeOllama(models=("llama3.2:1b",), reply_tokens=8, token_delay=0.25)
    loop_thread.run(ollama.start())
    echoes = {name: EchoServer(name) for name in STAND_INS}
    for echo in echoes.values():
        loop_thread.run(echo.start())
    # Nginx's workers (www-data) read the htpasswd and write temp files: not under pytest's 0700 tmp
    base = Path(tempfile.mkdtemp(prefix="ark-edge-"))
    base.chmod(0o755)
    (base / "run").mkdir(mode=0o755)
    http, https, console = free_port(), free_port(), free_port()
    upstreams = ", ".join(f"{name}={echo.port}" for name, echo in echoes.items())
    config = (
        f'master_key = "{MASTER_KEY}"\n[gateway]\nlisten = "127.0.0.1:{{PORT}}"\n'
        f'[console]\nlisten = "127.0.0.1:{console}"\n'
        f'[engines.ollama]\nkind = "ollama"\nurl = "{ollama.url}"\n'
        f'[edge]\ndomain = "{D}"\nhttp_port = {http}\nhttps_port = {https}\nlisten_address = "127.0.0.1"\n'
        f'prometheus_password = "{PROM_PASSWORD}"\nnginx_run_dir = "{base / "run"}"\nupstreams = "{upstreams}"\n'
    )
    ark = start_ark(config, tmp, env={"ARK_CONSOLE_LISTEN": f"127.0.0.1:{console}"})
    conf = base / "bundle" / "nginx" / "nginx.conf"
    try:
        cli = ["--config", str(ark.config), "--data-dir", str(ark.data_dir)]
        runner = CliRunner()
        for name, role in ((USER, "admin"), (PLAIN_USER, "user")):
            add = ["users", "add", name, "--role", role, "--password-stdin", *cli]
            added = runner.invoke(main, add, input=PASSWORD + "\n")
            assert added.exit_code == 0, added.output
        rendered = runner.invoke(main, ["render", *cli, "--out", str(base / "bundle"), "--tls", "self-signed"])
        assert rendered.exit_code == 0, rendered.output
        error_log = str(base / "run" / "error.log")
        checked = subprocess.run(
            ["nginx", "-t", "-q", "-e", error_log, "-c", str(conf)], capture_output=True, text=True
        )
        assert checked.returncode == 0, checked.stderr
        subprocess.run(["nginx", "-e", error_log, "-c", str(conf)], check=True, timeout=10)
        assert wait_until(lambda: (base / "run" / "nginx.pid").exists(), timeout=10)
        names = [D, *(f"{s}.{D}" for s in ("axl", "chat", "llm", "art", "grafana", "n8n", "prometheus", "chromadb"))]
        yield Edge(base, http, https, ark, echoes, names)
    finally:
        _stop_nginx(base / "run" / "nginx.pid")
        stop_ark(ark)
        for echo in echoes.values():
            loop_thread.run(echo.stop())
        loop_thread.run(ollama.stop())
        shutil.rmtree(base, ignore_errors=True)


def _stop_nginx(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text())
    except (FileNotFoundError, ValueError):
        return
    os.kill(pid, signal.SIGTERM)  # the master we started; it stops its workers
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=10)


def test_http_redirects_to_https(edge: Edge) -> None:
    reply = edge.curl(f"http://chat.{D}:{edge.http}/c/1?x=2")
    assert reply.status == 301
    assert reply.headers["location"] == f"https://chat.{D}:{edge.https}/c/1?x=2"


def test_every_site_has_hsts_and_security_headers(edge: Edge) -> None:
    for name in edge.names:
        reply = edge.curl(edge.url(name))
        assert reply.headers.get("strict-transport-security") == "max-age=63072000; includeSubDomains", name
        assert reply.headers.get("x-content-type-options") == "nosniff", name
        assert reply.headers.get("x-frame-options") == "SAMEORIGIN", name
        assert reply.headers.get("referrer-policy") == "strict-origin-when-cross-origin", name
        assert "server" not in reply.headers or reply.headers["server"] == "nginx", name  # no version


def test_unknown_names_get_no_certificate(edge: Edge) -> None:
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-k",
            "--max-time",
            "5",
            "--resolve",
            f"evil.test:{edge.https}:127.0.0.1",
            f"https://evil.test:{edge.https}/",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0  # the handshake is refused


@pytest.mark.parametrize("site", ["chat", "art", "grafana", "n8n", "chromadb"])
def test_guarded_sites_send_strangers_to_the_login(edge: Edge, site: str) -> None:
    reply = edge.curl(edge.url(f"{site}.{D}", "/some/page"), "-H", "X-Trusted-Email: mallory@evil.test")
    assert reply.status == 302
    rd = f"https://{site}.{D}:{edge.https}/some/page"
    assert reply.headers["location"] == f"https://{D}:{edge.https}/auth/login?rd={rd}"


def test_login_through_ark_then_the_sites_see_who_it_is_and_never_a_forged_header(edge: Edge, tmp_path: Path) -> None:
    jar = tmp_path / "cookies.txt"
    rd = edge.url(f"chat.{D}", "/c/1")
    signed_in = edge.login(jar, rd)
    assert signed_in.status == 303, signed_in
    assert signed_in.headers["location"] == rd
    forged = [
        ("X-Trusted-Email", "mallory@evil.test"),
        ("x-trusted-name", "Mallory"),
        ("X-WEBAUTH-USER", "admin"),
        ("X-Ark-Identity", "forged"),
        ("X_Trusted_Email", "underscore@evil.test"),
    ]
    spoof = [arg for name, value in forged for arg in ("-H", f"{name}: {value}")]
    for site in ("chat", "art", "grafana", "n8n", "chromadb"):
        reply = edge.curl(edge.url(f"{site}.{D}", "/x"), *spoof, jar=jar)
        assert reply.status == 200, (site, reply)
        seen = reply.echoed()
        assert seen["x-trusted-email"] == f"{USER}@{D}", site
        assert seen["x-webauth-user"] == USER, site
        assert seen["x-ark-identity"] not in ("", "forged"), site
        assert "mallory" not in str(seen).lower() and "underscore" not in str(seen), site
        assert "x_trusted_email" not in seen, site


def test_a_plain_user_is_refused_the_admin_sites_whatever_the_request_claims(edge: Edge, tmp_path: Path) -> None:
    jar = tmp_path / "cookies.txt"
    assert edge.login(jar, edge.url(f"chat.{D}", "/"), user=PLAIN_USER).status == 303
    for site in ("chat", "art", "grafana"):
        reply = edge.curl(edge.url(f"{site}.{D}", "/x"), jar=jar)
        assert reply.status == 200 and reply.echoed()["x-webauth-user"] == PLAIN_USER, site
    # What a client might try to name another site with: the query, headers Nginx passes to the console,
    # the internal location itself. The site comes from the rendered location only.
    tries = [
        ("/x", []),
        ("/x?site=chat", []),
        ("/x?a=1&site=chat&site=chat", []),
        ("/x", ["-H", "X-Ark-Site: chat", "-H", "X-Original-URI: /?site=chat", "-H", "X-Forwarded-Host: chat." + D]),
        ("/_ark_auth?site=chat", []),
        ("/auth/verify?site=chat", []),
    ]
    for site in ("n8n", "chromadb"):
        for path, headers in tries:
            reply = edge.curl(edge.url(f"{site}.{D}", path), *headers, jar=jar)
            assert reply.status in (403, 404), (site, path, reply)  # 404: /_ark_auth is internal
            assert reply.status == 403 or path.startswith("/_ark_auth"), (site, path, reply)
            assert '"headers"' not in reply.body, (site, path)  # the stand-in was never asked
            assert "location" not in reply.headers, (site, path)  # a 403, not a trip to the login
    # SNI n8n.D with Host chat.D: one server block answers, with its own check and its own upstream, so
    # chat's check can never open n8n (Nginx picks the block by Host, or refuses the mismatch)
    host = edge.curl(edge.url(f"n8n.{D}", "/x"), "-H", f"Host: chat.{D}:{edge.https}", jar=jar)
    assert host.status == 421 or (host.status == 200 and orjson.loads(host.body)["service"] == "chat"), host
    admin = tmp_path / "admin.txt"
    assert edge.login(admin, edge.url(f"n8n.{D}", "/"), user=USER).status == 303
    opened = edge.curl(edge.url(f"n8n.{D}", "/x?site=chat"), jar=admin)
    assert opened.status == 200 and orjson.loads(opened.body)["service"] == "n8n"


def test_sites_without_auth_request_clear_identity_headers(edge: Edge) -> None:
    forged = ["-H", "X-Trusted-Email: mallory@evil.test", "-H", "X-WEBAUTH-USER: admin"]
    prometheus = edge.curl(edge.url(f"prometheus.{D}"), *forged, "-u", f"admin:{PROM_PASSWORD}")
    seen = prometheus.echoed()
    assert "x-trusted-email" not in seen and "x-webauth-user" not in seen
    assert "authorization" not in seen  # the basic-auth password stays at the edge


def test_prometheus_needs_basic_auth(edge: Edge) -> None:
    assert edge.curl(edge.url(f"prometheus.{D}")).status == 401
    assert edge.curl(edge.url(f"prometheus.{D}"), "-u", "admin:wrong-password").status == 401
    assert edge.curl(edge.url(f"prometheus.{D}"), "-u", f"admin:{PROM_PASSWORD}").status == 200


def test_llm_site_passes_the_api_key_and_streams_without_buffering(edge: Edge) -> None:
    assert edge.curl(edge.url(f"llm.{D}", "/v1/models")).status == 401  # the gateway's own key check
    body = '{"model": "llama3.2:1b", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'
    resolve = ["--resolve", f"llm.{D}:{edge.https}:127.0.0.1"]
    argv = ["curl", "-sS", "-N", "--max-time", "20", "--cacert", str(edge.bundle / "certs" / "ca.pem"), *resolve]
    argv += ["-H", f"Authorization: Bearer {MASTER_KEY}", "-H", "Content-Type: application/json", "-d", body]
    proc = subprocess.Popen([*argv, edge.url(f"llm.{D}", "/v1/chat/completions")], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    chunks, open_at_first = 0, None
    for line in proc.stdout:
        if line.startswith(b"data: "):
            chunks += 1
            if open_at_first is None:  # the first chunk came while the answer was still being generated
                open_at_first = proc.poll() is None
    assert proc.wait(20) == 0
    proc.stdout.close()
    assert chunks >= 8
    # eight tokens 0.25 s apart: buffered, nothing would arrive before the stream ended
    assert open_at_first is True


def test_gateway_metrics_through_the_llm_site_need_the_master_key(edge: Edge) -> None:
    # Behind Nginx every request comes from 127.0.0.1: the scrape's loopback exception must not open it
    metrics = edge.url(f"llm.{D}", "/metrics")
    for headers in ([], ["-H", "X-Real-IP: 127.0.0.1"], ["-H", "X-Forwarded-For: 127.0.0.1"]):
        refused = edge.curl(metrics, *headers)
        assert refused.status == 401, (headers, refused)
        assert orjson.loads(refused.body)["error"]["code"] == "invalid_api_key"
        assert "ark_" not in refused.body
    generated = httpx.post(
        edge.ark.url + "/key/generate", headers={"Authorization": f"Bearer {MASTER_KEY}"}, json={}, timeout=10
    )
    virtual = edge.curl(metrics, "-H", f"Authorization: Bearer {generated.json()['key']}")
    assert virtual.status == 403 and orjson.loads(virtual.body)["error"]["code"] == "admin_only", virtual
    opened = edge.curl(metrics, "-H", f"Authorization: Bearer {MASTER_KEY}")
    assert opened.status == 200 and "ark_inflight_requests" in opened.body
    assert httpx.get(edge.ark.url + "/metrics", timeout=5).status_code == 200  # Prometheus's own scrape


def _session_cookie(jar: Path) -> str:
    for line in jar.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) == 7 and fields[5] == "ark_session":
            return fields[6]
    raise AssertionError("no ark_session in the jar")


@pytest.mark.parametrize("http2", [False, True])
def test_the_applications_never_see_arks_cookies_and_keep_their_own(edge: Edge, tmp_path: Path, http2: bool) -> None:
    jar = tmp_path / "cookies.txt"
    assert edge.login(jar, edge.url(f"art.{D}", "/")).status == 303
    session = _session_cookie(jar)
    mine = f"ark_session={session}"
    # (Cookie headers sent, what the application must get). Over HTTP/2, curl sends two headers as two
    # `cookie` fields (crumbs), which Nginx joins into $http_cookie before the maps take ARK's out.
    cases = [
        ([f"{mine}; other=1"], "other=1"),
        ([f"a=0; {mine}; other=1"], "a=0; other=1"),
        ([f"other=1; {mine}"], "other=1"),
        ([f"ark_session=planted; other=1; {mine}"], "other=1"),
        ([f"ark_csrf=c; a=0; {mine}; other=1"], "a=0; other=1"),
        (["other=1", mine], "other=1"),  # two Cookie headers
        ([f"ark_session=x; ark_session=y; other=1; {mine}"], None),  # three: the header is dropped whole
        ([mine], None),
        ([f"{'a=1;' * 1000} {mine}; other=1"], "a=1;" * 999 + "a=1; other=1"),  # long: no regex gives up
    ]
    version = ["--http2"] if http2 else ["--http1.1"]
    for site in ("chat", "art", "grafana", "n8n", "chromadb", "prometheus"):
        auth = ["-u", f"admin:{PROM_PASSWORD}"] if site == "prometheus" else []
        for sent, expected in cases:
            headers = [arg for cookie in sent for arg in ("-H", f"Cookie: {cookie}")]
            reply = edge.curl(edge.url(f"{site}.{D}", "/x"), *version, *auth, *headers)
            assert reply.status == 200, (site, sent, reply)  # the sign-in check still read the session
            assert reply.protocol == ("HTTP/2" if http2 else "HTTP/1.1")
            seen = reply.echoed()
            assert seen.get("cookie") == expected, (site, sent, seen)
            assert session not in reply.body and "ark_csrf" not in reply.body, (site, sent)
            if site != "prometheus":
                assert seen["x-webauth-user"] == USER, (site, sent)


def test_websocket_upgrade_reaches_comfyui(edge: Edge, tmp_path: Path) -> None:
    jar = tmp_path / "cookies.txt"
    assert edge.login(jar, edge.url(f"art.{D}", "/")).status == 303
    headers = ["-H", "Connection: Upgrade", "-H", "Upgrade: websocket", "-H", "Sec-WebSocket-Version: 13"]
    headers += ["-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "--http1.1", "--max-time", "1.5"]
    tls = ["--cacert", str(edge.bundle / "certs" / "ca.pem"), "--resolve", f"art.{D}:{edge.https}:127.0.0.1"]
    argv = ["curl", "-sS", "-i", *tls, "-b", str(jar), *headers, edge.url(f"art.{D}", "/ws")]
    out = subprocess.run(argv, capture_output=True, text=True)
    assert out.stdout.startswith("HTTP/1.1 101"), out.stdout + out.stderr  # the upstream accepted the upgrade


def test_audit_sees_every_guarded_site_refuse_a_stranger(edge: Edge) -> None:
    from ark.config import load_settings

    settings = load_settings(config_path=edge.ark.config, env={"ARK_DATA_DIR": str(edge.ark.data_dir)})
    assert check_sites(settings, port_map(settings), http_status) == []
    assert http_status("127.0.0.1", edge.https, "/", f"chat.{D}") == 302
