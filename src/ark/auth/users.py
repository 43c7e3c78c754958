"""Console users and their sessions in ARK's database (tables ``users`` and ``user_sessions``).

Blocking (SQLAlchemy): async code calls it from a worker thread. A session row is looked up by the
SHA-256 of the cookie's token, joined with its user, on every check: disabling a user, changing a
password or signing out deletes rows, and the next check fails at once.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError

from ark.errors import AuthError
from ark.store.keys import aware
from ark.store.tables import user_sessions, users

ROLES = ("admin", "user")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
_EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f]{1,64}@[A-Za-z0-9.-]{1,190}$")


class UserError(AuthError):
    """A user that does not exist, or a name, e-mail or role that ARK refuses."""


@dataclass(frozen=True, slots=True)
class User:
    id: str
    name: str
    email: str
    display_name: str
    role: str
    password_hash: str
    totp_secret: str | None
    totp_last_step: int | None
    disabled: bool
    created_at: datetime
    updated_at: datetime

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True, slots=True)
class Session:
    """A live session and its user, as one check of a cookie returns them."""

    id: str
    user: User
    expires_at: datetime


def session_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_name(name: str) -> str:
    """The canonical (lower-case) user name, or :class:`UserError`."""
    canonical = name.strip().lower()
    if not _NAME.match(canonical):
        raise UserError(
            f"{name!r} is not a user name: 1-64 letters, digits and . _ @ -, starting with a letter or digit"
        )
    return canonical


def check_email(email: str) -> str:
    """The canonical (lower-case) address: Open WebUI keys its accounts by the lower-cased e-mail, and the
    gateway finds a person by it, so two users may not differ only in case."""
    email = email.strip()
    if len(email) > 254 or not _EMAIL.match(email):
        raise UserError(f"{email!r} is not an e-mail address")
    return email.lower()


def check_display_name(text: str) -> str:
    text = " ".join(text.split())
    if not text or len(text) > 128 or not text.isprintable():
        raise UserError(f"{text!r} is not a display name: 1-128 printable characters")
    return text


def check_role(role: str) -> str:
    if role not in ROLES:
        raise UserError(f"{role!r} is not a role: expected {' or '.join(ROLES)}")
    return role


def default_email(name: str, domain: str) -> str:
    """A new user's e-mail when none is given: NAME@DOMAIN (NAME itself when it is one)."""
    return name if "@" in name else f"{name.lower()}@{domain or 'localhost'}"


def _now() -> datetime:
    return datetime.now(UTC)


def _user(row: RowMapping, prefix: str = "") -> User:
    values: dict[str, Any] = {name: row[prefix + name] for name in User.__dataclass_fields__}
    values["created_at"] = aware(values["created_at"])
    values["updated_at"] = aware(values["updated_at"])
    values["disabled"] = bool(values["disabled"])
    return User(**values)


