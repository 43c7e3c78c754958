"""Virtual keys and teams: records, and the store that reads and writes them.

A key is ``sk-ark-`` and 43 url-safe characters (256 random bits). Only its
SHA-256 is stored (its id) and an 11-character prefix for recognition: a slow
password hash buys nothing for a secret with 256 bits of entropy, and lookups
on every request must be cheap. The key itself is shown once, at creation.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from ark.store.tables import api_keys, teams, user_limits, users

_DURATION = re.compile(r"^0*([0-9]+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# The longest key lifetime or budget period. now() + it stays far inside datetime's year 9999 (past it,
# Python raises OverflowError), and its text fits the 16 characters of api_keys.budget_duration.
MAX_DURATION = timedelta(days=36_500)  # 100 years


def _seconds(text: str) -> int:
    match = _DURATION.match(text.strip())
    if not match or match.group(1) == "0":
        raise ValueError(f'"{text}" is not a duration such as "30m", "12h", "7d" or "4w"')
    digits = match.group(1)[:13]  # 13 digits are past any bound already; int() of thousands is refused
    return int(digits) * _UNITS[match.group(2)]


def parse_duration(text: str) -> timedelta:
    """LiteLLM's durations: "30s", "15m", "12h", "7d", "2w"; at most :data:`MAX_DURATION` (100 years)."""
    seconds = _seconds(text)
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f'"{text}" is longer than 100 years (at most "36500d")')
    return timedelta(seconds=seconds)


def next_reset(reset_at: datetime, period: timedelta, now: datetime) -> datetime:
    """The first period boundary after ``now``, counting from ``reset_at`` in whole periods (arithmetic: a
    one-second period left alone for a year is one step, not thirty million)."""
    if reset_at > now:
        return reset_at
    return reset_at + period * ((now - reset_at) // period + 1)


def budget_period(text: str) -> timedelta:
    """A stored ``budget_duration``. One written before durations were bounded reads as the bound, so that
    a row an older ARK accepted never fails a request."""
    return timedelta(seconds=min(_seconds(text), int(MAX_DURATION.total_seconds())))


def new_key() -> str:
    return "sk-ark-" + secrets.token_urlsafe(32)


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def now() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime | None) -> datetime | None:
    # SQLite hands datetimes back without a time zone; everything ARK stores is UTC.
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


@dataclass(frozen=True, slots=True)
class Limits:
    """What keys and teams share: allowed models, budgets, rate limits."""

    models: tuple[str, ...]
    max_budget: float | None
    budget_duration: str | None
    budget_reset_at: datetime | None
    max_tokens_budget: int | None
    spend: float
    tokens_used: int
    tpm_limit: int | None
    rpm_limit: int | None
    max_parallel_requests: int | None
    blocked: bool
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    def allows(self, model: str, served: str) -> bool:
        """Empty ``models`` allows every model; otherwise the name asked for or the model served must be listed."""
        return not self.models or model in self.models or served in self.models


@dataclass(frozen=True, slots=True)
class Team(Limits):
    id: str
    alias: str | None

    def public(self) -> dict[str, Any]:
        return {"team_id": self.id, "team_alias": self.alias, **_limits_public(self)}


