"""ARK auth's rules without a server: password hashes, TOTP, throttling, signing, identity tokens,
redirect targets and form parsing. The console and the gateway are tested for real in test_auth_console.py.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from argon2 import PasswordHasher, Type

from ark.auth import passwords, totp
from ark.auth.access import rank, site_access, visible_sites
from ark.auth.identity import Identity, IdentityVerifier, identity_key, mint
from ark.auth.revocation import LIVE_S, LiveSessions
from ark.auth.service import AuthService, client_subject
from ark.auth.signing import SecretFileError, b64, derive, load_secret, sign, unb64, unsign
from ark.auth.throttle import Throttle
from ark.auth.users import ROLES, User, UserError, UserStore, check_display_name, check_email, check_name
from ark.config import load_settings, schema
from ark.console import pages, web
from ark.edge.ports import port_map
from ark.edge.render import make_context, render_files
from ark.edge.sites import LINKED, SESSION_SITES, edge_sites
from ark.errors import ConfigError
from ark.store import Store
from ark.store.migrate import HEAD
from ark.wire import Request

# -- passwords ---------------------------------------------------------------------------------------


def test_hashes_are_argon2id_with_rfc_9106_parameters() -> None:
    stored = passwords.hash_password("correct horse battery")
    assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert passwords.verify_password(stored, "correct horse battery")
    assert not passwords.verify_password(stored, "correct horse batterz")
    assert not passwords.verify_password("not a hash", "x")  # corrupt: never matches, never raises
    assert not passwords.verify_password(stored, "x" * (passwords.MAX_LENGTH + 1))
    assert not passwords.needs_rehash(stored)
    assert passwords.hash_password("same") != passwords.hash_password("same")  # salted


def test_a_hash_with_weaker_parameters_needs_a_rehash() -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1, type=Type.ID).hash("pw-12345678")
    assert passwords.verify_password(weak, "pw-12345678")
    assert passwords.needs_rehash(weak)
    assert passwords.needs_rehash("garbage")


@pytest.mark.parametrize(
    ("password", "problem"),
    [("short", "at least 8"), ("x" * 1025, "at most 1024"), ("line\nbreak-123", "control characters")],
)
def test_new_passwords_are_checked(password: str, problem: str) -> None:
    with pytest.raises(passwords.PasswordProblem, match=problem):
        passwords.check_new(password)


def test_a_sign_in_replaces_an_old_hash(tmp_path: Path) -> None:
    settings = load_settings(env={"ARK_DATA_DIR": str(tmp_path)})
    store = Store.open(settings)
    try:
        users = UserStore(store.engine)
        weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1, type=Type.ID).hash("pw-12345678")
        users.add("old", "old@example.com", "Old", "user", weak)
        service = AuthService(users, b"k" * 32, settings.auth)
        result = asyncio.run(service.login("old", "pw-12345678", "", "10.0.0.1", "test"))
        assert result.outcome == "ok"
        stored = users.require("old").password_hash
        assert stored != weak and not passwords.needs_rehash(stored)
    finally:
        store.close()


# -- TOTP --------------------------------------------------------------------------------------------

RFC_SECRET = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"  # "12345678901234567890", RFC 6238's SHA-1 key


@pytest.mark.parametrize(
    ("when", "code"),
    [(59, "287082"), (1111111109, "081804"), (1234567890, "005924"), (2000000000, "279037")],
)
def test_totp_matches_rfc_6238_vectors(when: int, code: str) -> None:
    # RFC 6238 appendix B gives 8 digits; 6-digit codes are their last six
    assert totp.code_at(RFC_SECRET, when) == code


def test_totp_accepts_one_step_of_drift_and_never_the_same_step_twice() -> None:
    now = 1_000_000_000.0
    step = totp.step_at(now)
    assert totp.match(RFC_SECRET, totp.code_at(RFC_SECRET, now), now, None) == step
    assert totp.match(RFC_SECRET, totp.code_at(RFC_SECRET, now - 30), now, None) == step - 1
    assert totp.match(RFC_SECRET, totp.code_at(RFC_SECRET, now + 30), now, None) == step + 1
    assert totp.match(RFC_SECRET, totp.code_at(RFC_SECRET, now - 90), now, None) is None
    assert totp.match(RFC_SECRET, totp.code_at(RFC_SECRET, now), now, step) is None  # replay
    assert totp.match(RFC_SECRET, "12345", now, None) is None
    assert totp.match(RFC_SECRET, "\uff11\uff12\uff13\uff14\uff15\uff16", now, None) is None  # fullwidth digits


def test_otpauth_uri_and_secrets() -> None:
    secret = totp.new_secret()
    assert len(secret) == 32 and secret.isalnum()
    uri = totp.otpauth_uri(secret, "alice", "ARK example.org")
    assert uri.startswith("otpauth://totp/ARK%20example.org%3Aalice?secret=" + secret)
    assert "issuer=ARK%20example.org" in uri and "digits=6" in uri and "period=30" in uri


# -- throttling --------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_waits_after_the_free_failures_and_doubles() -> None:
    clock = Clock()
    throttle = Throttle(free=5, base_s=30, max_s=3600, clock=clock)
    for _ in range(5):
        assert throttle.wait(["user:a"]) == 0
        throttle.failed(["user:a"])
    assert throttle.wait(["user:a"]) == 30
    assert throttle.wait(["user:b"]) == 0  # another name is not affected
    clock.now += 30
    assert throttle.wait(["user:a"]) == 0
    throttle.failed(["user:a"])
    assert throttle.wait(["user:a"]) == 60
    throttle.succeeded("user:a")
    assert throttle.wait(["user:a"]) == 0


def test_throttle_forgets_quiet_counts_and_stays_bounded() -> None:
    clock = Clock()
    throttle = Throttle(free=1, base_s=10, max_s=100, capacity=3, clock=clock)
    throttle.failed(["ip:1"])
    assert throttle.wait(["ip:1"]) == 10
    throttle.forgive("ip:1")
    assert throttle.wait(["ip:1"]) == 0
    throttle.failed(["ip:1"])
    clock.now += 101
    throttle.failed(["ip:1"])  # the old count was forgotten: the first failure again, not the second
    assert throttle.wait(["ip:1"]) == 10
    throttle.failed(["ip:2", "ip:3", "ip:4", "ip:5"])
    assert len(throttle._counts) == 3


def test_ipv6_clients_are_throttled_per_64() -> None:
    assert client_subject("2001:db8:1:2:3:4:5:6") == client_subject("2001:db8:1:2:ffff::1") == "ip:2001:db8:1:2::/64"
    assert client_subject("192.0.2.7") == "ip:192.0.2.7"
    assert client_subject("not an address") == "ip:not an address"


# -- signing, the secret, identity tokens ---------------------------------------------------------------


def test_the_secret_is_made_once_private_and_refused_when_others_may_read_it(tmp_path: Path) -> None:
    secret = load_secret(tmp_path / "data")
    path = tmp_path / "data" / "auth.key"
    assert len(secret) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secret(tmp_path / "data") == secret
    os.chmod(path, 0o644)
    with pytest.raises(SecretFileError, match="chmod 600"):
        load_secret(tmp_path / "data")
    os.chmod(path, 0o600)
    path.write_text("too short\n")
    with pytest.raises(SecretFileError, match="hex digits"):
        load_secret(tmp_path / "data")
    assert load_secret(tmp_path / "other") != secret


def test_signatures_are_per_purpose_and_tamper_evident() -> None:
    secret = b"s" * 32
    session, csrf = derive(secret, "session"), derive(secret, "csrf")
    signed = sign(session, "token")
    assert unsign(session, signed) == "token"
    assert unsign(csrf, signed) is None
    assert unsign(session, "tokem." + signed.split(".")[1]) is None
    assert unsign(session, signed[:-1] + ("A" if signed[-1] != "A" else "B")) is None
    for junk in ("", ".", "x", "é.é", "a" * 5000):
        assert unsign(session, junk) is None
    with pytest.raises(ValueError):
        unb64("a")


SID = "5e" * 32  # a session id: the SHA-256 (hex) of a cookie's token


class Sessions:
    """A stand-in for the database's ``user_sessions``: the ids that are live, and how often it was asked."""

    def __init__(self, *live: str) -> None:
        self.live, self.asked = set(live), 0

    def __call__(self, sid: str) -> bool:
        self.asked += 1
        return sid in self.live


