"""Nginx configuration text: a complete nginx.conf, the http-level pieces and one file per site.

Layout of ``OUT/nginx/``:
  nginx.conf      complete; `nginx -t -c OUT/nginx/nginx.conf` checks everything
  ark-http.conf   http-level only (log format, maps, upstreams, rate limit, sites): a distro
                  nginx.conf can `include` it inside its own http {} instead
  sites/*.conf    one server block per name, plus the defaults (redirect, unknown names refused)
  htpasswd/       basic-auth users

Every ``location`` repeats its proxy headers: one ``proxy_set_header`` in a location drops all
the inherited ones, and forgetting one of the identity headers there would let a client's own
value through.
"""

from __future__ import annotations

import grp
import pwd
from collections.abc import Iterable
from pathlib import Path

from ark.config import Settings
from ark.edge.certs import Existing, cert_paths, certbot_live
from ark.edge.files import Files, FileSpec
from ark.edge.htpasswd import htpasswd
from ark.edge.sites import IDENTITY_HEADERS, Site, login_url
from ark.errors import ConfigError

HEADER = "# Rendered by `ark render` from ark.toml: edit the config and render again, not this file.\n"
# Mozilla "intermediate": AEAD suites with forward secrecy only (TLS 1.3 suites are always on)
CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
# Query strings are left out of the log ($uri, not $request_uri): they carry tokens and ?rd= URLs.
LOG_FORMAT = (
    '{"time":"$time_iso8601","remote":"$remote_addr","host":"$host","method":"$request_method",'
    '"uri":"$uri","status":$status,"bytes":$body_bytes_sent,"request_time":$request_time,'
    '"upstream_time":"$upstream_response_time","user":"$ark_user","basic_user":"$remote_user",'
    '"agent":"$http_user_agent"}'
)
_UNSAFE = set("\"'\\\n\r;{}$`")


def q(path: Path | str) -> str:
    """A path quoted for nginx; characters that would end the string or start a variable are refused."""
    text = str(path)
    if _UNSAFE & set(text):
        raise ConfigError(f"{text!r}: paths used in the Nginx configuration may not contain quotes, ;, {{, }} or $")
    return f'"{text}"'


def render_nginx(settings: Settings, sites: tuple[Site, ...], out: Path, tls: str, existing: Existing) -> Files:
    """Every file under ``nginx/``; the htpasswd keeps its hash while the password is unchanged."""
    files: Files = {
        "nginx/nginx.conf": FileSpec.text(render_nginx_conf(settings, out)),
        "nginx/ark-http.conf": FileSpec.text(render_http(settings, sites, out)),
        "nginx/sites/00-defaults.conf": FileSpec.text(render_defaults(settings, sites, out)),
    }
    for site in sites:
        files[f"nginx/sites/{site.file_name}.conf"] = FileSpec.text(HEADER + render_site(settings, site, out, tls))
        if site.access == "basic":
            relative = htpasswd_relative(site)
            text = htpasswd(settings.edge.prometheus_user, settings.edge.prometheus_password.value, existing(relative))
            files[relative] = FileSpec.text(text, 0o640, group=primary_group(settings.edge.nginx_user))
    return files


def primary_group(user: str) -> str:
    """The group Nginx's workers read files through (the user's primary group; www-data on Debian)."""
    try:
        return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
    except KeyError:
        return user


def render_nginx_conf(settings: Settings, out: Path) -> str:
    """The complete nginx.conf: process settings, then http {} around ark-http.conf."""
    run = settings.edge.nginx_run_dir
    pid = run / "nginx.pid" if run else Path("/run/nginx.pid")
    error_log = run / "error.log" if run else Path("/var/log/nginx/error.log")
    lines = [
        HEADER,
        f"user {settings.edge.nginx_user};",
        "worker_processes auto;",
        f"pid {q(pid)};",
        f"error_log {q(error_log)} warn;",
        "",
        "events {",
        "    worker_connections 1024;",
        "}",
        "",
        "http {",
        "    default_type application/octet-stream;",
        "    sendfile on;",
        "    tcp_nopush on;",
    ]
    if run:
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            lines.append(f"    {kind}_temp_path {q(run / f'{kind}_temp')};")  # nginx makes one level only
    lines += [f"    include {q(out / 'nginx' / 'ark-http.conf')};", "}", ""]
    return "\n".join(lines)