@dataclass(frozen=True, slots=True)
class Key(Limits):
    id: str
    key_prefix: str
    key_alias: str | None
    user_id: str | None
    team_id: str | None
    expires_at: datetime | None
    trust_user_headers: bool = False  # an application's key: X-OpenWebUI-User-Email names whom to charge

    def expired(self, at: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= at

    def public(self) -> dict[str, Any]:
        """LiteLLM's names for what /key/info and /key/generate return (never the key itself)."""
        return {
            "token": self.id,
            "key_name": self.key_prefix + "…",
            "key_alias": self.key_alias,
            "user_id": self.user_id,
            "team_id": self.team_id,
            "expires": _iso(self.expires_at),
            "trust_user_headers": self.trust_user_headers,
            **_limits_public(self),
        }


@dataclass(frozen=True, slots=True)
class Person(Limits):
    """A user's budget and limits (table ``user_limits``), with who they are (``users``)."""

    id: str  # the user's id
    name: str
    email: str
    disabled: bool

    def public(self) -> dict[str, Any]:
        return {
            "user": self.name,
            "email": self.email,
            "user_id": self.id,  # what a key of theirs names as its user_id (ark.gateway.me)
            "disabled": self.disabled,
            **_limits_public(self),
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _limits_public(limits: Limits) -> dict[str, Any]:
    return {
        "models": list(limits.models),
        "max_budget": limits.max_budget,
        "budget_duration": limits.budget_duration,
        "budget_reset_at": _iso(limits.budget_reset_at),
        "max_tokens_budget": limits.max_tokens_budget,
        "spend": limits.spend,
        "tokens_used": limits.tokens_used,
        "tpm_limit": limits.tpm_limit,
        "rpm_limit": limits.rpm_limit,
        "max_parallel_requests": limits.max_parallel_requests,
        "blocked": limits.blocked,
        "metadata": limits.metadata,
        "created_at": _iso(limits.created_at),
        "updated_at": _iso(limits.updated_at),
    }


def _record(cls: type[Key] | type[Team] | type[Person], row: Any) -> Any:
    values = {f.name: row[f.name] for f in fields(cls)}
    values["models"] = tuple(values["models"] or ())
    values["metadata"] = dict(values["metadata"] or {})
    for name in ("budget_reset_at", "created_at", "updated_at", "expires_at"):
        if name in values:
            values[name] = aware(values[name])
    return cls(**values)


class KeyStore:
    """Reads and writes keys and teams. Blocking (SQLAlchemy): call it from a worker thread in async code."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- keys -------------------------------------------------------------------------------------
    def create_key(self, values: Mapping[str, Any]) -> tuple[str, Key]:
        secret = new_key()
        stamp = now()
        row = {**_defaults(stamp), **values, "id": key_id(secret), "key_prefix": secret[:11]}
        with self.engine.begin() as connection:
            connection.execute(insert(api_keys).values(**row))
        key = self.get_key(row["id"])
        assert key is not None
        return secret, key

    def rotate_key(self, ident: str) -> tuple[str, Key] | None:
        """A new secret for the key ``ident``, everything else kept (limits, team, block, spend); the old
        secret stops at once. None when there is no such key."""
        secret = new_key()
        with self.engine.begin() as connection:
            changed = connection.execute(
                update(api_keys)
                .where(api_keys.c.id == ident)
                .values(id=key_id(secret), key_prefix=secret[:11], updated_at=now())
            )
        if not changed.rowcount:
            return None
        key = self.get_key(key_id(secret))
        assert key is not None
        return secret, key

    def get_key(self, ident: str) -> Key | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(api_keys).where(api_keys.c.id == ident)).mappings().first()
        return _record(Key, row) if row is not None else None

    def update_key(self, ident: str, values: Mapping[str, Any]) -> Key | None:
        with self.engine.begin() as connection:
            result = connection.execute(
                update(api_keys).where(api_keys.c.id == ident).values(**values, updated_at=now())
            )
        return self.get_key(ident) if result.rowcount else None

    def delete_keys(self, idents: Iterable[str]) -> list[str]:
        deleted = []
        with self.engine.begin() as connection:
            for ident in idents:
                if connection.execute(delete(api_keys).where(api_keys.c.id == ident)).rowcount:
                    deleted.append(ident)
        return deleted

    def list_keys(self, *, team_id: str | None = None, user_id: str | None = None) -> list[Key]:
        query = select(api_keys).order_by(api_keys.c.created_at)
        if team_id is not None:
            query = query.where(api_keys.c.team_id == team_id)
        if user_id is not None:
            query = query.where(api_keys.c.user_id == user_id)
        with self.engine.connect() as connection:
            return [_record(Key, row) for row in connection.execute(query).mappings()]

    # -- teams ------------------------------------------------------------------------------------
    def create_team(self, values: Mapping[str, Any]) -> Team:
        stamp = now()
        row = {**_defaults(stamp), "id": "team-" + secrets.token_hex(8), **values}
        with self.engine.begin() as connection:
            connection.execute(insert(teams).values(**row))
        team = self.get_team(row["id"])
        assert team is not None
        return team

    def get_team(self, ident: str) -> Team | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(teams).where(teams.c.id == ident)).mappings().first()
        return _record(Team, row) if row is not None else None

    def update_team(self, ident: str, values: Mapping[str, Any]) -> Team | None:
        with self.engine.begin() as connection:
            result = connection.execute(update(teams).where(teams.c.id == ident).values(**values, updated_at=now()))
        return self.get_team(ident) if result.rowcount else None

    def reset_periods(self, rolled: Mapping[str, datetime]) -> None:
        """Start new budget periods: {"key:ID" | "team:ID" | "user:ID": when the next one starts}."""
        with self.engine.begin() as connection:
            for ident, reset_at in rolled.items():
                kind, _, row_id = ident.partition(":")
                table = LIMIT_TABLES[kind]
                connection.execute(
                    update(table)
                    .where(table.c.id == row_id)
                    .where((table.c.budget_reset_at.is_(None)) | (table.c.budget_reset_at < reset_at))
                    .values(spend=0.0, tokens_used=0, budget_reset_at=reset_at)
                )

    def list_teams(self) -> list[Team]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(teams).order_by(teams.c.created_at)).mappings()
            return [_record(Team, row) for row in rows]

    # -- people -----------------------------------------------------------------------------------
    def people(self) -> list[Person]:
        """Every user with their limits; one without a ``user_limits`` row has none set (its columns are NULL
        in the outer join): every limit empty, nothing spent."""
        limits = [c for c in user_limits.c if c.name != "id"]
        query = (
            select(users.c.id, users.c.name, users.c.email, users.c.disabled, user_limits.c.id.label("set"), *limits)
            .outerjoin(user_limits, user_limits.c.id == users.c.id)
            .order_by(users.c.name)
        )
        with self.engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
        stamp = now()
        return [_record(Person, {**row, **(_defaults(stamp) if row["set"] is None else {})}) for row in rows]

    def set_person_limits(self, user_id: str, values: Mapping[str, Any]) -> None:
        """Set some of a user's limits (made with none the first time; two at once: the second updates)."""
        stamp = now()
        change = update(user_limits).where(user_limits.c.id == user_id).values(**values, updated_at=stamp)
        with self.engine.begin() as connection:
            if connection.execute(change).rowcount:
                return
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(user_limits).values(**{**_defaults(stamp), **values, "id": user_id}))
        except IntegrityError:  # made a moment ago by another request
            with self.engine.begin() as connection:
                connection.execute(change)


# the table that holds each kind of account's limits and spend ("key:ID", "team:ID", "user:ID")
LIMIT_TABLES = {"key": api_keys, "team": teams, "user": user_limits}


def limit_accounts(
    keys: Iterable[Key], teams: Iterable[Team], people: Iterable[Person]
) -> list[tuple[str, str, str, Limits]]:
    """Every account budgets and rate limits keep: (id, name for messages, alias for metrics, limits)."""
    return [
        *((f"key:{k.id}", f"key {k.key_prefix}…", k.key_alias or k.key_prefix, k) for k in keys),
        *((f"team:{t.id}", f"team {t.alias or t.id}", t.alias or t.id, t) for t in teams),
        *((f"user:{p.id}", f"user {p.name}", p.name, p) for p in people),
    ]


def _defaults(stamp: datetime) -> dict[str, Any]:
    return {
        "models": [],
        "spend": 0.0,
        "tokens_used": 0,
        "blocked": False,
        "metadata": {},
        "created_at": stamp,
        "updated_at": stamp,
    }