def test_identity_tokens_verify_expire_and_refuse_tampering() -> None:
    clock = Clock()
    secret = b"i" * 32
    verifier = IdentityVerifier(secret, LiveSessions(Sessions(SID)), clock=clock)
    token = mint(secret, Identity("u1", "alice", "alice@example.com", SID, int(clock.now) + 300))

    def verify(token: str) -> Identity | None:
        return asyncio.run(verifier.verify(token))

    assert verify(token) == Identity("u1", "alice", "alice@example.com", SID, 1300)
    payload, signature = token.split(".")
    forged = mint(b"x" * 32, Identity("u1", "mallory", "m@example.com", SID, 9999999999))
    assert verify(forged) is None
    assert verify(payload[:-2] + "AA." + signature) is None
    assert verify("garbage") is None
    assert verify("a" * 5000 + "." + signature) is None
    # signed by us, but from before session ids, or naming something that is not one: refused
    old_format = b64(orjson.dumps({"u": "u1", "n": "alice", "e": "alice@example.com", "x": 9999999999}))
    assert verify(sign(identity_key(secret), old_format)) is None
    assert verify(mint(secret, Identity("u1", "alice", "a@example.com", "token-itself", 9999999999))) is None
    # another session of the same user that is not live: refused although signed and unexpired
    assert verify(mint(secret, Identity("u1", "alice", "a@example.com", "ab" * 32, 9999999999))) is None
    clock.now += 300
    assert verify(token) is None
    assert verifier.counts == {
        "accepted": 1,
        "malformed": 4,
        "bad_signature": 2,
        "expired": 1,
        "revoked": 1,
        "unchecked": 0,
    }