def render_http(settings: Settings, sites: Iterable[Site], out: Path) -> str:
    """http-level directives, all named ark_* so they do not clash with a distro configuration."""
    run = settings.edge.nginx_run_dir
    access_log = run / "access.json" if run else Path("/var/log/nginx/ark-access.json")
    lines = [
        HEADER,
        f"log_format ark_json escape=json '{LOG_FORMAT}';",
        f"access_log {q(access_log)} ark_json;",
        "",
        "# websocket upgrade; an empty Connection keeps upstream keepalive working otherwise",
        "map $http_upgrade $ark_connection_upgrade {",
        "    default upgrade;",
        "    ''      '';",
        "}",
        "",
        "# logins: 10 a minute per client address, bursts of 20",
        "limit_req_zone $binary_remote_addr zone=ark_login:10m rate=10r/m;",
        "# open connections per client address: behind Nginx the gateway sees one address (127.0.0.1), so its",
        "# own per-client cap ([gateway] max_connections_per_client) is held here, for every client",
        "limit_conn_zone $binary_remote_addr zone=ark_conn:10m;",
        "",
        *_app_cookie_maps(),
    ]
    seen: set[str] = set()
    for site in sites:
        if site.upstream not in seen:
            seen.add(site.upstream)
            lines += [
                f"upstream ark_{site.upstream} {{",
                f"    server 127.0.0.1:{site.port};",
                "    keepalive 16;",
                "}",
            ]
    lines += ["", f"include {q(out / 'nginx' / 'sites' / '*.conf')};", ""]
    return "\n".join(lines)


# ARK's cookies: the console and the auth subrequest read them; no application behind Nginx ever sees them
ARK_COOKIES = ("ark_session", "ark_csrf")


def _app_cookie_maps() -> list[str]:
    """$ark_app_cookie: the client's Cookie header without ARK's cookies, for the applications.

    A map takes out one cookie (at the start, or after a ``;``); two in a row take out two, a name
    sent twice (another path, or a copy an application set for ``.D``). A header that still names one
    after that is dropped whole: the application then gets no cookie at all, never ARK's."""
    names = "|".join(ARK_COOKIES)
    # linear in the header's length (a ; or the start, then a fixed name): no backtracking blow-up that
    # would end in a PCRE error, on which Nginx would fall back to the default, the header unchanged
    first, middle = rf"^\s*(?:{names})=[^;]*;?\s*(.*)$", rf"^(.*?);\s*(?:{names})=[^;]*(.*)$"
    lines = ["# the Cookie header an application receives: ARK's session and CSRF cookies taken out"]
    for source, target in (("$http_cookie", "$ark_cookie_1"), ("$ark_cookie_1", "$ark_cookie_2")):
        lines += [
            f"map {source} {target} {{",
            f'    "~{first}" "$1";',
            f'    "~{middle}" "$1$2";',
            f"    default {source};",
            "}",
        ]
    lines += [
        "map $ark_cookie_2 $ark_app_cookie {",
        f'    "~(?:^|;)\\s*(?:{names})\\s*=" "";',
        "    default $ark_cookie_2;",
        "}",
        "",
    ]
    return lines


