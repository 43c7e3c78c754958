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
import pytest
from click.testing import CliRunner

from ark.cli import main
from ark.config import Settings, load_settings
from ark.edge.certs import self_signed_files
from ark.edge.files import FileSpec, write_atomic, write_files
from ark.edge.htpasswd import htpasswd
from ark.edge.render import make_context, render_files
from ark.edge.sites import IDENTITY_HEADERS
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
    return " ".join(result.output.split())  # rich wraps long lines


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
        assert "/etc/letsencrypt/live/" in text
    chat = sites["nginx/sites/chat_ark_test.conf"]
    assert "auth_request /_ark_auth;" in chat and "error_page 401 = @login;" in chat
    assert "client_max_body_size 52428800;" in chat and "proxy_set_header Upgrade $http_upgrade;" in chat
    llm = sites["nginx/sites/llm_ark_test.conf"]
    assert "auth_request" not in llm and "proxy_buffering off;" in llm
    assert "client_max_body_size 8388608;" in llm  # [gateway] max_body_bytes
    prometheus = sites["nginx/sites/prometheus_ark_test.conf"]
    assert "auth_request" not in prometheus and "auth_basic_user_file" in prometheus


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