def test_live_sessions_trust_live_briefly_and_ended_for_good() -> None:
    clock = Clock()
    sessions = Sessions("a" * 64, "b" * 64)
    live = LiveSessions(sessions, live_s=2.0, clock=clock)

    async def steps() -> None:
        assert await live.is_live("a" * 64) and sessions.asked == 1
        assert await live.is_live("a" * 64) and sessions.asked == 1  # answered from the cache
        sessions.live.discard("a" * 64)  # ended by another process (`ark users disable`)
        clock.now += 2.0
        assert not await live.is_live("a" * 64) and sessions.asked == 2  # asked again: gone
        sessions.live.add("a" * 64)
        clock.now += 3600
        assert not await live.is_live("a" * 64) and sessions.asked == 2  # ended is final, never asked again
        live.seen("b" * 64)  # the console just read it: no lookup needed
        assert await live.is_live("b" * 64) and sessions.asked == 2
        live.ended("b" * 64)  # signed out at the console of this process: refused at once
        assert not await live.is_live("b" * 64)
        live.seen("b" * 64)  # a check that read it before the sign-out does not bring it back
        assert not await live.is_live("b" * 64) and sessions.asked == 2

    asyncio.run(steps())


def test_live_sessions_share_one_lookup_and_let_a_sign_out_win() -> None:
    release, started = threading.Event(), threading.Event()

    def slow(sid: str) -> bool:
        started.set()
        release.wait(10)
        return True

    async def steps() -> None:
        live = LiveSessions(slow, wait_s=30)
        waiting = [asyncio.create_task(live.is_live(SID)) for _ in range(5)]
        await asyncio.to_thread(started.wait, 10)
        assert live.lookups == 1  # five requests, one query
        live.ended(SID)  # a sign-out while the lookup (which read "live") is under way
        release.set()
        assert await asyncio.gather(*waiting) == [False] * 5
        assert not await live.is_live(SID) and live.lookups == 1

    asyncio.run(steps())


