"""`ark render`: the bundle passes nginx -t, re-rendering changes nothing, and what the files promise."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import bcrypt
import orjson
import pytest
from click.testing import CliRunner

from ark.cli.main import main
from ark.config import Settings, load_settings
from ark.edge.certs import self_signed_files
from ark.edge.files import MANIFEST, Entry, FileSpec, digest, track, write_atomic, write_files, write_tracked
from ark.edge.htpasswd import htpasswd
from ark.edge.render import make_context, render_bundle, render_files
from ark.edge.sites import IDENTITY_HEADERS
from ark.edge.wireguard import PeerStore
from ark.errors import ConfigError, EdgeError
from tests.conftest import MASTER_KEY

D = "ark.test"
CONFIG = f"""master_key = "{MASTER_KEY}"
[edge]
domain = "{D}"
prometheus_password = "prom-secret-123"
upload_max_bytes = "50MiB"
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "ark.toml"
    path.write_text(CONFIG)
    return path


def _render(runner: CliRunner, config: Path, out: Path, *extra: str) -> str:
    result = runner.invoke(
        main,
        ["render", "--config", str(config), "--data-dir", str(config.parent / "data"), "--out", str(out), *extra],
    )
    assert result.exit_code == 0, result.output
    return result.output


def _snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_ino, stat.S_IMODE(p.stat().st_mode))
        for p in root.rglob("*")
        if p.is_file()
    }


