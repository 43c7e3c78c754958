"""The management API (master key only), compatible with LiteLLM proxy's key and team endpoints.

Request bodies use LiteLLM's field names (``key_alias``, ``models``, ``max_budget``,
``budget_duration``, ``tpm_limit``, ``rpm_limit``, ``max_parallel_requests``,
``duration``, ``metadata``, ``team_id``, ``user_id``) so that existing scripts keep
working; ARK's extensions (``max_tokens_budget``, ``blocked``) go in the same bodies.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import orjson

from ark.engines.base import Json
from ark.errors import InvalidRequest, NotFound
from ark.gateway.exchange import JSON_HEADERS
from ark.gateway.requests import parse_body
from ark.runtime import Component, Runtime
from ark.store import Key, Store, key_id, parse_duration
from ark.store.keys import Person, now
from ark.store.ledger import USAGE_GROUPS, daily_usage, person_usage, spend_logs, usage_summary
from ark.wire import Request, Responder

_HEX = frozenset("0123456789abcdef")
SPEND_LOGS_LIMIT, SPEND_LOGS_MAX = 1000, 100_000  # /spend/logs rows by default, and at most (docs/keys.md)


def _optional(check: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    def wrapped(value: Any, name: str) -> Any:
        return None if value is None else check(value, name)

    return wrapped


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or len(value) > 256:
        raise InvalidRequest(f"'{name}' must be a string of at most 256 characters.", param=name)
    return value


def _models(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(m, str) and m for m in value) or len(value) > 1000:
        raise InvalidRequest(f"'{name}' must be an array of model names (empty: every model).", param=name)
    return value


def _money(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or value != value:
        raise InvalidRequest(f"'{name}' must be a number >= 0 (or null for no limit).", param=name)
    return float(value)


def _count(maximum: int) -> Callable[[Any, str], int]:
    """An integer from 0 to ``maximum``: the range of its column (beyond it the database refuses the row)."""

    def check(value: Any, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
            raise InvalidRequest(f"'{name}' must be an integer from 0 to {maximum} (or null for no limit).", param=name)
        return value

    return check


_INTEGER, _BIG_INTEGER = 2**31 - 1, 2**63 - 1  # INTEGER and BIGINT columns (PostgreSQL's ranges; SQLite's is BIGINT's)


def _duration(value: Any, name: str) -> str:
    """A LiteLLM duration of at most 100 years, stripped (it is stored in 16 characters)."""
    if not isinstance(value, str) or len(value.strip()) > 16:
        raise InvalidRequest(f'\'{name}\' must be a duration such as "30d" (at most "36500d").', param=name)
    try:
        parse_duration(value)
    except ValueError as exc:
        raise InvalidRequest(f"'{name}': {exc}.", param=name) from None
    return value.strip()


def _object(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict) or len(orjson.dumps(value)) > 16_384:
        raise InvalidRequest(f"'{name}' must be a JSON object of at most 16 KiB.", param=name)
    return value


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be true or false.", param=name)
    return value


# field -> check; what keys and teams share
_LIMITS: dict[str, Callable[[Any, str], Any]] = {
    "models": _models,
    "max_budget": _optional(_money),
    "budget_duration": _optional(_duration),
    "max_tokens_budget": _optional(_count(_BIG_INTEGER)),
    "tpm_limit": _optional(_count(_INTEGER)),
    "rpm_limit": _optional(_count(_INTEGER)),
    "max_parallel_requests": _optional(_count(_INTEGER)),
    "metadata": _object,
    "blocked": _flag,
}
KEY_FIELDS = {
    **_LIMITS,
    "key_alias": _optional(_text),
    "user_id": _optional(_text),
    "team_id": _optional(_text),
    "trust_user_headers": _flag,  # an application's key (Open WebUI's): its person header names whom to charge
}
_TEAM_FIELDS = {**_LIMITS, "team_alias": _optional(_text)}
_IGNORED = frozenset({"key", "keys", "team_id", "key_aliases", "duration", "send_invite_email", "tags"})


def checked(body: Json, checks: dict[str, Callable[[Any, str], Any]], *, extra: frozenset[str] = _IGNORED) -> Json:
    """The fields of ``body`` that ``checks`` knows, each checked (400 naming the first bad or unknown one)."""
    unknown = [name for name in body if name not in checks and name not in extra]
    if unknown:
        raise InvalidRequest(f"Unknown field '{unknown[0]}'.", param=unknown[0])
    values = {name: check(body[name], name) for name, check in checks.items() if name in body}
    if "budget_duration" in values:  # a new period starts now
        values["budget_reset_at"] = _reset_at(values["budget_duration"])
    return values


def _reset_at(duration: str | None) -> Any:
    return now() + parse_duration(duration) if duration else None


def expiry(body: Json) -> Json:
    """``expires_at`` from ``duration`` ("30d"; "permanent" or null: never), when the body has one."""
    duration = body.get("duration")
    if duration is None or duration == "permanent":
        return {"expires_at": None} if "duration" in body else {}
    return {"expires_at": now() + timedelta(seconds=parse_duration(_duration(duration, "duration")).total_seconds())}


def _date(query: dict[str, str], name: str) -> datetime | None:
    if not query.get(name):
        return None
    try:
        return datetime.strptime(query[name], "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be a date, YYYY-MM-DD.", param=name) from None


def _dates(query: dict[str, str]) -> tuple[datetime | None, datetime | None]:
    """``start_date`` and the day after ``end_date`` (inclusive, as in LiteLLM; 9999-12-31: no end)."""
    start, end = _date(query, "start_date"), _date(query, "end_date")
    if end is not None:
        end = None if end.date() == date.max else end + timedelta(days=1)
    return start, end


def _number(query: dict[str, str], name: str, default: int, maximum: int) -> int:
    """Every numeric query parameter: digits only (no sign, no exponent), else 400 naming it; a number
    over ``maximum`` is lowered to it, so that a client asking for "everything" gets the most there is."""
    text = query.get(name)
    if not text:
        return default
    if not (text.isascii() and text.isdigit()):
        raise InvalidRequest(f"'{name}' must be a whole number from 0 to {maximum}.", param=name)
    digits = text.lstrip("0") or "0"
    return maximum if len(digits) > len(str(maximum)) else min(int(digits), maximum)


def key_ident(value: Any) -> str:
    """A key named by its secret ("sk-...") or by its token (the SHA-256 that /key/generate returns)."""
    if not isinstance(value, str) or not value:
        raise InvalidRequest("'key' is required: the key (sk-...) or its token.", param="key")
    if len(value) == 64 and set(value) <= _HEX:
        return value
    return key_id(value)


def _cell(value: Any) -> Any:
    """A CSV cell: text that a spreadsheet would run as a formula (=, +, -, @ first) gets a leading "'"."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