def test_live_sessions_fail_closed_uncached_and_stay_bounded(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    calls: list[str] = []

    def broken(sid: str) -> bool:
        calls.append(sid)
        raise OSError("database is down")

    async def steps() -> None:
        down = LiveSessions(broken, clock=clock)
        assert await down.is_live(SID) is None and await down.is_live(SID) is None  # unknown, not "ended"
        assert calls == [SID, SID]  # a failure is not remembered: asked again next time

        sessions = Sessions(*(c * 64 for c in "abc"))
        live = LiveSessions(sessions, max_entries=2, clock=clock)
        for c in "abc":
            assert await live.is_live(c * 64)
        assert await live.is_live("c" * 64) and sessions.asked == 3
        assert await live.is_live("a" * 64) and sessions.asked == 4  # the oldest was forgotten

    with caplog.at_level("WARNING", logger="ark.auth"):
        asyncio.run(steps())
    assert sum("cannot check a session" in r.message for r in caplog.records) == 1  # not once per request


def test_a_slow_lookup_is_not_waited_for_and_fills_the_cache_when_it_ends() -> None:
    """An exhausted database pool must not hold API requests back for a header that only attributes usage."""
    release, finished = threading.Event(), threading.Event()

    def slow(sid: str) -> bool:
        release.wait(30)
        finished.set()
        return True

    async def steps() -> None:
        live = LiveSessions(slow, wait_s=0.01)
        verifier = IdentityVerifier(b"k" * 32, live)
        token = mint(b"k" * 32, Identity("u1", "alice", "alice@example.com", SID, 9999999999))
        assert await live.is_live(SID) is None  # stopped waiting...
        assert await verifier.verify(token) is None  # ...and so does the verifier: unattributed
        assert not finished.is_set() and live.lookups == 1  # while the one lookup is still under way
        assert verifier.counts["unchecked"] == 1 and verifier.counts["revoked"] == 0
        pending = list(live._pending.values())  # the lookup left running in the background
        release.set()
        assert await asyncio.gather(*pending) == [True]
        assert await verifier.verify(token) is not None and live.lookups == 1  # its answer was cached
        assert verifier.counts["accepted"] == 1

    asyncio.run(steps())


def test_a_failed_lookup_counts_as_unchecked_and_is_not_remembered() -> None:
    answers: list[bool | Exception] = [OSError("pool exhausted"), True]

    def flaky(sid: str) -> bool:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def steps() -> None:
        verifier = IdentityVerifier(b"k" * 32, LiveSessions(flaky, wait_s=30))
        token = mint(b"k" * 32, Identity("u1", "alice", "alice@example.com", SID, 9999999999))
        assert await verifier.verify(token) is None
        assert (verifier.counts["unchecked"], verifier.counts["revoked"]) == (1, 0)
        assert await verifier.verify(token) is not None  # asked again: the failure was not cached as "ended"
        assert verifier.counts["accepted"] == 1 and not answers

    asyncio.run(steps())


def test_a_token_ends_with_its_session(tmp_path: Path) -> None:
    """Through the real service and database: sign-out refuses at once; disable and passwd within live_s."""
    settings = load_settings(env={"ARK_DATA_DIR": str(tmp_path)})
    store = Store.open(settings)
    clock = Clock()
    try:
        users = UserStore(store.engine)
        users.add("ivan", "ivan@example.com", "Ivan", "user", passwords.hash_password("pw-12345678"))
        shared = LiveSessions(users.is_live, wait_s=30, clock=clock)  # `ark up`: the console and the gateway share it
        service = AuthService(users, b"k" * 32, settings.auth, sessions=shared)
        here = IdentityVerifier(b"k" * 32, shared)
        elsewhere = IdentityVerifier(b"k" * 32, LiveSessions(users.is_live, wait_s=30, clock=clock))  # another process

        async def signed_in() -> tuple[str, str]:
            result = await service.login("ivan", "pw-12345678", "", "10.0.0.1", "test")
            found = await service.check([service.cookie_value(result.token)])
            assert found is not None
            return service.identity_token(found[0]), result.token

        async def steps() -> None:
            token, cookie_token = await signed_in()
            assert cookie_token not in token and unb64(token.split(".")[0]).count(b'"s":"') == 1
            for verifier in (here, elsewhere):
                identity = await verifier.verify(token)
                assert identity is not None and identity.name == "ivan"
            await service.logout(cookie_token)
            assert await here.verify(token) is None  # this process's console said so: no wait
            clock.now += LIVE_S
            assert await elsewhere.verify(token) is None  # the other process reads it within live_s

            def disable() -> User:
                return users.set_disabled("ivan", True)

            def new_password() -> User:
                return users.set_password("ivan", "h2")

            for change in (disable, new_password):  # what `ark users disable` / `passwd` do, from another process
                users.set_disabled("ivan", False)
                token, _ = await signed_in()
                assert await here.verify(token) is not None and await elsewhere.verify(token) is not None
                change()
                clock.now += LIVE_S
                assert await here.verify(token) is None and await elsewhere.verify(token) is None

        asyncio.run(steps())
        assert here.counts["revoked"] == 3 and elsewhere.counts["revoked"] == 3
    finally:
        store.close()


# -- HTTP pieces ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/chat?x=1", "/chat?x=1"),
        ("https://chat.example.org/c/1", "https://chat.example.org/c/1"),
        ("https://example.org/", "https://example.org/"),
        ("http://GRAFANA.example.org:8443/d", "http://GRAFANA.example.org:8443/d"),
        ("https://evil.example/", "/"),
        ("https://example.org.evil.example/", "/"),
        ("https://evilexample.org/", "/"),
        ("//evil.example/", "/"),
        ("/\\evil.example/", "/"),
        ("https://example.org@evil.example/", "/"),
        ("https://chat.example.org\\@evil.example/", "/"),
        ("javascript:alert(1)", "/"),
        ("https://chat.example.org/\r\nSet-Cookie: x=1", "/"),
        (" https://evil.example/", "/"),
        ("https://chat.example.org:99999/", "/"),
        ("", "/"),
        ("/" + "a" * 3000, "/"),
    ],
)
def test_redirect_targets_stay_on_the_domain(target: str, expected: str) -> None:
    assert web.safe_redirect(target, "example.org", "example.org") == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # as Nginx sends it: $request_uri unencoded, its own query included
        ("rd=https://chat.example.org/c/1?model=a&tab=2", "https://chat.example.org/c/1?model=a&tab=2"),
        ("rd=%2Fsettings%3Fa%3D1", "/settings?a=1"),  # an encoded one, as a form or a person writes it
        ("x=1&rd=/a", "/a"),
        ("", ""),
    ],
)
def test_the_login_page_keeps_the_whole_url_nginx_sends(query: str, expected: str) -> None:
    assert web.return_to(Request("GET", "/auth/login", query, {}, b"", "127.0.0.1")) == expected