def test_render_twice_changes_no_file(runner: CliRunner, config: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    first = _render(runner, config, out, "--tls", "self-signed")
    assert "0 unchanged" in first
    before = _snapshot(out)
    for part in ("nginx/nginx.conf", "nginx/htpasswd/prometheus", "wireguard/wg0.conf", "firewall/ruleset.nft"):
        assert part in before
    assert "certs/chat.ark.test/privkey.pem" in before and "certs/ca.key" in before
    second = _render(runner, config, out, "--tls", "self-signed")
    assert "0 changed" in second
    assert _snapshot(out) == before  # same mtime, same inode, same mode: nothing rewritten


def test_render_refuses_without_a_domain(runner: CliRunner, tmp_path: Path) -> None:
    config = tmp_path / "ark.toml"
    config.write_text(f'master_key = "{MASTER_KEY}"\n')
    result = runner.invoke(main, ["render", "--config", str(config), "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "[edge] domain" in result.output


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed (scripts/install --test)")
def test_the_whole_configuration_passes_nginx_t(runner: CliRunner, config: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    _render(runner, config, out, "--tls", "self-signed")
    # -e: the error log nginx opens before reading the config; the rendered one is /var/log/nginx/error.log
    result = subprocess.run(
        ["nginx", "-t", "-e", str(tmp_path / "error.log"), "-c", str(out / "nginx" / "nginx.conf")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def _settings(tmp_path: Path, extra: str = "") -> Settings:
    path = tmp_path / "ark.toml"
    path.write_text(CONFIG + extra)
    return load_settings(config_path=path, data_dir=tmp_path / "data", env={})


def test_every_proxied_location_sets_every_identity_header(tmp_path: Path) -> None:
    files = render_files(make_context(_settings(tmp_path), tmp_path / "out", "letsencrypt"), ["nginx"])
    sites = {k: v.content.decode() for k, v in files.items() if k.startswith("nginx/sites/") and "default" not in k}
    assert len(sites) == 9
    for name, text in sites.items():
        for block in re.findall(r"location [^{]*\{(.*?)\n    \}", text, re.S):
            if "proxy_pass http://ark_" not in block:
                continue
            for header, _ in IDENTITY_HEADERS:
                assert f"proxy_set_header {header} " in block, (name, header)
        assert f'ssl_certificate "{tmp_path}/data/certbot/config/live/' in text  # `ark certs letsencrypt`
    chat = sites["nginx/sites/chat_ark_test.conf"]
    assert "auth_request /_ark_auth;" in chat and "error_page 401 = @login;" in chat
    assert "client_max_body_size 52428800;" in chat and "proxy_set_header Upgrade $http_upgrade;" in chat
    llm = sites["nginx/sites/llm_ark_test.conf"]
    assert "auth_request" not in llm and "proxy_buffering off;" in llm
    assert "client_max_body_size 8388608;" in llm  # [gateway] max_body_bytes
    prometheus = sites["nginx/sites/prometheus_ark_test.conf"]
    assert "auth_request" not in prometheus and "auth_basic_user_file" in prometheus
    # the gateway's per-client connection cap, held by Nginx for the clients behind it (all 127.0.0.1 to ARK)
    assert "limit_conn_zone $binary_remote_addr zone=ark_conn:10m;" in files["nginx/ark-http.conf"].content.decode()
    assert all("limit_conn ark_conn 256;" in text and "limit_conn_status 429;" in text for text in sites.values())


def test_only_the_console_gets_arks_cookies(tmp_path: Path) -> None:
    from ark.console import CSRF_COOKIE, SESSION_COOKIE
    from ark.edge.nginx import ARK_COOKIES

    assert set(ARK_COOKIES) == {SESSION_COOKIE, CSRF_COOKIE}  # the names the maps take out are the console's
    files = render_files(make_context(_settings(tmp_path), tmp_path / "out", "letsencrypt"), ["nginx"])
    assert "map $ark_cookie_2 $ark_app_cookie {" in files["nginx/ark-http.conf"].content.decode()
    for path, spec in files.items():
        if not path.startswith("nginx/sites/") or "default" in path:
            continue
        console = path in ("nginx/sites/ark_test.conf", "nginx/sites/axl_ark_test.conf")
        for block in re.findall(r"location [^{]*\{(.*?)\n    \}", spec.content.decode(), re.S):
            if "proxy_pass http://ark_" in block:  # every application's location; not /_ark_auth
                assert ("proxy_set_header Cookie $ark_app_cookie;" in block) != console, path


def test_login_redirect_names_the_public_port(tmp_path: Path) -> None:
    settings = _settings(tmp_path, "https_port = 8443\n")
    files = render_files(make_context(settings, tmp_path / "out", "letsencrypt"), ["nginx"])
    chat = files["nginx/sites/chat_ark_test.conf"].content.decode()
    assert 'return 302 "https://ark.test:8443/auth/login?rd=$scheme://$host:8443$request_uri";' in chat


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("domain", '"ark.test; include /etc/passwd"'),
        ("domain", '"-bad.example"'),
        ("upstreams", '"chat=3000; evil"'),
        ("nginx_user", '"www-data; daemon off"'),
        ("listen_address", '"localhost"'),
    ],
)
def test_values_that_would_inject_directives_are_refused(tmp_path: Path, key: str, value: str) -> None:
    path = tmp_path / "ark.toml"
    path.write_text(f'master_key = "{MASTER_KEY}"\n[edge]\n{key} = {value}\n')
    with pytest.raises(ConfigError, match=key):
        load_settings(config_path=path, env={})


def test_upstream_overrides_may_not_move_arks_own_ports(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="console"):
        make_context(_settings(tmp_path, 'upstreams = "console=9999"\n'), tmp_path, None)


def test_htpasswd_is_bcrypt_and_kept_while_the_password_is_the_same() -> None:
    line = htpasswd("admin", "prom-secret-123", None)
    user, hashed = line.strip().split(":", 1)
    assert user == "admin" and hashed.startswith("$2b$") and bcrypt.checkpw(b"prom-secret-123", hashed.encode())
    assert htpasswd("admin", "prom-secret-123", line.encode()) == line
    assert htpasswd("admin", "another-password", line.encode()) != line
    assert htpasswd("admin", "", None).startswith("#")  # no password: nobody gets in


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_self_signed_certificates_verify_against_their_ca_and_are_reused(tmp_path: Path) -> None:
    files = self_signed_files(D, [f"chat.{D}", D], lambda _: None)
    write_files(tmp_path, files)
    verify = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(tmp_path / "certs/ca.pem"),
            str(tmp_path / f"certs/chat.{D}/fullchain.pem"),
        ],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stderr
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-text", "-in", str(tmp_path / f"certs/chat.{D}/fullchain.pem")],
        capture_output=True,
        text=True,
    ).stdout
    assert f"DNS:chat.{D}" in text
    assert stat.S_IMODE((tmp_path / f"certs/chat.{D}/privkey.pem").stat().st_mode) == 0o600

    def existing(relative: str) -> bytes | None:
        path = tmp_path / relative
        return path.read_bytes() if path.exists() else None

    assert self_signed_files(D, [f"chat.{D}", D], existing) == files
    # a month before expiry, a new leaf is made (the CA is kept)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=380)
    renewed = self_signed_files(D, [f"chat.{D}"], existing, now=later)
    assert renewed["certs/ca.pem"] == files["certs/ca.pem"]
    assert renewed[f"certs/chat.{D}/fullchain.pem"] != files[f"certs/chat.{D}/fullchain.pem"]


def test_the_local_ca_cannot_sign_for_other_domains(tmp_path: Path) -> None:
    from cryptography import x509

    ca = x509.load_pem_x509_certificate(self_signed_files(D, [], lambda _: None)["certs/ca.pem"].content)
    constraints = ca.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical and [n.value for n in constraints.value.permitted_subtrees or []] == [D]


def test_write_atomic_leaves_an_unchanged_file_alone_and_fixes_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "a" / "secret"
    assert write_atomic(path, b"x", 0o600) is True
    first = path.stat()
    os.chmod(path, 0o644)
    assert write_atomic(path, b"x", 0o600) is False
    assert path.stat().st_mtime_ns == first.st_mtime_ns and path.stat().st_ino == first.st_ino
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert write_atomic(path, b"y", 0o600) is True and path.read_bytes() == b"y"
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_write_files_stays_inside_its_directory(tmp_path: Path) -> None:
    with pytest.raises(EdgeError, match="outside"):
        write_files(tmp_path, {"../escape": FileSpec(b"x")})


def test_certs_self_signed_command(runner: CliRunner, config: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    base = ["--config", str(config), "--data-dir", str(tmp_path / "data"), "--out", str(out)]
    result = runner.invoke(main, ["certs", "self-signed", *base])
    assert result.exit_code == 0, result.output
    assert "ca.pem" in result.output
    subs = ("axl", "chat", "llm", "art", "grafana", "n8n", "prometheus", "chromadb")
    names = {p.name for p in (out / "certs").iterdir() if p.is_dir()}
    assert names == {D, *(f"{sub}.{D}" for sub in subs)}
    assert not (out / "nginx").exists()  # only the certificates


# -- pruning: what an earlier render wrote and this one no longer produces --------------------------


def _manifest(out: Path) -> dict[str, object]:
    files = orjson.loads((out / MANIFEST).read_bytes())["files"]
    assert isinstance(files, dict)
    return files


def test_render_removes_what_it_no_longer_renders_and_nothing_else(
    runner: CliRunner, config: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bundle"
    _render(runner, config, out, "--tls", "self-signed")
    assert "nginx/sites/chat_ark_test.conf" in _manifest(out)
    assert stat.S_IMODE((out / MANIFEST).stat().st_mode) == 0o600
    (out / "nginx" / "sites" / "zz-mine.conf").write_text("# the operator's own site\n")
    (out / "notes.txt").write_text("mine\n")
    edited = out / "nginx" / "sites" / "grafana_ark_test.conf"
    edited.write_text(edited.read_text() + "# tuned by hand\n")

    config.write_text(CONFIG.replace(f'domain = "{D}"', 'domain = "other.test"'))
    output = _render(runner, config, out, "--tls", "self-signed")
    sites = out / "nginx" / "sites"
    assert not (sites / "chat_ark_test.conf").exists() and (sites / "chat_other_test.conf").is_file()
    assert "removed nginx/sites/chat_ark_test.conf (no longer rendered)" in output
    assert not (out / "certs" / f"chat.{D}").exists()  # its key and certificate went, then the emptied folder
    assert (out / "certs" / "chat.other.test" / "privkey.pem").is_file()
    # never written by ARK: never touched
    assert (sites / "zz-mine.conf").read_text() == "# the operator's own site\n"
    assert (out / "notes.txt").read_text() == "mine\n"
    # written by ARK, edited since: set aside under a name nginx's sites/*.conf does not load, and said so
    assert not edited.exists()
    assert (sites / "grafana_ark_test.conf.ark-stale").read_text().endswith("# tuned by hand\n")
    assert (
        "kept nginx/sites/grafana_ark_test.conf as nginx/sites/grafana_ark_test.conf.ark-stale: "
        "no longer rendered, but edited since ARK wrote it"
    ) in output
    manifest = _manifest(out)
    assert "nginx/sites/chat_other_test.conf" in manifest
    assert not any(D in path or "ark-stale" in path or "mine" in path for path in manifest)

    before = _snapshot(out)
    again = _render(runner, config, out, "--tls", "self-signed")
    assert "0 changed" in again and "removed" not in again and "kept" not in again
    assert _snapshot(out) == before  # the manifest too is left alone when nothing changed


def test_a_partial_render_prunes_only_its_own_part(runner: CliRunner, config: Path, tmp_path: Path) -> None:
    out, data = tmp_path / "bundle", tmp_path / "data"
    store = PeerStore(data, "10.8.0.0/24")
    store.add("phone", None)
    store.add("laptop", None)
    _render(runner, config, out)
    peers = out / "wireguard" / "peers"
    assert {p.name for p in peers.iterdir()} == {"phone.conf", "laptop.conf"}

    store.remove("laptop")
    config.write_text(CONFIG.replace(f'domain = "{D}"', 'domain = "other.test"'))
    output = _render(runner, config, out, "--only", "wireguard")
    assert "removed wireguard/peers/laptop.conf" in output and "1 removed" in output
    assert {p.name for p in peers.iterdir()} == {"phone.conf"}
    # nginx did not run: its files from the old domain are still on record and on disk
    assert (out / "nginx" / "sites" / "chat_ark_test.conf").is_file()
    assert "nginx/sites/chat_ark_test.conf" in _manifest(out)

    output = _render(runner, config, out, "--only", "nginx")
    assert "removed nginx/sites/chat_ark_test.conf" in output and "wireguard" not in output
    assert not (out / "nginx" / "sites" / "chat_ark_test.conf").exists()
    assert (peers / "phone.conf").is_file() and (out / "certs" / "certbot.sh").is_file()


def test_peers_remove_says_what_went(runner: CliRunner, config: Path, tmp_path: Path) -> None:
    base = ["--config", str(config), "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "bundle")]
    assert runner.invoke(main, ["peers", "add", "phone", "--no-qr", *base]).exit_code == 0
    peer = tmp_path / "bundle" / "wireguard" / "peers" / "phone.conf"
    assert peer.is_file()
    result = runner.invoke(main, ["peers", "remove", "phone", *base])
    assert result.exit_code == 0, result.output
    assert not peer.exists() and "removed phone" in result.output


def test_an_interrupted_render_loses_track_of_nothing(
    runner: CliRunner, config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "bundle"
    _render(runner, config, out)
    first = (out / MANIFEST).read_bytes()
    config.write_text(CONFIG.replace(f'domain = "{D}"', 'domain = "other.test"'))

    # the manifest's own write is cut short: the old manifest stays whole, no temporary file is left
    real_replace = os.replace

    def cut(src: str | Path, dst: str | Path) -> None:
        if Path(dst).name == MANIFEST:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr("ark.edge.files.os.replace", cut)
    with pytest.raises(KeyboardInterrupt):
        render_bundle(make_context(load_settings(config_path=config, data_dir=tmp_path / "data", env={}), out))
    monkeypatch.undo()
    assert (out / MANIFEST).read_bytes() == first
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

    # a crash after the files were written, before the pruning: both renders' files are on record
    def crash(*_: object) -> None:
        raise RuntimeError("power cut")

    monkeypatch.setattr("ark.edge.files._prune", crash)
    args = ["render", "--config", str(config), "--data-dir", str(tmp_path / "data"), "--out", str(out)]
    assert runner.invoke(main, args).exit_code != 0
    monkeypatch.undo()
    manifest = _manifest(out)
    assert {"nginx/sites/chat_ark_test.conf", "nginx/sites/chat_other_test.conf"} <= set(manifest)

    output = _render(runner, config, out)
    assert "removed nginx/sites/chat_ark_test.conf" in output
    assert "nginx/sites/chat_ark_test.conf" not in _manifest(out)


def test_a_first_tracked_render_says_older_files_stay(runner: CliRunner, config: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    (out / "nginx" / "sites").mkdir(parents=True)
    (out / "nginx" / "sites" / "old_site.conf").write_text("server {}\n")
    output = _render(runner, config, out, "--only", "nginx")
    assert f"no {MANIFEST} here yet" in output
    assert (out / "nginx" / "sites" / "old_site.conf").is_file()
    assert f"no {MANIFEST}" not in _render(runner, config, out, "--only", "nginx")


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b'{"version": 2, "files": {}}',
        b'{"version": 1, "files": {"../../etc/passwd": {"part": "nginx", "sha256": []}}}',
        b'{"version": 1, "files": {"/etc/passwd": {"part": "nginx", "sha256": []}}}',
    ],
)
def test_a_manifest_ark_did_not_write_stops_the_render(
    runner: CliRunner, config: Path, tmp_path: Path, content: bytes
) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    (out / MANIFEST).write_bytes(content)
    args = ["render", "--config", str(config), "--data-dir", str(tmp_path / "data"), "--out", str(out)]
    result = runner.invoke(main, args)
    assert result.exit_code == 1 and "not a manifest ARK wrote" in result.output
    assert [p.name for p in out.iterdir()] == [MANIFEST] and (out / MANIFEST).read_bytes() == content


def test_pruning_leaves_what_is_no_longer_a_plain_file(tmp_path: Path) -> None:
    write_tracked(tmp_path, {"a": {"x/link": FileSpec(b"1"), "x/dir": FileSpec(b"2"), "keep": FileSpec(b"3")}})
    target = tmp_path / "elsewhere"
    target.write_bytes(b"1")  # same content as ARK wrote: still not to be deleted through a link
    (tmp_path / "x" / "link").unlink()
    (tmp_path / "x" / "link").symlink_to(target)
    (tmp_path / "x" / "dir").unlink()
    (tmp_path / "x" / "dir").mkdir()
    result = write_tracked(tmp_path, {"a": {"keep": FileSpec(b"3")}})
    assert result.removed == [] and result.stale == [] and len(result.notes) == 2
    assert (tmp_path / "x" / "link").is_symlink() and target.read_bytes() == b"1"
    assert (tmp_path / "x" / "dir").is_dir()


def test_pruning_does_not_follow_a_directory_that_became_a_symlink(tmp_path: Path) -> None:
    root, outside = tmp_path / "bundle", tmp_path / "outside"
    write_tracked(root, {"a": {"x/same": FileSpec(b"1"), "x/edited": FileSpec(b"2"), "keep": FileSpec(b"3")}})
    shutil.rmtree(root / "x")
    outside.mkdir()
    (outside / "same").write_bytes(b"1")  # what ARK wrote there: still not to be deleted through the link
    (outside / "edited").write_bytes(b"other")  # and not renamed to .ark-stale either
    (root / "x").symlink_to(outside, target_is_directory=True)
    result = write_tracked(root, {"a": {"keep": FileSpec(b"3")}})
    assert result.removed == [] and result.stale == []
    assert sorted(result.notes) == [
        f"x/{name}: no longer rendered, but its directory leads outside the bundle; left alone"
        for name in ("edited", "same")
    ]
    assert sorted(p.name for p in outside.iterdir()) == ["edited", "same"]
    assert (outside / "same").read_bytes() == b"1" and (root / "x").is_symlink()


def test_a_manifest_this_user_cannot_read_says_who_rendered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tracked(tmp_path, {"a": {"f": FileSpec(b"1")}})
    real = Path.read_bytes

    def denied(path: Path) -> bytes:
        if path.name == MANIFEST:
            raise PermissionError(13, "Permission denied", str(path))  # as for `ark peers add` after a root render
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(EdgeError, match=r"cannot read .*: permission denied\. Another user \(root\?\) rendered"):
        write_tracked(tmp_path, {"a": {"f": FileSpec(b"2")}})


def test_track_scopes_pruning_to_the_renderers_that_ran() -> None:
    previous = {"n/a": Entry("nginx", ("h1",)), "n/b": Entry("nginx", ("h2",)), "w/p": Entry("wireguard", ("h3",))}
    parts = {"nginx": {"n/a": FileSpec(b"new")}}
    final, stale = track(previous, parts, {"nginx"})
    assert set(stale) == {"n/b"} and final["w/p"] == previous["w/p"]
    assert final["n/a"] == Entry("nginx", (digest(b"new"),))
    _, everything = track(previous, parts, None)
    assert set(everything) == {"n/b", "w/p"}