class Admin:
    """The handlers; the gateway checks the master key before calling them."""

    def __init__(self, store: Store, on_change: Callable[[], Awaitable[None]]) -> None:
        self.store = store
        self._changed = on_change

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def _team_exists(self, values: Json) -> None:
        if values.get("team_id") and await self._run(self.store.keys.get_team, values["team_id"]) is None:
            raise NotFound(f"No team '{values['team_id']}'.", param="team_id")

    async def key_generate(self, body: Json) -> Json:
        values = {**checked(body, KEY_FIELDS), **expiry(body)}
        await self._team_exists(values)
        secret, key = await self._run(self.store.keys.create_key, values)
        await self._changed()
        return {"key": secret, **key.public()}

    async def key_update(self, body: Json) -> Json:
        ident = key_ident(body.get("key"))
        values = {**checked(body, KEY_FIELDS), **expiry(body)}
        await self._team_exists(values)
        key = await self._run(self.store.keys.update_key, ident, values)
        if key is None:
            raise NotFound("No such key.", param="key")
        await self._changed()
        return key.public()  # type: ignore[no-any-return]

    async def key_info(self, query: dict[str, str]) -> Json:
        key: Key | None = await self._run(self.store.keys.get_key, key_ident(query.get("key")))
        if key is None:
            raise NotFound("No such key.", param="key")
        return {"key": key.id, "info": key.public()}

    async def key_delete(self, body: Json) -> Json:
        names = body.get("keys")
        aliases = body.get("key_aliases")
        idents: list[str] = []
        if isinstance(names, list):
            idents += [key_ident(name) for name in names]
        if isinstance(aliases, list):
            everything: list[Key] = await self._run(self.store.keys.list_keys)
            idents += [k.id for k in everything if k.key_alias in aliases]
        if not idents:
            raise InvalidRequest("'keys' (or 'key_aliases') must list the keys to delete.", param="keys")
        deleted = await self._run(self.store.keys.delete_keys, idents)
        await self._changed()
        return {"deleted_keys": deleted}

    async def key_list(self, query: dict[str, str]) -> Json:
        keys: list[Key] = await self._run(
            lambda: self.store.keys.list_keys(team_id=query.get("team_id"), user_id=query.get("user_id"))
        )
        full = query.get("return_full_object", "").lower() == "true"
        return {
            "keys": [k.public() if full else k.id for k in keys],
            "total_count": len(keys),
            "current_page": 1,
            "total_pages": 1,
        }

    async def team_new(self, body: Json) -> Json:
        values = checked(body, _TEAM_FIELDS)
        values["alias"] = values.pop("team_alias", None)
        if body.get("team_id") is not None:
            values["id"] = _text(body["team_id"], "team_id")
            if await self._run(self.store.keys.get_team, values["id"]) is not None:
                raise InvalidRequest(f"Team '{values['id']}' already exists.", param="team_id")
        team = await self._run(self.store.keys.create_team, values)
        await self._changed()
        return team.public()  # type: ignore[no-any-return]

    async def team_update(self, body: Json) -> Json:
        ident = _text(body.get("team_id"), "team_id")
        values = checked(body, _TEAM_FIELDS)
        if "team_alias" in values:
            values["alias"] = values.pop("team_alias")
        team = await self._run(self.store.keys.update_team, ident, values)
        if team is None:
            raise NotFound(f"No team '{ident}'.", param="team_id")
        await self._changed()
        return team.public()  # type: ignore[no-any-return]

    async def team_info(self, query: dict[str, str]) -> Json:
        ident = _text(query.get("team_id"), "team_id")
        team = await self._run(self.store.keys.get_team, ident)
        if team is None:
            raise NotFound(f"No team '{ident}'.", param="team_id")
        keys: list[Key] = await self._run(lambda: self.store.keys.list_keys(team_id=ident))
        return {"team_id": ident, "team_info": team.public(), "keys": [k.public() for k in keys]}

    async def team_list(self, query: dict[str, str]) -> list[Json]:
        return [t.public() for t in await self._run(self.store.keys.list_teams)]

    # -- people: their limits, as a key's ----------------------------------------------------------
    async def _person(self, value: Any, param: str) -> Person:
        """A user named by name or e-mail, with their limits (none set: all empty)."""
        wanted = _text(value, param).strip().lower()
        people: list[Person] = await self._run(self.store.keys.people)
        person = next((p for p in people if wanted in (p.email.lower(), p.name)), None)
        if person is None:
            raise NotFound(f"No user '{value}': add one with `ark users add`.", param=param)
        return person

    async def user_update(self, body: Json) -> Json:
        person = await self._person(body.get("user"), "user")
        values = checked(body, _LIMITS, extra=frozenset({"user"}))
        await self._run(self.store.keys.set_person_limits, person.id, values)
        await self._changed()
        return (await self._person(person.email, "user")).public()

    async def user_info(self, query: dict[str, str]) -> Json:
        return (await self._person(query.get("user"), "user")).public()

    async def user_list(self, query: dict[str, str]) -> list[Json]:
        return [p.public() for p in await self._run(self.store.keys.people)]

    async def spend_logs(self, query: dict[str, str]) -> list[Json]:
        key = key_ident(query["api_key"]) if query.get("api_key") else None
        person = query.get("user") or None
        start, end = _dates(query)
        limit = _number(query, "limit", SPEND_LOGS_LIMIT, SPEND_LOGS_MAX)
        rows: list[Json] = await self._run(
            lambda: spend_logs(self.store.engine, key_id=key, start=start, end=end, limit=limit, person=person)
        )
        return rows

    async def usage_people(self, query: dict[str, str]) -> list[Json]:
        start, end = _dates(query)
        rows: list[Json] = await self._run(lambda: person_usage(self.store.engine, start=start, end=end))
        return rows

    async def usage_daily(self, query: dict[str, str]) -> list[Json]:
        start, end = _dates(query)
        rows: list[Json] = await self._run(lambda: daily_usage(self.store.engine, start=start, end=end))
        return rows

    async def usage_summary(self, query: dict[str, str]) -> list[Json]:
        by = query.get("by") or "day"
        if by not in USAGE_GROUPS:
            raise InvalidRequest(f"'by' must be one of {', '.join(USAGE_GROUPS)}.", param="by")
        start, end = _dates(query)
        rows: list[Json] = await self._run(lambda: usage_summary(self.store.engine, by, start=start, end=end))
        return rows

    async def usage_summary_route(self, request: Request, responder: Responder) -> None:
        """``/usage/summary?by=day|key|team|model|person[&start_date&end_date][&format=csv]``."""
        query = {k: v[-1] for k, v in parse_qs(request.query).items()}
        rows = await self.usage_summary(query)
        if query.get("format") != "csv":
            await responder.send(200, orjson.dumps(rows), JSON_HEADERS)
            return
        by = query.get("by") or "day"
        columns = [by, *(["key_id"] if by == "key" else []), "requests", "prompt_tokens", "completion_tokens", "cost"]
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180
        writer.writerow(columns)
        writer.writerows([_cell(row[c]) for c in columns] for row in rows)
        headers = [
            ("content-type", "text/csv; charset=utf-8"),
            ("content-disposition", f'attachment; filename="ark-usage-by-{by}.csv"'),
            ("cache-control", "no-store"),
        ]
        await responder.send(200, out.getvalue().encode(), headers)

    # -- HTTP glue --------------------------------------------------------------------------------
    def routes(self) -> dict[tuple[str, str], Callable[[Request, Responder], Any]]:
        def post(fn: Callable[[Json], Any]) -> Callable[[Request, Responder], Any]:
            async def handler(request: Request, responder: Responder) -> None:
                body = parse_body(request.body) if request.body else {}
                await responder.send(200, orjson.dumps(await fn(body)), JSON_HEADERS)

            return handler

        def get(fn: Callable[[dict[str, str]], Any]) -> Callable[[Request, Responder], Any]:
            async def handler(request: Request, responder: Responder) -> None:
                query = {k: v[-1] for k, v in parse_qs(request.query).items()}
                await responder.send(200, orjson.dumps(await fn(query)), JSON_HEADERS)

            return handler

        return {
            ("POST", "/key/generate"): post(self.key_generate),
            ("POST", "/key/update"): post(self.key_update),
            ("POST", "/key/delete"): post(self.key_delete),
            ("GET", "/key/info"): get(self.key_info),
            ("GET", "/key/list"): get(self.key_list),
            ("POST", "/team/new"): post(self.team_new),
            ("POST", "/team/update"): post(self.team_update),
            ("GET", "/team/info"): get(self.team_info),
            ("GET", "/team/list"): get(self.team_list),
            ("POST", "/user/update"): post(self.user_update),
            ("GET", "/user/info"): get(self.user_info),
            ("GET", "/user/list"): get(self.user_list),
            ("GET", "/spend/logs"): get(self.spend_logs),
            ("GET", "/usage/people"): get(self.usage_people),
            ("GET", "/usage/daily"): get(self.usage_daily),
            ("GET", "/usage/summary"): self.usage_summary_route,
        }


class AdminApi(Component):
    """The management API as a component: LiteLLM's key, team and spend routes, master key only."""

    name = "admin-api"

    async def start(self, rt: Runtime) -> None:
        assert rt.store is not None
        for (method, path), handler in Admin(rt.store, rt.front.reload_keys).routes().items():
            rt.http.add(method, path, rt.front.admin(handler))
