"""The sign-in's edges as plain functions: return addresses fit for a Location header, the console's own
origin, the CSRF value bound to a browser's pre-sign-in nonce. The running console is tested in
tests/test_auth_console.py."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

import pytest

from ark.auth.service import AuthService
from ark.auth.users import UserStore
from ark.config import load_settings
from ark.console import web
from ark.edge.ports import port_map
from ark.edge.sites import edge_sites
from ark.store import Store
from ark.wire import Request

CHAT = "https://chat.example.org"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/€", "/%E2%82%AC"),
        ("/%E2%82%AC", "/%E2%82%AC"),  # escapes already made are kept, not escaped twice
        ("/%e2%82%ac?x=%26", "/%e2%82%ac?x=%26"),
        ("/100%", "/100%25"),  # a stray % becomes one
        ("/a%zz", "/a%25zz"),
        ('/a"<b>`{}|^', "/a%22%3Cb%3E%60%7B%7D%7C%5E"),
        ("/\u0085\u2028", "/%C2%85%E2%80%A8"),  # C1 control, line separator: escaped, harmless
        (f"{CHAT}/€/ü?q=€&a=1#€", f"{CHAT}/%E2%82%AC/%C3%BC?q=%E2%82%AC&a=1#%E2%82%AC"),
        (f"{CHAT}:8443/d?a=b;c=d,e", f"{CHAT}:8443/d?a=b;c=d,e"),  # structure unchanged
        ("https://chat.example.org€/", "/"),  # non-ASCII in the host: none of ARK's sites
        ("https://evil.example%2F.example.org/", "/"),  # escapes in the host
        ("https://chat.example.org/€\r\n", "/"),  # control characters are refused, not escaped
        ("/" + "€" * 300, "/"),  # 300 characters in, 2,700 out: longer than the form takes back
    ],
)
def test_return_addresses_go_out_percent_encoded(target: str, expected: str) -> None:
    encoded = web.safe_redirect(target, "example.org", "example.org")
    assert encoded == expected and encoded.isascii()
    assert web.safe_redirect(encoded, "example.org", "example.org") == encoded  # the form posts it back as is
    if expected != "/" and "%" not in target:
        assert unquote(encoded) == target  # the same address, once a browser reads the escapes


def _post(**headers: str) -> Request:
    return Request("POST", "/auth/login", "", headers, b"", "127.0.0.1")


def test_the_consoles_origins_are_its_own_names_under_the_domain(tmp_path: Path) -> None:
    assert web.console_origins("example.org", 443) == {"https://example.org", "https://axl.example.org"}
    assert web.console_origins(".Example.org.", 8443) == {"https://example.org:8443", "https://axl.example.org:8443"}
    assert web.console_origins("", 443) == frozenset()
    settings = load_settings(env={"ARK_DATA_DIR": str(tmp_path), "ARK_EDGE_DOMAIN": "example.org"})
    served = {s.host for s in edge_sites(settings, port_map(settings)) if s.access == "console"}
    assert {"https://" + host for host in served} == web.console_origins("example.org", 443)  # Nginx's names


def test_only_the_consoles_own_origin_may_post() -> None:
    own = web.console_origins("example.org", 443)
    for headers, allowed in (
        ({"origin": "https://example.org"}, True),
        ({"origin": "https://axl.example.org"}, True),
        ({"origin": "HTTPS://Example.org"}, True),
        ({"origin": CHAT}, False),  # a sibling site: another origin, whatever code runs there
        ({"origin": "http://example.org"}, False),
        ({"origin": "https://example.org:8443"}, False),
        ({"origin": "null"}, False),
        ({"origin": ""}, False),
        ({"referer": "https://example.org/auth/login?rd=/"}, True),  # no Origin: the Referer's origin
        ({"referer": f"{CHAT}/c/1"}, False),
        ({"referer": "https://example.org@evil.example/"}, False),
        ({"referer": "not a url"}, False),
        ({"origin": "https://example.org", "referer": f"{CHAT}/"}, True),  # Origin decides when sent
        ({}, True),  # neither: the CSRF value alone decides
    ):
        assert web.origin_allowed(_post(host="127.0.0.1:8080", **headers), own) is allowed, headers


def test_without_a_domain_the_origin_is_the_host_the_post_came_to() -> None:
    for origin, allowed in (
        ("http://127.0.0.1:8080", True),
        ("https://127.0.0.1:8080", True),
        ("http://127.0.0.1:9999", False),
        ("http://localhost:8080", False),
        ("null", False),
    ):
        assert web.origin_allowed(_post(host="127.0.0.1:8080", origin=origin), ()) is allowed, origin
    assert not web.origin_allowed(_post(origin="http://127.0.0.1:8080"), ())  # no Host: nothing to match


def test_the_sign_in_csrf_value_is_an_hmac_of_the_browsers_nonce(tmp_path: Path) -> None:
    settings = load_settings(env={"ARK_DATA_DIR": str(tmp_path)})
    store = Store.open(settings)
    try:
        auth = AuthService(UserStore(store.engine), b"k" * 32, settings.auth)
        other = AuthService(UserStore(store.engine), b"j" * 32, settings.auth)
        one, two = auth.new_login_nonce(), auth.new_login_nonce()
        value = auth.login_csrf(one)
        assert value is not None and value == auth.login_csrf(one) and value != one  # stable, not the nonce
        assert value != auth.login_csrf(two)  # another browser's state: another value
        assert value != other.login_csrf(one)  # only this secret makes it
        assert value != auth.session_csrf(one)  # never a signed-in form's value
        for junk in ("", "x", one + "A", one[:-1] + "!", value + "." + value):
            assert auth.login_csrf(junk) is None, junk
    finally:
        store.close()
