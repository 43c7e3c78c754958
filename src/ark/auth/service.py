"""Signing in, checking sessions, signing out: the rules, apart from HTTP (ark/console does that).

Owned by the event loop: the throttle and the counters are plain fields. Database calls and password
hashes run on worker threads; at most ``hash_slots`` hashes run at once (each takes 64 MiB and
~0.1 s of CPU), the rest wait their turn instead of exhausting memory.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from ark.auth import passwords, totp
from ark.auth.identity import Identity, identity_key, mint
from ark.auth.revocation import LiveSessions
from ark.auth.signing import derive, mac, sign, unsign
from ark.auth.throttle import Throttle
from ark.auth.users import Session, User, UserStore, session_id
from ark.config.loader import AuthSettings

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")  # secrets.token_urlsafe(32)
_MAX_COOKIES = 4  # ark_session values tried per request (a parent domain may set one more)


@dataclass(frozen=True, slots=True)
class LoginResult:
    outcome: str  # "ok", "failed", "throttled"
    user: User | None = None
    token: str = ""  # the new session's token (the cookie carries it signed)
    expires: datetime | None = None  # when the new session ends
    retry_after: float = 0.0  # throttled: seconds to wait


def client_subject(client: str) -> str:
    """The throttle's subject for an address: the address, or its /64 for IPv6."""
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return "ip:" + client[:64]
    if address.version == 6:
        return "ip:" + str(ipaddress.ip_network(f"{address}/64", strict=False))
    return f"ip:{address}"


