"""A person's own keys and spend (the console's My keys page), within the limits the admin set in
``[console]``: how many keys (``keys_per_person``), which models (``key_models``), the largest budget
(``key_max_budget``).

    GET  /me                   who I am, my limits and spend, the last 30 days, the policy for my keys
    GET  /me/keys              my keys (their prefix only: the secret is shown once, when made)
    POST /me/key/generate      {"key_alias"?, "models"?, "max_budget"?, "budget_duration"?, "duration"?}
    POST /me/key/rotate        {"key"}: a new secret with the same limits and spend; the old one stops
    POST /me/key/delete        {"key"}
    GET  /me/usage?days=30     my keys' requests, tokens and spend per key and day

A person is the one signed in: these routes take the master key with an ``X-Ark-Identity`` of a live
session, which is what the console sends (ark.console.api); a person's own key cannot make more keys.
A key made here belongs to its person (``user_id``): what it spends is charged to their budget as well
as its own, and it stops working when they are disabled. An admin sees and manages these keys like any
other (``/key/...``, `ark keys`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs

import orjson

from ark.config.services import ConsoleSettings
from ark.engines.base import Json
from ark.errors import ApiError, AuthenticationError, InvalidRequest, NotFound, PermissionDenied
from ark.gateway.admin import KEY_FIELDS, checked, expiry, key_ident
from ark.gateway.exchange import JSON_HEADERS, send_error
from ark.gateway.requests import parse_body
from ark.runtime import Component, Runtime
from ark.store import Key
from ark.store.keys import Person, now, parse_duration
from ark.store.ledger import daily_usage, person_spend
from ark.wire import Request, Responder

_MADE_HERE = {name: KEY_FIELDS[name] for name in ("key_alias", "models", "max_budget", "budget_duration")}
MAX_DAYS = 366
MIN_CAPPED_PERIOD = timedelta(days=1)  # under [console] key_max_budget: no budget that renews every second


class LimitReached(PermissionDenied):
    code = "limit_reached"


class SelfService:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.policy: ConsoleSettings = rt.settings.console
        self._lock = asyncio.Lock()  # one key change at a time: the count cannot be raced past

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    @property
    def _keys(self) -> Any:
        assert self.rt.store is not None
        return self.rt.store.keys

    async def person(self, request: Request) -> Person:
        """The signed-in person this request is for; 401/403 otherwise."""
        front, identity = self.rt.front, self.rt.identity
        if front.authenticate(request) is not None:  # a virtual key: it may not make keys
            raise PermissionDenied("Your own keys are managed from ARK's console, signed in.")
        token = request.headers.get("x-ark-identity")
        found = await identity.verify(token) if token and identity is not None else None
        if found is None:
            raise AuthenticationError("No signed-in person: /me is served through ARK's console.")
        person = front.people.get(found.user_id)
        if person is None:  # added a moment ago
            await front.reload_keys()
            person = front.people.get(found.user_id)
        if person is None or person.disabled:
            raise PermissionDenied(f"The user {found.name} is disabled: ask an administrator of this ARK.")
        if person.blocked and request.method != "GET":
            raise PermissionDenied(f"The user {found.name} is blocked: ask an administrator of this ARK.")
        return person

    async def mine(self, person: Person) -> list[Key]:
        return await self._run(lambda: self._keys.list_keys(user_id=person.id))  # type: ignore[no-any-return]

    async def _own(self, person: Person, body: Json) -> Key:
        ident = key_ident(body.get("key"))
        key = next((k for k in await self.mine(person) if k.id == ident), None)
        if key is None:
            raise NotFound("You have no such key.", param="key")
        return key

    def _policy(self) -> Json:
        return {
            "keys_per_person": self.policy.keys_per_person,
            "key_models": list(self.policy.key_models),
            "key_max_budget": self.policy.key_max_budget,
        }

    async def me(self, person: Person, query: dict[str, str]) -> Json:
        keys = await self.mine(person)
        assert self.rt.store is not None
        engine, since = self.rt.store.engine, now() - timedelta(days=30)
        requests, cost = await self._run(person_spend, engine, person.id, since)
        recent = {"requests": requests, "cost": cost}  # everything made for them: their keys, the console, chat
        return {**person.public(), "keys": len(keys), "last_30_days": recent, "policy": self._policy()}

    async def keys(self, person: Person, query: dict[str, str]) -> Json:
        return {"keys": [k.public() for k in await self.mine(person)], "policy": self._policy()}

    def _limit_models(self, person: Person, asked: list[str]) -> list[str]:
        allowed = list(self.policy.key_models)
        if not asked:
            return allowed
        for model in asked:
            if allowed and model not in allowed:
                raise PermissionDenied(f"Your keys may name only these models: {', '.join(allowed)}.", param="models")
            if person.models and model not in person.models:
                raise PermissionDenied(f"You may not use the model '{model}'.", param="models")
        return asked

    def _limit_budget(self, budget: float | None, period: str | None) -> float | None:
        cap = self.policy.key_max_budget
        if cap is None:
            return budget
        if period is not None and parse_duration(period) < MIN_CAPPED_PERIOD:
            raise PermissionDenied(
                "Under a budget cap, a key's budget period is at least a day (or none: the budget is in all).",
                param="budget_duration",
            )
        if budget is None:
            return cap
        if budget > cap:
            raise PermissionDenied(f"A key's budget may be at most {cap:g}.", param="max_budget")
        return budget

    async def generate(self, person: Person, body: Json) -> Json:
        values = {**checked(body, _MADE_HERE, extra=frozenset({"duration"})), **expiry(body)}
        values["models"] = self._limit_models(person, values.get("models") or [])
        values["max_budget"] = self._limit_budget(values.get("max_budget"), values.get("budget_duration"))
        async with self._lock:
            held = len(await self.mine(person))
            if held >= self.policy.keys_per_person:
                raise LimitReached(
                    f"You hold {held} keys, the most allowed here ({self.policy.keys_per_person}): revoke one first."
                    if self.policy.keys_per_person
                    else "People do not make their own keys on this ARK: ask an administrator."
                )
            secret, key = await self._run(self._keys.create_key, {**values, "user_id": person.id})
            await self.rt.front.reload_keys()
        return {"key": secret, **key.public()}

    async def rotate(self, person: Person, body: Json) -> Json:
        """The same key (its limits, team, spend and history) with a new secret."""
        async with self._lock:
            old = await self._own(person, body)
            if old.blocked:
                raise PermissionDenied("This key is blocked: an administrator unblocks it.", param="key")
            rotated = await self._run(self._keys.rotate_key, old.id)
            if rotated is None:
                raise NotFound("You have no such key.", param="key")
            await self.rt.front.reload_keys()
        secret, key = rotated
        return {"key": secret, **key.public(), "replaces": old.id}

    async def delete(self, person: Person, body: Json) -> Json:
        async with self._lock:
            key = await self._own(person, body)
            deleted = await self._run(self._keys.delete_keys, [key.id])
            await self.rt.front.reload_keys()
        return {"deleted_keys": deleted}

    async def usage(self, person: Person, query: dict[str, str]) -> Json:
        text = query.get("days", "30")
        if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_DAYS:
            raise InvalidRequest(f"'days' must be a whole number from 1 to {MAX_DAYS}.", param="days")
        keys = await self.mine(person)
        today = now().replace(hour=0, minute=0, second=0, microsecond=0)
        start = today - timedelta(days=int(text) - 1)
        assert self.rt.store is not None
        engine = self.rt.store.engine
        rows = await self._run(lambda: daily_usage(engine, start=start, end=None, key_ids=[k.id for k in keys]))
        return {
            "start": start.date().isoformat(),
            "end": today.date().isoformat(),
            "keys": [{"token": k.id, "key_alias": k.key_alias, "key_name": k.key_prefix + "…"} for k in keys],
            "rows": rows,
        }

    def routes(self) -> dict[tuple[str, str], Callable[[Request, Responder], Awaitable[None]]]:
        def route(
            fn: Callable[[Person, Json], Awaitable[Json]], *, post: bool
        ) -> Callable[[Request, Responder], Awaitable[None]]:
            async def handler(request: Request, responder: Responder) -> None:
                try:
                    person = await self.person(request)
                    if post:
                        body = parse_body(request.body) if request.body else {}
                    else:
                        body = {k: v[-1] for k, v in parse_qs(request.query).items()}
                    answer = await fn(person, body)
                except ApiError as exc:
                    await send_error(responder, exc)
                    return
                await responder.send(200, orjson.dumps(answer), JSON_HEADERS)

            return handler

        return {
            ("GET", "/me"): route(self.me, post=False),
            ("GET", "/me/keys"): route(self.keys, post=False),
            ("GET", "/me/usage"): route(self.usage, post=False),
            ("POST", "/me/key/generate"): route(self.generate, post=True),
            ("POST", "/me/key/rotate"): route(self.rotate, post=True),
            ("POST", "/me/key/delete"): route(self.delete, post=True),
        }


class SelfServiceApi(Component):
    """A person's own keys and spend (``/me``)."""

    name = "self-service"

    async def start(self, rt: Runtime) -> None:
        for (method, path), handler in SelfService(rt).routes().items():
            rt.http.add(method, path, handler)
