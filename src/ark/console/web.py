"""Small, strict HTTP pieces for the console: forms, cookies, redirect targets, client addresses.

Every input here is hostile until checked. Each function either returns clean data or raises
:class:`BadInput` with a message fit to show; nothing is half-parsed.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection
from urllib.parse import parse_qsl, quote, urlsplit

from ark.wire import Request

_MAX_FIELDS = 16
_LOOPBACK = frozenset({"127.0.0.1", "::1"})
_MAX_TARGET = 2048  # a return address, as it goes out: it must fit back into the form's rd field
# What a return address keeps as it is: RFC 3986's reserved characters (its structure) and "%" (escapes
# already made). Everything else, non-ASCII above all, is percent-encoded (as UTF-8) before it goes
# into a Location header, which carries Latin-1 at most and should carry ASCII.
_URL_KEEP = ":/?#[]@!$&'()*+,;=%"
_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
# The names Nginx serves the console at (ark.edge.sites, access "console"): D itself and axl.D
CONSOLE_NAMES = ("", "axl")


# Every page: no caching of anything personal, no framing (clickjacking), no sniffing, no scripts.
def security_headers(*, script: bool = False) -> list[tuple[str, str]]:
    """The headers every page gets; ``script``: the page may run ARK's own scripts and fetch from here
    (the overview), nothing inline and nothing from elsewhere."""
    if not script:
        return SECURITY_HEADERS
    policy = (
        "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: blob:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )
    return [(k, v) for k, v in SECURITY_HEADERS if k != "content-security-policy"] + [
        ("content-security-policy", policy)
    ]


SECURITY_HEADERS = [
    ("cache-control", "no-store"),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),
    (
        "content-security-policy",
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
]


class BadInput(ValueError):
    """A request the console refuses; the message says why, for the person reading the page."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def form(request: Request, limits: dict[str, int]) -> dict[str, str]:
    """The fields of a urlencoded form body, each at most ``limits[name]`` characters; others ignored."""
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if not request.body and not ctype:
        return {}  # an empty post: no fields (the CSRF check then refuses it)
    if ctype != "application/x-www-form-urlencoded":
        raise BadInput("Expected a form (application/x-www-form-urlencoded).", 415)
    try:
        text = request.body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, max_num_fields=_MAX_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise BadInput("The form is not valid (bad encoding or too many fields).") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name not in limits:
            continue
        if name in fields:
            raise BadInput(f"The form has the field {name!r} twice.")
        if len(value) > limits[name] or "\x00" in value:
            raise BadInput(f"The field {name!r} is too long or not text.")
        fields[name] = value
    return fields


def query(request: Request, name: str, max_length: int = 2048) -> str:
    """One query parameter ("" when absent or unusable)."""
    try:
        pairs = parse_qsl(request.query, keep_blank_values=True, max_num_fields=_MAX_FIELDS)
    except ValueError:
        return ""
    values = [v for k, v in pairs if k == name]
    return values[0] if len(values) == 1 and len(values[0]) <= max_length else ""


def return_to(request: Request, max_length: int = 2048) -> str:
    """The ``rd`` of the login page. Nginx sends ``?rd=$scheme://$host$request_uri`` without encoding it,
    so a URL with its own query (``...?a=1&b=2``) would be cut at its first ``&`` by a query parser: when
    ``rd`` comes first and holds a URL, everything after ``rd=`` is the URL."""
    raw = request.query
    if raw.startswith(("rd=http://", "rd=https://")) and len(raw) - 3 <= max_length:
        return raw[3:]
    return query(request, "rd", max_length)


def cookies(request: Request, name: str) -> list[str]:
    """Every value of the cookie ``name`` (a browser may send several with one name: other paths or domains)."""
    header = request.headers.get("cookie", "")
    if len(header) > 16384:
        return []
    found = []
    for part in header.split(";"):
        key, eq, value = part.strip().partition("=")
        if eq and key == name:
            found.append(value.strip().strip('"'))
    return found


def set_cookie(name: str, value: str, *, max_age: int, path: str = "/", domain: str = "") -> tuple[str, str]:
    """A Set-Cookie header: HttpOnly, Secure, SameSite=Lax always; Domain=.D to share it with every site."""
    parts = [f"{name}={value}", f"Path={path}", f"Max-Age={max_age}", "HttpOnly", "Secure", "SameSite=Lax"]
    if domain:
        parts.append(f"Domain=.{domain}")
    return ("set-cookie", "; ".join(parts))