def render_defaults(settings: Settings, sites: Iterable[Site], out: Path) -> str:
    """Port 80 redirects known names to HTTPS (and serves ACME challenges); unknown names are refused."""
    names = " ".join(site.host for site in sites)
    https = "" if settings.edge.https_port == 443 else f":{settings.edge.https_port}"
    http_listen = _listens(settings, settings.edge.http_port, tls=False)
    lines = [
        HEADER,
        "# plain HTTP, a name we do not serve: close the connection",
        "server {",
        *_listens(settings, settings.edge.http_port, tls=False, default=True),
        "    server_name _;",
        "    return 444;",
        "}",
        "",
        "server {",
        *http_listen,
        f"    server_name {names};",
        "    server_tokens off;",
        "    location /.well-known/acme-challenge/ {",
        f"        root {q(out / 'acme')};",
        "    }",
        "    location / {",
        f"        return 301 https://$host{https}$request_uri;",
        "    }",
        "}",
        "",
        "# TLS for a name we do not serve (or no SNI): refuse the handshake, show no certificate",
        "server {",
        *_listens(settings, settings.edge.https_port, tls=True, default=True),
        "    server_name _;",
        "    ssl_reject_handshake on;",
        "}",
        "",
    ]
    return "\n".join(lines)


def render_site(settings: Settings, site: Site, out: Path, tls: str) -> str:
    """One TLS server block: certificates, headers, then the guard its access kind asks for."""
    paths = cert_paths(tls, out, site.host, certbot_live(settings.data_dir))
    lines = [
        "server {",
        *_listens(settings, settings.edge.https_port, tls=True),
        f"    server_name {site.host};",
        "    server_tokens off;",
        f"    ssl_certificate {q(paths.fullchain)};",
        f"    ssl_certificate_key {q(paths.privkey)};",
        "    ssl_protocols TLSv1.2 TLSv1.3;",
        f"    ssl_ciphers {CIPHERS};",
        "    ssl_prefer_server_ciphers off;",
        "    ssl_session_cache shared:ark_tls:10m;",
        "    ssl_session_timeout 1d;",
        "    ssl_session_tickets off;",
        "",
        *_security_headers(settings),
        "",
        f"    client_max_body_size {site.max_body};",
        f"    limit_conn ark_conn {settings.gateway.max_connections_per_client};",
        "    limit_conn_status 429;",
        "    ignore_invalid_headers on;",
        "    underscores_in_headers off;  # X_Trusted_Email never reaches an upstream that folds _ into -",
        '    set $ark_user "";',
        "",
        *_guarded_locations(settings, site, out),
        "}",
        "",
    ]
    return "\n".join(lines)


def _listens(settings: Settings, port: int, *, tls: bool, default: bool = False) -> list[str]:
    suffix = (" ssl http2" if tls else "") + (" default_server" if default else "")
    address = settings.edge.listen_address
    if address:
        host = f"[{address}]" if ":" in address else address
        return [f"    listen {host}:{port}{suffix};"]
    lines = [f"    listen {port}{suffix};"]
    if settings.edge.ipv6:
        lines.append(f"    listen [::]:{port}{suffix};")
    return lines


def _security_headers(settings: Settings) -> list[str]:
    hsts = f"max-age={settings.edge.hsts_max_age}; includeSubDomains"
    headers = [
        ("Strict-Transport-Security", hsts),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "SAMEORIGIN"),
        ("Content-Security-Policy", "frame-ancestors 'self'"),
        ("Referrer-Policy", "strict-origin-when-cross-origin"),
    ]
    lines = [f'    add_header {name} "{value}" always;' for name, value in headers]
    # the upstream's own copies would make two conflicting headers; Nginx's win
    lines += [f"    proxy_hide_header {name};" for name, _ in headers if name != "Content-Security-Policy"]
    return lines


def _guarded_locations(settings: Settings, site: Site, out: Path) -> list[str]:
    if site.access == "session":
        return _session_locations(settings, site)
    if site.access == "basic":
        auth = [
            f'        auth_basic "ARK {site.upstream}";',
            f"        auth_basic_user_file {q(out / htpasswd_relative(site))};",
        ]
        return ["    location / {", *auth, *_proxy(site, identity=False, clear_authorization=True), "    }"]
    if site.access == "console":
        return [
            "    # only Nginx asks this, through the auth subrequest of the other sites",
            "    location = /auth/verify {",
            "        return 404;",
            "    }",
            "    location = /auth/login {",
            "        limit_req zone=ark_login burst=20 nodelay;",
            *_proxy(site, identity=False),
            "    }",
            "    location / {",
            *_proxy(site, identity=False),
            "    }",
        ]
    return ["    location / {", *_proxy(site, identity=False), "    }"]


