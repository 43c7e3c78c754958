"""The people who sign in, over the management API (master key only): what `ark users` does, for the
console's Users page and for scripts.

    GET  /user/accounts        every user: role, disabled, second factor on, live sessions
    POST /user/new             {"name", "password", "email"?, "display_name"?, "role"?}
    POST /user/disable         {"user"}   (their sessions end at once; their keys stop working)
    POST /user/enable          {"user"}
    POST /user/role            {"user", "role"}
    POST /user/password        {"user", "password"}   (their sessions end)
    POST /user/totp/reset      {"user"}   (the second factor is removed: they sign in with the password)

A user is named by name or e-mail. A change that would leave no enabled admin is refused: nobody could
manage ARK from the console any more. Budgets and model limits are ``/user/update`` (ark.gateway.admin).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from ark.auth import passwords
from ark.auth.users import ROLES, User, UserError, UserStore, default_email
from ark.engines.base import Json
from ark.errors import InvalidRequest, NotFound
from ark.gateway.exchange import JSON_HEADERS
from ark.gateway.requests import parse_body
from ark.runtime import Component, Runtime
from ark.wire import Request, Responder

log = logging.getLogger("ark.auth")


def account(user: User, sessions: int) -> Json:
    """What the API shows of a user (never the password's hash or the TOTP secret)."""
    return {
        "user": user.name,
        "email": user.email,
        "user_id": user.id,
        "display_name": user.display_name,
        "role": user.role,
        "disabled": user.disabled,
        "totp": user.totp_secret is not None,
        "sessions": sessions,
        "created_at": user.created_at.isoformat(),
    }


def _field(body: Json, name: str, *, required: bool = True, limit: int = 256) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise InvalidRequest(f"'{name}' must be a non-empty string of at most {limit} characters.", param=name)
    return value


def _password(body: Json) -> str:
    text = _field(body, "password", limit=passwords.MAX_LENGTH)
    assert text is not None
    try:
        return passwords.check_new(text)
    except passwords.PasswordProblem as exc:
        raise InvalidRequest(f"'password': {exc}.", param="password") from None


def _which(message: str) -> str:
    """The field a UserError is about, for the error's ``param``."""
    if "e-mail" in message:
        return "email"
    return "display_name" if "display" in message else "name"


class Accounts:
    """The handlers; ``changed`` is awaited after every change (the gateway re-reads who may do what)."""

    def __init__(self, store: UserStore, domain: str, changed: Callable[[], Awaitable[None]]) -> None:
        self.store, self.domain, self._changed = store, domain, changed
        # one change at a time here: the last-admin check and its write cannot interleave with another's
        # (gateways sharing a database each have their own: a race between two of them is not covered)
        self._lock = asyncio.Lock()

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def _user(self, body: Json) -> User:
        """The user ``body["user"]`` names: by name first, else by e-mail (a name may look like one)."""
        wanted = (_field(body, "user") or "").strip().lower()
        found: list[tuple[User, int]] = await self._run(self.store.list_users)
        user = next((u for u, _ in found if u.name == wanted), None)
        user = user or next((u for u, _ in found if u.email.lower() == wanted), None)
        if user is None:
            raise NotFound(f"No user '{body['user']}'.", param="user")
        return user

    async def _keep_an_admin(self, user: User, *, disabled: bool, role: str) -> None:
        """Refuse a change that leaves no enabled admin."""
        if not user.is_admin or user.disabled or (not disabled and role == "admin"):
            return
        found: list[tuple[User, int]] = await self._run(self.store.list_users)
        others = [u for u, _ in found if u.is_admin and not u.disabled and u.id != user.id]
        if not others:
            raise InvalidRequest(
                f"{user.name} is the only enabled admin: make another admin first, or nobody can manage ARK.",
                param="user",
            )

    async def _done(self, user: User, what: str) -> Json:
        await self._changed()
        log.info("users: %s %s", user.name, what)
        found: list[tuple[User, int]] = await self._run(self.store.list_users)
        shown = next((account(u, n) for u, n in found if u.id == user.id), None)
        if shown is None:
            raise NotFound(f"No user '{user.name}' any more.", param="user")
        return shown

    async def list(self, query: dict[str, str]) -> list[Json]:
        return [account(u, n) for u, n in await self._run(self.store.list_users)]

    async def new(self, body: Json) -> Json:
        unknown = sorted(set(body) - {"name", "password", "email", "display_name", "role"})
        if unknown:
            raise InvalidRequest(f"Unknown field '{unknown[0]}'.", param=unknown[0])
        name = _field(body, "name", limit=64)
        assert name is not None
        role = body.get("role", "user")
        if role not in ROLES:
            raise InvalidRequest(f"'role' must be one of {', '.join(ROLES)}.", param="role")
        email = _field(body, "email", required=False) or default_email(name, self.domain)
        display = _field(body, "display_name", required=False) or name
        hashed = await self._run(passwords.hash_password, _password(body))
        try:
            user = await self._run(lambda: self.store.add(name, email, display, role, hashed))
        except UserError as exc:  # the name, e-mail or display name: the message says which
            raise InvalidRequest(f"{exc}.", param=_which(str(exc))) from None
        return await self._done(user, f"added ({role})")

    async def disable(self, body: Json) -> Json:
        user = await self._user(body)
        await self._keep_an_admin(user, disabled=True, role=user.role)
        return await self._done(await self._run(self.store.set_disabled, user.name, True), "disabled")

    async def enable(self, body: Json) -> Json:
        user = await self._user(body)
        return await self._done(await self._run(self.store.set_disabled, user.name, False), "enabled")

    async def role(self, body: Json) -> Json:
        user = await self._user(body)
        role = body.get("role")
        if role not in ROLES:
            raise InvalidRequest(f"'role' must be one of {', '.join(ROLES)}.", param="role")
        await self._keep_an_admin(user, disabled=user.disabled, role=role)
        return await self._done(await self._run(self.store.set_role, user.name, role), f"role {role}")

    async def password(self, body: Json) -> Json:
        user = await self._user(body)
        hashed = await self._run(passwords.hash_password, _password(body))
        return await self._done(await self._run(self.store.set_password, user.name, hashed), "password changed")

    async def totp_reset(self, body: Json) -> Json:
        user = await self._user(body)
        return await self._done(await self._run(self.store.remove_totp, user.name), "second factor removed")

    def routes(self) -> dict[tuple[str, str], Callable[[Request, Responder], Awaitable[None]]]:
        def post(fn: Callable[[Json], Awaitable[Json]]) -> Callable[[Request, Responder], Awaitable[None]]:
            async def handler(request: Request, responder: Responder) -> None:
                body = parse_body(request.body) if request.body else {}
                async with self._lock:
                    try:
                        answer = await fn(body)
                    except UserError as exc:  # a name, e-mail or role the store refuses, a user gone meanwhile
                        raise InvalidRequest(f"{exc}.", param="user") from None
                await responder.send(200, orjson.dumps(answer), JSON_HEADERS)

            return handler

        async def listed(request: Request, responder: Responder) -> None:
            await responder.send(200, orjson.dumps(await self.list({})), JSON_HEADERS)

        return {
            ("GET", "/user/accounts"): listed,
            ("POST", "/user/new"): post(self.new),
            ("POST", "/user/disable"): post(self.disable),
            ("POST", "/user/enable"): post(self.enable),
            ("POST", "/user/role"): post(self.role),
            ("POST", "/user/password"): post(self.password),
            ("POST", "/user/totp/reset"): post(self.totp_reset),
        }


class AccountsApi(Component):
    """`ark users` over the management API."""

    name = "accounts-api"

    async def start(self, rt: Runtime) -> None:
        assert rt.store is not None
        accounts = Accounts(UserStore(rt.store.engine), rt.settings.edge.domain, rt.front.reload_keys)
        for (method, path), handler in accounts.routes().items():
            rt.http.add(method, path, rt.front.admin(handler, "manage users"))