def test_without_a_domain_only_this_host_and_paths_are_targets() -> None:
    assert web.safe_redirect("http://127.0.0.1:8080/x", "", "127.0.0.1:8080") == "http://127.0.0.1:8080/x"
    assert web.safe_redirect("http://evil.example/", "", "127.0.0.1:8080") == "/"
    assert web.safe_redirect("/x", "", "") == "/x"


def _request(body: bytes = b"", ctype: str = "application/x-www-form-urlencoded", **headers: str) -> Request:
    return Request("POST", "/auth/login", "", {"content-type": ctype, **headers}, body, "127.0.0.1")


def test_forms_are_parsed_strictly() -> None:
    limits = {"username": 10, "password": 20}
    assert web.form(_request(b"username=al%20ice&password=p%26w&other=x"), limits) == {
        "username": "al ice",
        "password": "p&w",
    }
    for body, status in (
        (b"username=a&username=b", 400),
        (b"username=" + b"x" * 11, 400),
        (b"username=\xff", 400),
        (b"&".join(b"f%d=1" % i for i in range(40)), 400),
        (b"username=a%00b", 400),
    ):
        with pytest.raises(web.BadInput) as caught:
            web.form(_request(body), limits)
        assert caught.value.status == status
    with pytest.raises(web.BadInput) as caught:
        web.form(_request(b"{}", "application/json"), limits)
    assert caught.value.status == 415