def _session_locations(settings: Settings, site: Site) -> list[str]:
    console = settings.console.listen
    captured = [
        f"        auth_request_set ${var} $upstream_http_{h.lower().replace('-', '_')};" for h, var in IDENTITY_HEADERS
    ]
    # The site is named in proxy_pass itself: auth_request's subrequest carries no query of the client's
    # (and proxy_pass sends this fixed one), so no request can ask about another site than its own.
    return [
        "    location = /_ark_auth {",
        "        internal;",
        f"        proxy_pass http://{_host(console.host)}:{console.port}/auth/verify?site={site.name};",
        "        proxy_pass_request_body off;",
        '        proxy_set_header Content-Length "";',
        "        proxy_set_header X-Original-URI $request_uri;",
        "        proxy_set_header X-Forwarded-Host $host;",
        "        proxy_set_header X-Forwarded-Proto $scheme;",
        "        proxy_set_header X-Real-IP $remote_addr;  # the console throttles sign-ins per address",
        "        proxy_set_header X-Forwarded-For $remote_addr;",
        *[f'        proxy_set_header {header} "";' for header, _ in IDENTITY_HEADERS],
        "    }",
        "",
        "    location @login {",
        f'        return 302 "{login_url(settings)}";',
        "    }",
        "",
        "    location / {",
        "        auth_request /_ark_auth;",
        *captured,
        "        error_page 401 = @login;  # a 403 (role too low, docs/security.md) stays a 403",
        *_proxy(site, identity=True),
        "    }",
    ]


def _proxy(site: Site, *, identity: bool, clear_authorization: bool = False) -> list[str]:
    lines = [
        f"        proxy_pass http://ark_{site.upstream};",
        "        proxy_http_version 1.1;",
        "        proxy_set_header Host $host;",
        "        proxy_set_header X-Real-IP $remote_addr;",
        "        proxy_set_header X-Forwarded-For $remote_addr;  # not appended to: the client's own is dropped",
        "        proxy_set_header X-Forwarded-Proto $scheme;",
        "        proxy_set_header X-Forwarded-Host $host;",
    ]
    for header, var in IDENTITY_HEADERS:
        value = f"${var}" if identity else '""'
        lines.append(f"        proxy_set_header {header} {value};")
    if clear_authorization:
        lines.append('        proxy_set_header Authorization "";')
    if site.access != "console":  # an app that runs users' code (ComfyUI nodes) must not collect sessions
        lines.append("        proxy_set_header Cookie $ark_app_cookie;")
    if site.websocket:
        lines += [
            "        proxy_set_header Upgrade $http_upgrade;",
            "        proxy_set_header Connection $ark_connection_upgrade;",
        ]
    else:
        lines.append('        proxy_set_header Connection "";')
    if site.streaming:
        lines += [
            "        proxy_buffering off;  # Server-Sent Events: each chunk goes out as it arrives",
            "        proxy_request_buffering off;",
            "        proxy_cache off;",
            "        gzip off;",
        ]
    lines += [
        f"        proxy_read_timeout {site.read_timeout_s}s;",
        f"        proxy_send_timeout {site.read_timeout_s}s;",
    ]
    return lines


def htpasswd_relative(site: Site) -> str:
    """Where a basic-auth site's users are, relative to the bundle."""
    return f"nginx/htpasswd/{site.upstream}"


def _host(host: str) -> str:
    """127.0.0.1 for a wildcard listen address (nginx cannot connect to 0.0.0.0 portably)."""
    if host in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