class UserStore:
    """Users and sessions. Every method is one short transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- users ------------------------------------------------------------------------------------
    def add(self, name: str, email: str, display_name: str, role: str, password_hash: str) -> User:
        stamp, name, email = _now(), check_name(name), check_email(email)
        row = {
            "id": secrets.token_hex(16),
            "name": name,
            "email": email,
            "display_name": check_display_name(display_name),
            "role": check_role(role),
            "password_hash": password_hash,
            "disabled": False,
            "created_at": stamp,
            "updated_at": stamp,
        }
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(users).values(**row))
        except IntegrityError:
            raise UserError(f"a user named {name!r} or with the e-mail {email!r} exists already") from None
        return self.require(name)

    def get(self, name: str) -> User | None:
        try:
            canonical = check_name(name)
        except UserError:
            return None
        with self.engine.connect() as connection:
            row = connection.execute(select(users).where(users.c.name == canonical)).mappings().first()
        return _user(row) if row is not None else None

    def require(self, name: str) -> User:
        user = self.get(name)
        if user is None:
            raise UserError(f"no user named {name!r} (see `ark users list`)")
        return user

    def list_users(self) -> list[tuple[User, int]]:
        """Every user with the number of live sessions."""
        live = (
            select(user_sessions.c.user_id, func.count().label("sessions"))
            .where(user_sessions.c.expires_at > _now())
            .group_by(user_sessions.c.user_id)
            .subquery()
        )
        query = (
            select(users, func.coalesce(live.c.sessions, 0).label("live_sessions"))
            .select_from(users.outerjoin(live, live.c.user_id == users.c.id))
            .order_by(users.c.name)
        )
        with self.engine.connect() as connection:
            return [(_user(row), int(row["live_sessions"])) for row in connection.execute(query).mappings()]

    def _update(self, name: str, *, revoke: bool, **values: Any) -> User:
        """Change a user; with ``revoke``, end every session of theirs in the same transaction."""
        user = self.require(name)
        with self.engine.begin() as connection:
            connection.execute(update(users).where(users.c.id == user.id).values(**values, updated_at=_now()))
            if revoke:
                connection.execute(delete(user_sessions).where(user_sessions.c.user_id == user.id))
        return self.require(name)

    def set_password(self, name: str, password_hash: str) -> User:
        return self._update(name, revoke=True, password_hash=password_hash)

    def set_disabled(self, name: str, disabled: bool) -> User:
        return self._update(name, revoke=disabled, disabled=disabled)

    def set_role(self, name: str, role: str) -> User:
        return self._update(name, revoke=False, role=check_role(role))

    def set_totp(self, name: str, secret: str, proven_step: int) -> User:
        """Switch to a new TOTP secret, once a code of it was entered for ``proven_step``.

        The secret and the step go in together (one UPDATE): the code that proved the secret is then a
        used code, so it cannot sign anyone in afterwards (someone watching the enrolment, say).
        """
        return self._update(name, revoke=False, totp_secret=secret, totp_last_step=proven_step)

    def remove_totp(self, name: str) -> User:
        return self._update(name, revoke=False, totp_secret=None, totp_last_step=None)

    def rehash(self, user_id: str, old_hash: str, new_hash: str) -> None:
        """Replace a hash made with older parameters, unless it changed meanwhile."""
        with self.engine.begin() as connection:
            connection.execute(
                update(users)
                .where(users.c.id == user_id, users.c.password_hash == old_hash)
                .values(password_hash=new_hash, updated_at=_now())
            )

    def use_totp_step(self, user_id: str, step: int) -> bool:
        """Record ``step`` as used; False when it (or a later one) was used already (a replayed code).

        One conditional UPDATE: two sign-ins racing with the same code cannot both win.
        """
        last = users.c.totp_last_step
        with self.engine.begin() as connection:
            result = connection.execute(
                update(users).where(users.c.id == user_id, (last.is_(None)) | (last < step)).values(totp_last_step=step)
            )
        return bool(result.rowcount)

    # -- sessions ---------------------------------------------------------------------------------
    def open_session(self, user_id: str, token: str, lifetime: timedelta, client: str, user_agent: str) -> datetime:
        stamp = _now()
        expires = stamp + lifetime
        with self.engine.begin() as connection:
            connection.execute(
                insert(user_sessions).values(
                    id=session_id(token),
                    user_id=user_id,
                    created_at=stamp,
                    expires_at=expires,
                    client=client[:64],
                    user_agent=user_agent[:256],
                )
            )
        return expires

    def session(self, token: str) -> Session | None:
        """The live session of ``token`` and its user; None if unknown, expired, or the user is disabled."""
        return self.session_by_id(session_id(token))

    def is_live(self, sid: str) -> bool:
        """Whether session ``sid`` (an id, not a token) is live: what an identity token is checked against."""
        return self.session_by_id(sid) is not None

    def session_by_id(self, sid: str) -> Session | None:
        """:meth:`session` by the row's id (the SHA-256 of the token), as identity tokens carry it."""
        query = (
            select(user_sessions.c.id.label("session_id"), user_sessions.c.expires_at.label("session_expires"), users)
            .select_from(user_sessions.join(users, users.c.id == user_sessions.c.user_id))
            .where(user_sessions.c.id == sid)
        )
        with self.engine.connect() as connection:
            row = connection.execute(query).mappings().first()
        if row is None:
            return None
        expires = aware(row["session_expires"])
        assert expires is not None
        user = _user(row)
        if user.disabled or expires <= _now():
            return None
        return Session(row["session_id"], user, expires)

    def close_session(self, token: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(delete(user_sessions).where(user_sessions.c.id == session_id(token)))

    def prune_sessions(self) -> int:
        """Delete expired sessions; returns how many."""
        with self.engine.begin() as connection:
            result = connection.execute(delete(user_sessions).where(user_sessions.c.expires_at <= _now()))
        return int(result.rowcount or 0)