def test_cookies_and_client_addresses() -> None:
    request = _request(cookie='a=1; ark_session=one; x; ark_session="two"', **{"x-real-ip": "203.0.113.9"})
    assert web.cookies(request, "ark_session") == ["one", "two"]
    assert web.cookies(_request(cookie="x" * 20000), "x") == []
    assert web.client_address(request) == "203.0.113.9"  # the peer is Nginx on loopback
    assert web.client_address(_request(**{"x-real-ip": "not-an-ip"})) == "127.0.0.1"
    remote = Request("GET", "/", "", {"x-real-ip": "203.0.113.9"}, b"", "198.51.100.1")
    assert web.client_address(remote) == "198.51.100.1"  # only a local proxy is believed
    assert web.header_value("Zoë\r\nX: y") == "ZoÃ«X: y"  # UTF-8 bytes on the wire, no line breaks


# -- users ---------------------------------------------------------------------------------------------


def test_user_fields_are_validated() -> None:
    assert check_name(" Alice ") == "alice"
    for bad in ("", "-x", "a b", "a/b", "x" * 65, "ünï"):
        with pytest.raises(UserError):
            check_name(bad)
    assert check_email("a.b@example.org") == "a.b@example.org"
    for bad in ("nope", "a@b@c", "a b@example.org", "a@exa mple.org"):
        with pytest.raises(UserError):
            check_email(bad)
    assert check_display_name("  Zoë   Li ") == "Zoë Li"
    with pytest.raises(UserError):
        check_display_name("\x1b[31m")


def _store_roundtrip(store: Store) -> None:
    users = UserStore(store.engine)
    user = users.add("Bob", "bob@example.org", "Bob B", "admin", passwords.hash_password("pw-12345678"))
    assert user.name == "bob" and user.is_admin and not user.disabled
    with pytest.raises(UserError, match="exists already"):
        users.add("bob", "other@example.org", "x", "user", "h")
    with pytest.raises(UserError, match="exists already"):
        users.add("bobby", "bob@example.org", "x", "user", "h")
    with pytest.raises(UserError, match="role"):
        users.set_role("bob", "root")
    users.open_session(user.id, "t" * 43, timedelta(hours=1), "10.0.0.1", "agent")
    users.open_session(user.id, "u" * 43, timedelta(seconds=-1), "10.0.0.1", "agent")
    found = users.session("t" * 43)
    assert found is not None and found.user.name == "bob"
    assert users.session("u" * 43) is None  # expired
    assert users.list_users()[0][1] == 1
    assert users.prune_sessions() == 1
    assert users.set_totp("bob", totp.new_secret(), 99).totp_last_step == 99  # the enrolment's code is used up
    assert not users.use_totp_step(user.id, 99)
    assert users.use_totp_step(user.id, 100) and not users.use_totp_step(user.id, 100)
    assert not users.use_totp_step(user.id, 99) and users.use_totp_step(user.id, 101)
    users.set_disabled("bob", True)
    assert users.session("t" * 43) is None  # disabling ended it
    users.set_disabled("bob", False)
    assert users.session("t" * 43) is None and users.require("bob").totp_last_step == 101


def test_users_and_sessions_on_sqlite(tmp_path: Path) -> None:
    store = Store.open(load_settings(env={"ARK_DATA_DIR": str(tmp_path)}))
    try:
        _store_roundtrip(store)
    finally:
        store.close()


def test_users_and_sessions_on_postgresql(tmp_path: Path, postgres: object) -> None:
    url = postgres.create_database()  # type: ignore[attr-defined]
    store = Store.open(load_settings(env={"ARK_DATA_DIR": str(tmp_path), "ARK_STORE_URL": url}))
    try:
        _store_roundtrip(store)
    finally:
        store.close()


