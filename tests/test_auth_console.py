"""The console for real: `ark up` as a process (gateway + console), a browser played by httpx, users
made with `ark users`. Each test uses its own users and client addresses (X-Real-IP, believed from
loopback as from Nginx), so the sign-in throttle of one test never meets another's.
"""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from urllib.parse import unquote, urljoin

import httpx
import orjson
import pytest
from click.testing import CliRunner

from ark.auth.identity import Identity, mint
from ark.auth.signing import load_secret
from ark.auth.totp import STEP_S, code_at
from ark.cli.main import main
from tests.conftest import MASTER_KEY, ArkProcess, start_ark, stop_ark, wait_until
from tests.fakes.ollama import FakeOllama

DOMAIN = "example.test"
PASSWORD = "correct-horse-1"
CONFIG = f"""
master_key = "{MASTER_KEY}"
data_dir = "{{DATA}}"
[gateway]
listen = "127.0.0.1:{{PORT}}"
[engines.ollama]
kind = "ollama"
url = "{{OLLAMA}}"
gpu_managed = "no"
[auth]
lockout_s = 600.0
[edge]
domain = "{DOMAIN}"
"""


@pytest.fixture(scope="module")
def ark(tmp_path_factory: pytest.TempPathFactory, fake_ollama_server: FakeOllama) -> Iterator[ArkProcess]:
    process = start_ark(CONFIG.replace("{OLLAMA}", fake_ollama_server.url), tmp_path_factory.mktemp("auth"))
    try:
        yield process
    finally:
        stop_ark(process)