def encode_url(target: str) -> str:
    """``target`` with everything outside ASCII's URL characters percent-encoded (UTF-8), its structure
    (``/ ? # & = :``...) and its existing ``%XX`` escapes kept, a stray ``%`` made ``%25``. A browser
    resolves the result to the same place; encoding it again changes nothing."""
    return quote(_STRAY_PERCENT.sub("%25", target), safe=_URL_KEEP)


def safe_redirect(target: str, domain: str, host: str) -> str:
    """``target``, percent-encoded (:func:`encode_url`), when it stays on ARK's sites, else "/": never an
    open redirect, and always ASCII, fit for a Location header.

    Accepted: a path on this site ("/x", not "//x" nor "/\\x"), or an http(s) URL whose host is the
    configured domain or one of its subdomains (with no domain: the host this page was asked on).
    Nothing with control characters, spaces, backslashes, credentials ("https://D@evil") or escapes in
    the host. The checks judge the encoded address: what they approve is exactly what goes out.
    """
    if not target or any(ord(c) < 33 or ord(c) == 127 for c in target) or "\\" in target:
        return "/"
    target = encode_url(target)
    if len(target) > _MAX_TARGET:
        return "/"
    if target.startswith("/"):
        return target if not target.startswith("//") else "/"
    try:
        parts = urlsplit(target)
        hostname = (parts.hostname or "").lower()
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "/"
    if parts.scheme not in ("http", "https") or "@" in parts.netloc or "%" in parts.netloc or not hostname:
        return "/"
    return target if _allowed_host(hostname, domain, host) else "/"


def _allowed_host(hostname: str, domain: str, host: str) -> bool:
    if domain:
        domain = domain.lower().strip(".")
        return hostname == domain or hostname.endswith("." + domain)
    request_host = host.rsplit(":", 1)[0].strip("[]").lower() if host else ""
    return bool(request_host) and hostname == request_host


def console_origins(domain: str, https_port: int) -> frozenset[str]:
    """The origins the console is served at behind Nginx: ``https://D`` and ``https://axl.D`` (with the
    port when it is not 443); none without a domain."""
    domain = domain.strip().strip(".").lower()
    if not domain:
        return frozenset()
    port = "" if https_port == 443 else f":{https_port}"
    return frozenset(f"https://{sub}{'.' if sub else ''}{domain}{port}" for sub in CONSOLE_NAMES)


def origin_allowed(request: Request, origins: Collection[str]) -> bool:
    """Whether a state-changing post comes from the console's own pages.

    ``origins``: the console's own origins (:func:`console_origins`); when there are none (no domain),
    the origin the request was sent to: its ``Host``, over http or https. Not any other site under D:
    an application on a subdomain is another origin. ``Origin`` decides when the browser sends it
    ("null", from a sandbox or after a cross-site redirect, never passes); without it, the origin of
    ``Referer`` does; with neither (older browsers, some privacy settings) the CSRF value alone decides.
    """
    origin = request.headers.get("origin")
    if origin is None:
        referer = request.headers.get("referer")
        if referer is None:
            return True
        origin = _origin_of(referer)
    if not origins:
        host = request.headers.get("host", "").lower()
        origins = (f"http://{host}", f"https://{host}") if host else ()
    return origin.lower() in origins


def _origin_of(url: str) -> str:
    """``scheme://host[:port]`` of an absolute http(s) URL; "" for anything else."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
        return ""
    return f"{parts.scheme}://{parts.netloc}"


def client_address(request: Request) -> str:
    """Who is asking: the peer, or X-Real-IP when the peer is Nginx on this machine."""
    if request.client in _LOOPBACK:
        real = request.headers.get("x-real-ip", "").strip()
        try:
            return str(ipaddress.ip_address(real))
        except ValueError:
            pass
    return request.client


def header_value(text: str) -> str:
    """A header value as the wire carries it: UTF-8 bytes (held as latin-1 characters), no line breaks."""
    return "".join(c for c in text if c not in "\r\n").encode("utf-8").decode("latin-1")