def test_migration_0003_goes_down_and_up_again(tmp_path: Path) -> None:
    from alembic import command
    from sqlalchemy import inspect

    from ark.store.migrate import _config, current, head

    store = Store.open(load_settings(env={"ARK_DATA_DIR": str(tmp_path)}))
    try:
        config = _config()
        for target in ("0002", "head"):
            with store.engine.begin() as connection:
                config.attributes["connection"] = connection
                if target == "0002":
                    command.downgrade(config, target)
                else:
                    command.upgrade(config, target)
            tables = inspect(store.engine).get_table_names()
            columns = {c["name"] for c in inspect(store.engine).get_columns("usage")}
            assert ("users" in tables) == ("person" in columns) == (target == "head")
        assert current(store.engine) == head()
    finally:
        store.close()


def test_migration_0004_goes_down_and_up_again(tmp_path: Path) -> None:
    from alembic import command
    from sqlalchemy import inspect

    from ark.store.migrate import _config, current

    store = Store.open(load_settings(env={"ARK_DATA_DIR": str(tmp_path)}))
    try:
        config = _config()
        for target in ("0003", "head"):
            with store.engine.begin() as connection:
                config.attributes["connection"] = connection
                if target == "0003":
                    command.downgrade(config, target)
                else:
                    command.upgrade(config, target)
            found = inspect(store.engine)
            usage = {c["name"] for c in found.get_columns("usage")}
            keys = {c["name"] for c in found.get_columns("api_keys")}
            assert ("user_limits" in found.get_table_names()) == ("person_id" in usage) == (target == "head")
            assert ("trust_user_headers" in keys) == (target == "head")
            assert ("kind" in usage) == ("images" in usage) == (target == "head")  # 0005, dropped on the way down
        assert current(store.engine) == HEAD
    finally:
        store.close()