def users(ark: ArkProcess, *args: str, password: str | None = None) -> str:
    """`ark users ...` against the running ARK's database."""
    stdin_flag = ["--password-stdin"] if password is not None else []
    result = CliRunner().invoke(
        main, ["users", *args, "--config", str(ark.config), *stdin_flag], input=password, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return result.output


class Browser:
    """Cookies by hand: httpx's jar will not send Secure cookies over plain http, as a browser would not."""

    def __init__(self, ark: ArkProcess, ip: str) -> None:
        self.base, self.ip = ark.console, ip
        self.cookies: dict[str, str] = {}

    def send(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        headers = {"x-real-ip": self.ip, **dict(kwargs.pop("headers", {}) or {})}  # type: ignore[call-overload]
        if self.cookies and "cookie" not in headers:
            headers["cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        response = httpx.request(method, self.base + path, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]
        for line in response.headers.get_list("set-cookie"):
            name, _, rest = line.partition("=")
            value = rest.split(";", 1)[0]
            if "Max-Age=0" in line:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return response

    def csrf(self, rd: str = "/") -> str:
        page = self.send("GET", "/auth/login", params={"rd": rd})
        assert page.status_code == 200
        match = re.search(r'name=csrf value="([^"]+)"', page.text)
        assert match
        return match.group(1)

    def login(self, name: str, password: str = PASSWORD, totp: str = "", rd: str = "/") -> httpx.Response:
        form = {"username": name, "password": password, "totp": totp, "csrf": self.csrf(), "rd": rd}
        return self.send("POST", "/auth/login", data=form)

    def verify(self, site: str = "chat") -> httpx.Response:
        """Nginx's auth subrequest for ``site`` (chat: any signed-in user)."""
        return self.send("GET", "/auth/verify", params={"site": site})

    @property
    def session(self) -> str:
        return self.cookies.get("ark_session", "")


def raw_status(ark: ArkProcess, head: bytes) -> int:
    """The status the console answers to a request sent byte for byte (no client tidies it)."""
    host, port = ark.console.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
        return int(sock.recv(64).split(b" ")[1])


def raw_get(ark: ArkProcess, target: bytes) -> tuple[int, str]:
    """GET ``target`` byte for byte (as Nginx passes ``rd=$scheme://$host$request_uri``: not encoded)."""
    host, port = ark.console.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body.decode()


def error_of(response: httpx.Response) -> str:
    match = re.search(r"<p class=error role=alert>(.*?)</p>", response.text)
    return match.group(1) if match else ""


def test_sign_in_sets_a_session_that_verify_turns_into_identity_headers(ark: ArkProcess) -> None:
    users(ark, "add", "alice", "--display-name", "Alice Liddell", "--role", "admin", password=PASSWORD)
    browser = Browser(ark, "192.0.2.1")
    assert browser.verify().status_code == 401
    page = browser.send("GET", "/auth/login", params={"rd": f"https://chat.{DOMAIN}/c/1"})
    assert f'name=rd value="https://chat.{DOMAIN}/c/1"' in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
    # with a domain the console is served over https: __Host-, host-only, which no site under D can set
    csrf_cookie = next(c for c in page.headers.get_list("set-cookie") if c.startswith("__Host-ark_csrf="))
    assert all(flag in csrf_cookie.split("; ") for flag in ("HttpOnly", "Secure", "SameSite=Lax", "Path=/"))
    assert "Domain=" not in csrf_cookie

    signed_in = browser.login("Alice", rd=f"https://chat.{DOMAIN}/c/1")
    assert signed_in.status_code == 303 and signed_in.headers["location"] == f"https://chat.{DOMAIN}/c/1"
    cookie = next(c for c in signed_in.headers.get_list("set-cookie") if c.startswith("ark_session="))
    for flag in ("HttpOnly", "Secure", "SameSite=Lax", f"Domain=.{DOMAIN}", "Path=/"):
        assert flag in cookie
    assert 12 * 3600 - 60 <= int(re.search(r"Max-Age=(\d+)", cookie).group(1)) <= 12 * 3600  # type: ignore[union-attr]

    verified = browser.verify()
    assert verified.status_code == 200
    assert verified.headers["x-trusted-email"] == f"alice@{DOMAIN}"
    assert verified.headers["x-trusted-name"] == "Alice Liddell"
    assert verified.headers["x-webauth-user"] == "alice" and verified.headers["x-ark-role"] == "admin"
    assert verified.headers["x-ark-identity"].count(".") == 1
    home = browser.send("GET", "/")
    assert home.status_code == 200 and "Alice Liddell" in home.text and f"https://chat.{DOMAIN}/" in home.text
    assert Browser(ark, "192.0.2.1").send("GET", "/").headers["location"] == "/auth/login?rd=/"


def test_every_sign_in_gets_a_new_session_and_a_planted_cookie_signs_nobody_in(ark: ArkProcess) -> None:
    users(ark, "add", "fixie", password=PASSWORD)
    browser = Browser(ark, "192.0.2.2")
    planted = "A" * 43 + "." + "B" * 43  # what an attacker might plant: not one of ours
    browser.cookies["ark_session"] = planted
    assert browser.verify().status_code == 401
    assert browser.login("fixie").status_code == 303
    first = browser.session
    assert first and first != planted and browser.verify().status_code == 200
    assert browser.login("fixie").status_code == 303  # signing in again while signed in
    second = browser.session
    assert second != first and browser.verify().status_code == 200
    old = Browser(ark, "192.0.2.2")
    old.cookies["ark_session"] = first
    assert old.verify().status_code == 401  # the old session ended at the new sign-in


def test_forms_without_the_right_csrf_value_are_refused(ark: ArkProcess) -> None:
    users(ark, "add", "carol", password=PASSWORD)
    browser = Browser(ark, "192.0.2.3")
    csrf = browser.csrf()
    base = {"username": "carol", "password": PASSWORD, "rd": "/"}
    assert browser.send("POST", "/auth/login", data=base).status_code == 403  # missing
    assert browser.send("POST", "/auth/login", data={**base, "csrf": csrf[:-2] + "xx"}).status_code == 403
    other = Browser(ark, "192.0.2.3").csrf()  # valid, but another browser's
    assert browser.send("POST", "/auth/login", data={**base, "csrf": other}).status_code == 403
    no_cookie = Browser(ark, "192.0.2.3")
    assert no_cookie.send("POST", "/auth/login", data={**base, "csrf": csrf}).status_code == 403
    evil = browser.send("POST", "/auth/login", data={**base, "csrf": csrf}, headers={"origin": "https://evil.example"})
    assert evil.status_code == 403 and "not sent by ARK" in error_of(evil)
    assert browser.verify().status_code == 401  # none of these signed in
    ok = browser.send("POST", "/auth/login", data={**base, "csrf": csrf}, headers={"origin": f"https://{DOMAIN}"})
    assert ok.status_code == 303
    assert browser.send("POST", "/auth/logout", data={"csrf": "forged"}).status_code == 403
    assert browser.send("POST", "/auth/logout", data={}).status_code == 403
    assert browser.verify().status_code == 200  # a forged sign-out did nothing


def test_failures_for_one_name_make_it_wait_from_every_address(ark: ArkProcess) -> None:
    users(ark, "add", "tina", password=PASSWORD)
    users(ark, "add", "tony", password=PASSWORD)
    answers = []
    for i in range(5):
        wrong = Browser(ark, f"198.51.100.{i + 1}").login("tina", "wrong-password")
        assert wrong.status_code == 401
        answers.append(error_of(wrong))
    throttled = Browser(ark, "198.51.100.99").login("tina")  # the right password, too late
    assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) > 500
    assert "Too many failed sign-ins" in error_of(throttled)
    assert Browser(ark, "198.51.100.1").login("tony").status_code == 303  # others are not held up
    # an unknown name gets the same answers: nobody learns which names exist
    unknown = [error_of(Browser(ark, f"198.51.100.{i + 10}").login("nobody-here", "wrong-password")) for i in range(5)]
    assert unknown == answers == ["Wrong user name, password or code."] * 5
    assert Browser(ark, "198.51.100.98").login("nobody-here", "x").status_code == 429


def test_failures_from_one_address_make_it_wait_for_every_name(ark: ArkProcess) -> None:
    users(ark, "add", "ivan", password=PASSWORD)
    for i in range(5):
        assert Browser(ark, "203.0.113.7").login(f"guess{i}", "wrong-password").status_code == 401
    assert Browser(ark, "203.0.113.7").login("ivan").status_code == 429
    assert Browser(ark, "203.0.113.8").login("ivan").status_code == 303


def test_tampered_and_expired_sessions_are_refused(ark: ArkProcess) -> None:
    users(ark, "add", "dave", password=PASSWORD)
    browser = Browser(ark, "192.0.2.4")
    assert browser.login("dave").status_code == 303
    good = browser.session
    token, _, signature = good.partition(".")
    for bad in (
        token[:-1] + ("A" if token[-1] != "A" else "B") + "." + signature,
        token + "." + signature[::-1],
        token,
        "",
        "x" * 5000,
        good + "x",
        '"' + good[:10],
    ):
        forged = Browser(ark, "192.0.2.4")
        forged.cookies["ark_session"] = bad
        assert forged.verify().status_code == 401, bad
    assert browser.verify().status_code == 200
    db = sqlite3.connect(ark.data_dir / "ark.db")
    with db:
        db.execute(
            "UPDATE user_sessions SET expires_at = '2000-01-01 00:00:00.000000' "
            "WHERE user_id = (SELECT id FROM users WHERE name = 'dave')"
        )
    db.close()
    assert browser.verify().status_code == 401


def test_disabling_a_user_or_changing_the_password_signs_them_out_at_once(ark: ArkProcess) -> None:
    users(ark, "add", "erin", password=PASSWORD)
    browser = Browser(ark, "192.0.2.5")
    assert browser.login("erin").status_code == 303 and browser.verify().status_code == 200
    users(ark, "disable", "erin")
    assert browser.verify().status_code == 401
    assert browser.login("erin").status_code == 401  # and cannot sign in again
    users(ark, "enable", "erin")
    assert browser.verify().status_code == 401  # the ended session stays ended
    assert browser.login("erin").status_code == 303
    users(ark, "passwd", "erin", password="another-pass-2")
    assert browser.verify().status_code == 401
    assert browser.login("erin", "another-pass-2").status_code == 303
    users(ark, "role", "erin", "admin")
    assert browser.verify().headers["x-ark-role"] == "admin"  # roles are read at every check


def test_verify_lets_each_role_into_its_sites_only(ark: ArkProcess) -> None:
    users(ark, "add", "victor", password=PASSWORD)
    users(ark, "add", "wendy", "--role", "admin", password=PASSWORD)
    plain, admin, stranger = Browser(ark, "192.0.2.21"), Browser(ark, "192.0.2.22"), Browser(ark, "192.0.2.23")
    assert plain.login("victor").status_code == 303 and admin.login("wendy").status_code == 303
    for site in ("chat", "art", "grafana"):  # the defaults: any signed-in user
        assert plain.verify(site).status_code == 200, site
        assert admin.verify(site).status_code == 200, site
    for site in ("n8n", "chromadb"):  # admins only
        refused = plain.verify(site)
        assert refused.status_code == 403, site
        assert not any(h.startswith(("x-trusted", "x-webauth", "x-ark")) for h in refused.headers), site
        allowed = admin.verify(site)
        assert allowed.status_code == 200 and allowed.headers["x-webauth-user"] == "wendy", site
        assert stranger.verify(site).status_code == 401, site  # not signed in: the login, as before
    # no site, a site not behind the sign-in, one named twice: nobody's, not even an admin's
    for query in ("", "?site=", "?site=prometheus", "?site=llm", "?site=axl", "?site=nope", "?site=chat&site=n8n"):
        assert admin.send("GET", "/auth/verify" + query).status_code == 403, query
        assert stranger.send("GET", "/auth/verify" + query).status_code == 403, query
    # the home page links only the sites the role opens
    assert f"https://n8n.{DOMAIN}/" not in plain.send("GET", "/").text
    assert f"https://chat.{DOMAIN}/" in plain.send("GET", "/").text
    assert f"https://n8n.{DOMAIN}/" in admin.send("GET", "/").text
    users(ark, "role", "victor", "admin")  # read at every check, like the session
    assert plain.verify("n8n").status_code == 200
    users(ark, "role", "victor", "user")
    assert plain.verify("n8n").status_code == 403
    assert ark.metric("ark_auth_events_total", event="verify_forbidden") >= 1
    assert ark.metric("ark_auth_events_total", event="verify_unknown_site") >= 1


def test_sign_out_ends_the_session(ark: ArkProcess) -> None:
    users(ark, "add", "frank", password=PASSWORD)
    browser = Browser(ark, "192.0.2.6")
    assert browser.login("frank").status_code == 303
    cookie = browser.session
    home = browser.send("GET", "/")
    csrf = re.search(r'action="/auth/logout"><input type=hidden name=csrf value="([^"]+)"', home.text)
    assert csrf
    out = browser.send("POST", "/auth/logout", data={"csrf": csrf.group(1)})
    assert out.status_code == 303 and out.headers["location"] == "/auth/login"
    assert any(c.startswith("ark_session=;") and "Max-Age=0" in c for c in out.headers.get_list("set-cookie"))
    replay = Browser(ark, "192.0.2.6")
    replay.cookies["ark_session"] = cookie
    assert replay.verify().status_code == 401


def enrol_totp(ark: ArkProcess, name: str) -> tuple[str, str, str]:
    """`ark users totp NAME` driven as a script would: read the secret it prints, type the app's code.

    Returns the output, the secret and the code that proved it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARK_")} | {"PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "ark", "users", "totp", name, "--config", str(ark.config)]
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    ) as child:
        assert child.stdin is not None and child.stdout is not None
        shown = []
        for line in child.stdout:  # until the secret is printed; the prompt for the code follows it
            shown.append(line)
            if found := re.match(r"Secret \(to type in instead\): ([A-Z2-7]+)$", line.strip()):
                break
        assert found, "".join(shown)
        secret = found.group(1)
        code = code_at(secret, time.time())
        rest, _ = child.communicate(code + "\n", timeout=60)
    output = "".join(shown) + rest
    assert child.returncode == 0, output
    return output, secret, code


def test_totp_second_factor_right_wrong_and_replayed(ark: ArkProcess) -> None:
    users(ark, "add", "grace", password=PASSWORD)
    output, secret, enrolled = enrol_totp(ark, "grace")
    uri = re.search(r"otpauth://totp/\S+", output)
    assert uri and "issuer=ARK%20example.test" in uri.group(0) and "█" in output  # the QR code
    assert f"secret={secret}&" in uri.group(0)
    browser = Browser(ark, "192.0.2.7")
    assert browser.login("grace").status_code == 401  # the code is missing
    now_code = code_at(secret, time.time())
    wrong = f"{(int(now_code) + 1) % 1_000_000:06d}"
    assert browser.login("grace", totp=wrong).status_code == 401
    assert browser.login("grace", "wrong-password", totp=code_at(secret, time.time())).status_code == 401
    # Used up by the enrolment (from another address: this one's failures are near the throttle's limit).
    assert Browser(ark, "192.0.2.17").login("grace", totp=enrolled).status_code == 401
    code = code_at(secret, time.time() + STEP_S)  # the app's next code: one step of drift is allowed
    assert browser.login("grace", totp=code).status_code == 303
    assert Browser(ark, "192.0.2.7").login("grace", totp=code).status_code == 401  # the same code again
    assert "(user)" in users(ark, "totp", "grace", "--disable")  # no ", TOTP" any more
    assert Browser(ark, "192.0.2.7").login("grace").status_code == 303


def test_the_identity_token_attributes_gateway_usage_to_the_user(ark: ArkProcess, fake_ollama: FakeOllama) -> None:
    users(ark, "add", "heidi", password=PASSWORD)
    browser = Browser(ark, "192.0.2.8")
    assert browser.login("heidi").status_code == 303
    token = browser.verify().headers["x-ark-identity"]
    secret = load_secret(ark.data_dir)
    expired = mint(secret, Identity("x", "heidi", "heidi@example.test", "0" * 64, int(time.time()) - 1))
    _, _, signature = token.partition(".")
    forged = Identity("x", "mallory", "m@example.test", "0" * 64, 2**40)
    forged_payload = mint(b"not-the-secret" * 3, forged).split(".")[0]
    tampered = forged_payload + "." + signature

    def chat(identity: str) -> str:
        reply = httpx.post(
            ark.api + "/chat/completions",
            headers={"authorization": f"Bearer {MASTER_KEY}", "x-ark-identity": identity},
            json={"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
        return reply.headers["x-request-id"]

    ids = {"valid": chat(token), "expired": chat(expired), "tampered": chat(tampered), "junk": chat("junk")}

    def people() -> dict[str, str | None]:
        rows = httpx.get(ark.url + "/spend/logs", headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=10).json()
        return {row["request_id"]: row["end_user"] for row in rows}

    assert wait_until(lambda: set(ids.values()) <= set(people()), timeout=15)
    found = people()
    assert found[ids["valid"]] == "heidi"
    assert found[ids["expired"]] is None and found[ids["tampered"]] is None and found[ids["junk"]] is None
    access_log = ark.data_dir / "logs" / "access.jsonl"

    def logged() -> dict[str, dict[str, object]]:
        lines = access_log.read_bytes().splitlines() if access_log.exists() else []
        return {r["request_id"]: r for r in map(orjson.loads, lines)}

    assert wait_until(lambda: set(ids.values()) <= set(logged()), timeout=15)
    assert logged()[ids["valid"]]["person"] == "heidi" and "person" not in logged()[ids["tampered"]]
    assert ark.metric("ark_identity_tokens_total", outcome="accepted") >= 1
    assert ark.metric("ark_identity_tokens_total", outcome="expired") >= 1
    assert ark.metric("ark_identity_tokens_total", outcome="bad_signature") >= 1
    assert ark.metric("ark_identity_tokens_total", outcome="malformed") >= 1
    assert ark.metric("ark_auth_events_total", event="login_ok") >= 1


def person_of(ark: ArkProcess, identity: str) -> object:
    """Who the gateway attributes a chat sent with ``identity`` to (its access log's ``person``), or None."""
    reply = httpx.post(
        ark.api + "/chat/completions",
        headers={"authorization": f"Bearer {MASTER_KEY}", "x-ark-identity": identity},
        json={"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text  # the token grants nothing: the key alone decides
    request_id, access_log = reply.headers["x-request-id"], ark.data_dir / "logs" / "access.jsonl"

    def record() -> dict[str, object] | None:
        lines = access_log.read_bytes().splitlines() if access_log.exists() else []
        return next((r for r in map(orjson.loads, lines) if r["request_id"] == request_id), None)

    assert wait_until(lambda: record() is not None, timeout=15)
    found = record()
    assert found is not None
    return found.get("person")


def test_an_identity_token_ends_with_its_session(ark: ArkProcess) -> None:
    """Signed out, disabled or given a new password: the token Nginx handed the site counts no more."""
    users(ark, "add", "kevin", password=PASSWORD)
    browser = Browser(ark, "192.0.2.11")
    assert browser.login("kevin").status_code == 303
    token = browser.verify().headers["x-ark-identity"]
    assert person_of(ark, token) == "kevin"
    home = browser.send("GET", "/")
    csrf = re.search(r'action="/auth/logout"><input type=hidden name=csrf value="([^"]+)"', home.text)
    assert csrf and browser.send("POST", "/auth/logout", data={"csrf": csrf.group(1)}).status_code == 303
    assert person_of(ark, token) is None  # the console and the gateway share one process: refused at once

    assert browser.login("kevin").status_code == 303
    token = browser.verify().headers["x-ark-identity"]
    assert person_of(ark, token) == "kevin"
    users(ark, "disable", "kevin")  # another process, writing the database
    assert browser.verify().status_code == 401  # the console sees it at once, and tells the gateway
    assert person_of(ark, token) is None

    users(ark, "enable", "kevin")
    assert browser.login("kevin").status_code == 303
    token = browser.verify().headers["x-ark-identity"]
    assert person_of(ark, token) == "kevin"
    users(ark, "passwd", "kevin", password="another-pass-3")
    # No browser request meanwhile: the gateway finds out by itself, once its cached answer is stale.
    assert wait_until(lambda: person_of(ark, token) is None, timeout=20, interval=0.5)
    assert ark.metric("ark_identity_tokens_total", outcome="revoked") >= 3


def test_sign_in_never_redirects_off_the_domain(ark: ArkProcess) -> None:
    users(ark, "add", "judy", password=PASSWORD)
    browser = Browser(ark, "192.0.2.9")
    for rd in ("https://evil.example/", "//evil.example/", "https://example.test@evil.example/", "/\\evil.example"):
        page = browser.send("GET", "/auth/login", params={"rd": rd})
        assert 'name=rd value="/"' in page.text, rd
        assert browser.login("judy", rd=rd).headers["location"] == "/", rd
    assert browser.login("judy", rd="/grafana/?a=1").headers["location"] == "/grafana/?a=1"


def test_hostile_requests_get_clear_refusals(ark: ArkProcess) -> None:
    browser = Browser(ark, "192.0.2.10")
    csrf = browser.csrf()
    assert browser.send("POST", "/auth/login", content=b"x" * 100_000).status_code == 413
    assert browser.send("POST", "/auth/login", json={"username": "a"}).status_code == 415
    form = {"content-type": "application/x-www-form-urlencoded"}
    assert browser.send("POST", "/auth/login", content=b"username=\xff", headers=form).status_code == 400
    assert browser.send("POST", "/auth/login", content=b"username=a&username=b", headers=form).status_code == 400
    for path in ("/auth/verify/", "/auth/%2e%2e/verify", "/.env", "/auth/login;x", "/auth/verify%00"):
        assert browser.send("GET", path).status_code == 404, path
    assert raw_status(ark, b"GET /auth/../auth/verify HTTP/1.1") == 404  # httpx would tidy the path itself
    assert raw_status(ark, b"GET /auth/login HTTP/1.1\r\nX-Bad: a\x00b") == 400
    assert browser.send("PUT", "/auth/verify").status_code == 405
    assert browser.send("GET", "/auth/logout").status_code == 405
    script = {"username": "<script>alert(1)</script>", "password": "x", "csrf": csrf, "rd": '"><b>'}
    xss = browser.send("POST", "/auth/login", data=script)
    assert xss.status_code == 401 and "<script>" not in xss.text and "&lt;script&gt;" in xss.text
    bad_cookie = {"cookie": "ark_session=" + "%" * 10_000}
    assert browser.send("GET", "/auth/verify?site=chat", headers=bad_cookie).status_code == 401
    assert httpx.get(ark.console + "/health/live", timeout=5).status_code == 200


def test_return_addresses_outside_latin1_are_percent_encoded(ark: ArkProcess) -> None:
    # A Location header carries Latin-1 at most: "/€" used to hang the sign-in (the header could not be encoded)
    users(ark, "add", "euro", password=PASSWORD)
    browser = Browser(ark, "192.0.2.40")
    chat = f"https://chat.{DOMAIN}"
    page = browser.send("GET", "/auth/login", params={"rd": "/€"})  # sent as rd=/%E2%82%AC
    assert page.status_code == 200 and 'name=rd value="/%E2%82%AC"' in page.text
    rendered = f'name=rd value="{chat}/%E2%82%AC/x?a=1&amp;b=%C3%BC"'
    page = browser.send("GET", "/auth/login", params={"rd": f"{chat}/€/x?a=1&b=ü"})  # encoded whole
    assert page.status_code == 200 and rendered in page.text
    # as Nginx sends it: rd=$scheme://$host$request_uri, not encoded (the browser escaped the path's €)
    status, body = raw_get(ark, f"/auth/login?rd={chat}/%E2%82%AC/x?a=1&b=%C3%BC".encode())
    assert status == 200 and rendered in body
    here = f"https://{DOMAIN}/auth/login"
    for rd, location in (
        ("/€", "/%E2%82%AC"),
        ("/%E2%82%AC", "/%E2%82%AC"),  # escapes already made stay as they are
        (f"{chat}/€/ü?q=€&a=1#€", f"{chat}/%E2%82%AC/%C3%BC?q=%E2%82%AC&a=1#%E2%82%AC"),
        (f"{chat}/%E2%82%AC", f"{chat}/%E2%82%AC"),
    ):
        signed = browser.login("euro", rd=rd)
        assert signed.status_code == 303, (rd, signed.status_code, signed.text)
        assert signed.headers["location"] == location and location.isascii()
        # where a browser goes: the place rd named, once the escapes are read
        assert unquote(urljoin(here, location)) == unquote(urljoin(here, rd))
        assert any(c.startswith("ark_session=") for c in signed.headers.get_list("set-cookie"))
        assert browser.verify().status_code == 200


def test_the_sign_in_csrf_value_is_bound_to_its_browser_and_a_tossed_cookie_pairs_with_nothing(
    ark: ArkProcess,
) -> None:
    users(ark, "add", "tosca", password=PASSWORD)  # the attacker's own account
    users(ark, "add", "vera", password=PASSWORD)
    as_tosca = {"username": "tosca", "password": PASSWORD, "rd": "/"}
    victim, attacker = Browser(ark, "192.0.2.41"), Browser(ark, "192.0.2.42")
    victim_csrf, attacker_csrf = victim.csrf(), attacker.csrf()
    (name, victim_nonce), (_, attacker_nonce) = (
        next((k, v) for k, v in b.cookies.items() if "csrf" in k) for b in (victim, attacker)
    )
    # Login CSRF by cookie tossing: an application on chat.D sets the attacker's own CSRF cookie for
    # Domain=.D (it reaches the console under the plain name, beside the victim's own or alone) and posts
    # the attacker's own form value from the victim's browser, to sign the victim into the attacker's
    # account. Only the console's __Host- cookie counts, which no site under D can set.
    for cookie in (f"ark_csrf={attacker_nonce}", f"ark_csrf={attacker_nonce}; {name}={victim_nonce}"):
        tossed = victim.send(
            "POST", "/auth/login", data={**as_tosca, "csrf": attacker_csrf}, headers={"cookie": cookie}
        )
        assert tossed.status_code == 403, cookie
    assert victim.verify().status_code == 401
    victim.cookies[name] = victim_nonce  # (the refusals without it set a new one)
    assert victim_csrf != victim_nonce  # the form's value is no cookie's: reading a cookie gives no value
    for csrf in (victim_nonce, attacker_csrf):  # the cookie's own value; a value minted for another state
        refused = victim.send("POST", "/auth/login", data={**as_tosca, "csrf": csrf})
        assert refused.status_code == 403 and "not sent by ARK" in error_of(refused)
    assert victim.verify().status_code == 401 and attacker.verify().status_code == 401
    as_vera = {"username": "vera", "password": PASSWORD, "rd": "/"}
    assert victim.send("POST", "/auth/login", data={**as_vera, "csrf": victim_csrf}).status_code == 303
    assert victim.verify().headers["x-ark-user"] == "vera"


def test_posts_are_accepted_from_the_consoles_own_origin_only(ark: ArkProcess) -> None:
    users(ark, "add", "oscar", password=PASSWORD)
    browser = Browser(ark, "192.0.2.43")
    base = {"username": "oscar", "password": PASSWORD, "rd": "/"}
    others = [
        {"origin": f"https://chat.{DOMAIN}"},  # another site under D: another origin, maybe anyone's code
        {"origin": f"https://evil.{DOMAIN}"},
        {"origin": "null"},
        {"origin": f"http://{DOMAIN}"},
        {"origin": f"https://{DOMAIN}:8443"},
        {"referer": f"https://chat.{DOMAIN}/c/1"},  # no Origin: Referer's origin decides
    ]
    for headers in others:
        refused = browser.send("POST", "/auth/login", data={**base, "csrf": browser.csrf()}, headers=headers)
        assert refused.status_code == 403 and "not sent by ARK" in error_of(refused), headers
    assert browser.verify().status_code == 401  # none of these signed in
    for headers in (
        {"origin": f"https://{DOMAIN}"},
        {"origin": f"https://axl.{DOMAIN}"},
        {"referer": f"https://{DOMAIN}/auth/login"},
    ):
        signed = browser.send("POST", "/auth/login", data={**base, "csrf": browser.csrf()}, headers=headers)
        assert signed.status_code == 303, headers
    home = browser.send("GET", "/")
    csrf = re.search(r'action="/auth/logout"><input type=hidden name=csrf value="([^"]+)"', home.text)
    assert csrf
    refused = browser.send("POST", "/auth/logout", data={"csrf": csrf.group(1)}, headers=others[0])
    assert refused.status_code == 403 and browser.verify().status_code == 200  # still signed in
    out = browser.send("POST", "/auth/logout", data={"csrf": csrf.group(1)}, headers={"origin": f"https://{DOMAIN}"})
    assert out.status_code == 303 and browser.verify().status_code == 401