class AuthService:
    def __init__(
        self,
        users: UserStore,
        secret: bytes,
        settings: AuthSettings,
        *,
        clock: Callable[[], float] = time.time,
        throttle: Throttle | None = None,
        hash_slots: int = 2,
        sessions: LiveSessions | None = None,
    ) -> None:
        self.users = users
        # the gateway's view of live sessions, when it runs in this process: told of every sign-out at once
        self.sessions = sessions
        self._secret = secret
        self._session_key = derive(secret, "session")
        self._csrf_key = derive(secret, "csrf")
        self._identity_key = identity_key(secret)  # /auth/verify mints a token per request: derived once
        self.lifetime = timedelta(hours=settings.session_hours)
        self.identity_ttl_s = settings.identity_ttl_s
        self._clock = clock
        self.throttle = throttle or Throttle(free=settings.max_failures, base_s=settings.lockout_s)
        self._hash_slots = asyncio.Semaphore(hash_slots)
        self.counts: dict[str, int] = {}  # "login_ok", "login_failed", "login_throttled", "verify_ok", ...

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    async def start(self) -> None:
        """Make the stand-in hash for unknown users now, not during the first sign-in."""
        await asyncio.to_thread(passwords.dummy_hash)

    # -- signing in -------------------------------------------------------------------------------
    async def login(self, name: str, password: str, code: str, client: str, user_agent: str) -> LoginResult:
        """Check name, password and (when the user has one) TOTP code; open a session on success.

        Every failure looks the same to the caller, whatever failed: unknown name, wrong password,
        disabled user, missing, wrong or replayed code.
        """
        user_subject, ip_subject = "user:" + name.strip().lower()[:64], client_subject(client)
        wait = self.throttle.wait((user_subject, ip_subject))
        if wait > 0:
            self.count("login_throttled")
            return LoginResult("throttled", retry_after=wait)
        self.throttle.failed((user_subject, ip_subject))  # taken back below if it succeeds
        user = await self._check_password(name, password)
        if user is None or not await self._check_code(user, code):
            self.count("login_failed")
            return LoginResult("failed")
        self.throttle.succeeded(user_subject)
        self.throttle.forgive(ip_subject)
        token = secrets.token_urlsafe(32)
        expires = await asyncio.to_thread(self.users.open_session, user.id, token, self.lifetime, client, user_agent)
        self.count("login_ok")
        return LoginResult("ok", user, token, expires)

    async def _check_password(self, name: str, password: str) -> User | None:
        user = await asyncio.to_thread(self.users.get, name)
        stored = user.password_hash if user is not None else passwords.dummy_hash()
        async with self._hash_slots:
            ok = await asyncio.to_thread(passwords.verify_password, stored, password)
        if user is None or not ok or user.disabled:
            return None
        if passwords.needs_rehash(stored):
            async with self._hash_slots:
                fresh = await asyncio.to_thread(passwords.hash_password, password)
            await asyncio.to_thread(self.users.rehash, user.id, stored, fresh)
        return user

    async def _check_code(self, user: User, code: str) -> bool:
        if user.totp_secret is None:
            return True
        step = totp.match(user.totp_secret, code, self._clock(), user.totp_last_step)
        return step is not None and await asyncio.to_thread(self.users.use_totp_step, user.id, step)

    # -- sessions ---------------------------------------------------------------------------------
    def cookie_value(self, token: str) -> str:
        return sign(self._session_key, token)

    def _token(self, cookie: str) -> str | None:
        token = unsign(self._session_key, cookie, max_length=128)
        return token if token is not None and _TOKEN.match(token) else None

    async def check(self, cookies: Iterable[str]) -> tuple[Session, str] | None:
        """The live session (and its token) of the first ``ark_session`` cookie that has one."""
        for cookie in list(cookies)[:_MAX_COOKIES]:
            token = self._token(cookie)
            if token is None:
                continue  # forged or damaged: no database lookup for it
            session = await asyncio.to_thread(self.users.session, token)
            if self.sessions is not None:  # what we just read is news for the gateway's identity check
                if session is None:
                    self.sessions.ended(session_id(token))  # ended elsewhere (`ark users`), or expired
                else:
                    self.sessions.seen(session.id)
            if session is not None:
                return session, token
        return None

    async def logout(self, token: str) -> None:
        if self.sessions is not None:
            self.sessions.ended(session_id(token))  # before the delete: no moment where the gateway still counts it
        await asyncio.to_thread(self.users.close_session, token)

    async def logout_all(self, cookies: Iterable[str]) -> None:
        """End the session of every genuine ``ark_session`` cookie (no lookup: ending one that is gone is a no-op)."""
        tokens = [t for c in list(cookies)[:_MAX_COOKIES] if (t := self._token(c)) is not None]
        for token in tokens:
            await self.logout(token)

    async def prune(self) -> int:
        return await asyncio.to_thread(self.users.prune_sessions)

    # -- CSRF -------------------------------------------------------------------------------------
    @staticmethod
    def new_login_nonce() -> str:
        """The pre-sign-in state of one browser: a random value kept in its (host-only) CSRF cookie."""
        return secrets.token_urlsafe(32)

    def login_csrf(self, nonce: str) -> str | None:
        """The sign-in form's CSRF value for the browser whose cookie holds ``nonce`` (None: not a nonce of
        ours). An HMAC of the nonce, never the nonce itself: knowing a cookie, or planting one, gives no
        value that pairs with another browser's, and only the console can compute it."""
        return mac(self._csrf_key, "login:" + nonce) if _TOKEN.match(nonce) else None

    def session_csrf(self, token: str) -> str:
        """The CSRF value of forms shown to a signed-in user: bound to the session, so only its pages know it."""
        return mac(self._csrf_key, "session:" + token)

    # -- identity ---------------------------------------------------------------------------------
    def identity_token(self, session: Session) -> str:
        """The X-Ark-Identity token of ``session``'s user, bound to the session: it ends when the session does."""
        user, expires = session.user, int(self._clock()) + self.identity_ttl_s
        return mint(self._secret, Identity(user.id, user.name, user.email, session.id, expires), self._identity_key)

    def expires_in(self, expires: datetime) -> int:
        return max(0, int(expires.timestamp() - self._clock()))