def test_journal_rows_written_before_0003_still_reach_the_database(tmp_path: Path) -> None:
    from ark.store.ledger import ingest, spend_logs

    store = Store.open(load_settings(env={"ARK_DATA_DIR": str(tmp_path)}))
    try:
        old = {"request_id": "r1", "time": "2026-12-01T10:00:00.000000+00:00", "path": "/v1/models", "status": 200}
        old |= {"latency_ms": 1.0, "ttft_ms": None, "key_id": None, "key_alias": None, "team_id": None}
        old |= {"user_id": None, "model_requested": None, "model_served": None}
        old |= {"prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0}
        assert ingest(store.engine, [old]).rows == 1
        rows = spend_logs(store.engine, key_id=None, start=None, end=None, limit=10)
        assert rows[0]["request_id"] == "r1" and rows[0]["end_user"] is None
    finally:
        store.close()


def test_the_home_page_links_every_site_nginx_serves_but_the_console(tmp_path: Path) -> None:
    settings = load_settings(env={"ARK_DATA_DIR": str(tmp_path), "ARK_EDGE_DOMAIN": "example.org"})
    served = {site.host for site in edge_sites(settings, port_map(settings)) if site.access != "console"}
    now = datetime.now(UTC)
    user = User("id", "alice", "alice@example.org", "Alice", "user", "hash", None, None, False, now, now)
    page = pages.home(user, csrf="token", domain="example.org")
    assert set(re.findall(r'href="https://([^/"]+)/"', page)) == served
    assert '<a href="https://chat.example.org/">Chat (Open WebUI)</a>' in page


def test_site_access_needs_at_least_the_sites_role() -> None:
    roles = {"chat": "user", "n8n": "admin"}
    assert site_access("user", "chat", roles) == "allowed"
    assert site_access("admin", "chat", roles) == "allowed"  # a higher role passes too
    assert site_access("admin", "n8n", roles) == "allowed"
    assert site_access("user", "n8n", roles) == "role_too_low"
    assert site_access("root", "chat", roles) == "role_too_low"  # a role ARK does not know passes nothing
    assert site_access("", "chat", roles) == "role_too_low"
    for site in ("", "prometheus", "llm", "CHAT", "chat "):
        assert site_access("admin", site, roles) == "unknown_site", site
    assert rank("user") < rank("admin") and rank("nobody") == -1
    links = [("chat", "Chat"), ("llm", "API"), ("n8n", "Workflows")]
    assert visible_sites("user", links, roles) == [("chat", "Chat"), ("llm", "API")]  # llm: keys, not roles
    assert visible_sites("admin", links, roles) == links


def test_the_role_tables_match_their_owners() -> None:
    """schema keeps copies so that ark.config imports neither ark.auth nor ark.edge."""
    assert set(schema.ROLE_ORDER) == set(ROLES)
    assert tuple(schema.SITE_ROLES) == SESSION_SITES  # every site behind the sign-in, no other
    assert all(role in schema.ROLE_ORDER for role in schema.SITE_ROLES.values())
    assert schema.Settings().edge.site_roles == schema.SITE_ROLES  # the [edge] default


def _site_roles(tmp_path: Path, text: str | None = None, env: str | None = None) -> dict[str, str]:
    path = tmp_path / "ark.toml"
    path.write_text("[edge]\n" + (f"site_roles = {text}\n" if text is not None else ""))
    environ = {"ARK_DATA_DIR": str(tmp_path)} | ({"ARK_EDGE_SITE_ROLES": env} if env is not None else {})
    return dict(load_settings(config_path=path, env=environ).edge.site_roles)


def test_site_roles_lay_over_the_defaults(tmp_path: Path) -> None:
    defaults = {"chat": "user", "art": "user", "grafana": "user", "n8n": "admin", "chromadb": "admin"}
    assert _site_roles(tmp_path) == defaults
    # naming one site leaves the others at their default: restricting grafana does not open n8n
    assert _site_roles(tmp_path, '"grafana=admin"') == defaults | {"grafana": "admin"}
    assert _site_roles(tmp_path, '{ n8n = "user", chat = "admin" }') == defaults | {"n8n": "user", "chat": "admin"}
    assert _site_roles(tmp_path, '""') == defaults
    assert _site_roles(tmp_path, '"art=admin"', env=" n8n = user ,") == defaults | {"n8n": "user"}


@pytest.mark.parametrize(
    "value",
    [
        '"prometheus=admin"',  # basic auth: no user, no role
        '"llm=admin"',  # API keys
        '"axl=admin"',  # the console itself
        '"wiki=admin"',
        '"n8n=root"',
        '"n8n=Admin"',
        '"n8n"',
        '"n8n=admin, n8n=user"',
        "{ n8n = 1 }",
        '["n8n=admin"]',
    ],
)
def test_site_roles_refuse_unknown_sites_and_roles(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _site_roles(tmp_path, value)
    message = str(caught.value)
    assert "[edge] site_roles" in message and "sites: chat, art, grafana, n8n, chromadb; roles: user, admin" in message


def test_the_home_page_links_only_the_sites_the_role_opens(tmp_path: Path) -> None:
    settings = load_settings(env={"ARK_DATA_DIR": str(tmp_path), "ARK_EDGE_DOMAIN": "example.org"})
    now = datetime.now(UTC)
    user = User("id", "bob", "bob@example.org", "Bob", "user", "hash", None, None, False, now, now)
    page = pages.home(
        user, csrf="t", domain="example.org", sites=visible_sites("user", LINKED, settings.edge.site_roles)
    )
    linked = set(re.findall(r'href="https://([^./"]+)\.example\.org/"', page))
    assert linked == {"chat", "art", "grafana", "llm", "prometheus"}


def test_each_auth_subrequest_names_its_own_site_and_nothing_else_does(tmp_path: Path) -> None:
    settings = load_settings(env={"ARK_DATA_DIR": str(tmp_path), "ARK_EDGE_DOMAIN": "example.org"})
    files = render_files(make_context(settings, tmp_path / "out", "letsencrypt"), ["nginx"])
    for site in edge_sites(settings, port_map(settings)):
        text = files[f"nginx/sites/{site.file_name}.conf"].content.decode()
        asked = re.findall(r"proxy_pass (\S+/auth/verify\S*);", text)
        if site.access == "session":  # one fixed question, in the internal location only
            assert asked == [f"http://127.0.0.1:8080/auth/verify?site={site.name}"], site.host
            assert re.search(r"location = /_ark_auth \{\n        internal;\n        proxy_pass [^\n]*verify", text)
            assert "$arg" not in text and "$args" not in text and "$query_string" not in text, site.host
        else:
            assert asked == [], site.host
