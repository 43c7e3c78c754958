"""The request wrapper every component that serves the API uses: who is asking, may they, and the record.

``front.api(handler)`` wraps an API handler: the key (or the master key) from ``Authorization``, rate
limits and the in-flight cap (admission), then the handler with an :class:`Exchange` it fills in
(model, tokens, budget reservation, GPU lease), the one error handler (OpenAI's error shape), and when
the response ends the record: the budget settled, the lease released, metrics, the access log and the
ledger. ``front.admin(handler)``: the master key only. ``front.resolve`` routes a model for a key and
reserves what the request can cost on its budgets. Keys and teams live in memory (auth is a dict
lookup), reloaded from the store every few seconds and on a miss.

A request is made for a person when a UI says whom it calls for: a valid ``X-Ark-Identity`` (the
console), or ``X-OpenWebUI-User-Email`` with a key flagged ``trust_user_headers`` (Open WebUI's service
key; from any other key the header is ignored and counted), or a key of theirs: one whose ``user_id`` is
their user id or e-mail (the keys people make on the console's My keys page). The person is charged and
limited like a key (their ``user_limits``); one ARK does not know, or has disabled or blocked, is refused.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ark.engines.base import Json
from ark.errors import AdminOnly, ApiError, AuthenticationError, PermissionDenied, QueueFull
from ark.gateway.budgets import FREE, Price, prices
from ark.gateway.exchange import ErrorShape, Exchange, request_id, send_error
from ark.gateway.ratelimits import RateLimits
from ark.gateway.ratelimits import headers as rate_headers
from ark.gateway.requests import model_name
from ark.gateway.router import Route
from ark.store import Key, Team, key_id
from ark.store.keys import Person
from ark.wire import Request, Responder

if TYPE_CHECKING:
    from ark.runtime import Runtime

log = logging.getLogger("ark.gateway")
_KEY_LOOKUPS_PER_S = 10.0  # unknown keys looked up in the database (a key made on another gateway)
_BYTES_PER_TOKEN = 4  # English text in BPE vocabularies, for a prompt no engine counted
PERSON_HEADER = "x-openwebui-user-email"  # Open WebUI's ENABLE_FORWARD_USER_INFO_HEADERS
ApiHandler = Callable[[Request, Responder, Exchange], Awaitable[None]]
Handler = Callable[[Request, Responder], Awaitable[None]]


class UnknownKey(AuthenticationError):
    """Not among the keys in memory; perhaps made a moment ago on another gateway."""

    def __init__(self, ident: str) -> None:
        super().__init__("Incorrect API key provided.")
        self.ident = ident


class Front:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        settings = rt.settings
        self.keys: dict[str, Key] = {}  # key id (sha256) -> key, reloaded from the store
        self.teams: dict[str, Team] = {}
        self.people: dict[str, Person] = {}  # user id -> the user and their limits
        self.emails: dict[str, Person] = {}  # the same by e-mail (lower case): whom a trusted header may name
        self._lookups, self._lookups_at = _KEY_LOOKUPS_PER_S, 0.0  # a bucket of database lookups of unknown keys
        self.prices = prices(settings.models)
        # told the keys after each reload (every few seconds, and at once after the admin API changed one)
        self.key_watchers: list[Callable[[dict[str, Key]], None]] = []
        self._master = settings.master_key.value.encode()
        self._max_inflight = settings.gateway.max_inflight
        self.log_prompts = settings.gateway.log_prompts

    # -- keys -------------------------------------------------------------------------------------
    async def reload_keys(self) -> None:
        """Read every key and team (a few thousand rows at most) into memory: auth is a dict lookup."""
        rt = self.rt
        assert rt.store is not None
        store = rt.store.keys
        rt.budgets.roll_all(rt.clock.now())
        if rt.budgets.rolled:
            rolled, rt.budgets.rolled = rt.budgets.rolled, {}
            await asyncio.to_thread(store.reset_periods, rolled)
        keys, teams, people = await asyncio.to_thread(lambda: (store.list_keys(), store.list_teams(), store.people()))
        self.keys = {k.id: k for k in keys}
        self.teams = {t.id: t for t in teams}
        self._know(people)
        rt.budgets.sync(keys, teams, people)
        rt.rates.sync(keys, teams, rt.clock.monotonic(), people)
        for watcher in self.key_watchers:
            watcher(self.keys)

    def _know(self, people: list[Person]) -> None:
        self.people = {p.id: p for p in people}
        self.emails = {p.email.lower(): p for p in people}

    def authenticate(self, request: Request) -> Key | None:
        """The caller's virtual key, or None for the master key; 401 for anything else."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError("Missing API key. Send it as 'Authorization: Bearer <key>'.")
        # compare_digest takes time independent of where the strings differ
        if self._master and hmac.compare_digest(token.encode(), self._master):
            return None
        ident = key_id(token)
        key = self.keys.get(ident)  # a dict lookup by SHA-256: no timing signal about the key
        if key is None:
            raise UnknownKey(ident)
        if key.blocked:
            raise AuthenticationError(f"The key {key.key_prefix}… is blocked.")
        if key.expires_at is not None and key.expired(self.rt.clock.now()):
            raise AuthenticationError(f"The key {key.key_prefix}… expired at {key.expires_at:%Y-%m-%d %H:%M} UTC.")
        team = self.teams.get(key.team_id) if key.team_id else None
        if team is not None and team.blocked:
            raise AuthenticationError(f"The team of key {key.key_prefix}… is blocked.")
        return key

    def _may_look_up(self) -> bool:
        """A few database lookups a second at most, for what is not in memory yet (a key or a person)."""
        now = self.rt.clock.monotonic()
        self._lookups = min(_KEY_LOOKUPS_PER_S, self._lookups + (now - self._lookups_at) * _KEY_LOOKUPS_PER_S)
        self._lookups_at = now
        if self._lookups < 1:
            return False
        self._lookups -= 1
        return True

    async def authenticate_new(self, request: Request, miss: UnknownKey) -> Key | None:
        """Look an unknown key up in the database, a few times a second at most: if it is there, reload."""
        store = self.rt.store
        if store is None or not self._may_look_up():
            raise miss
        if await asyncio.to_thread(store.keys.get_key, miss.ident) is None:
            raise miss
        await self.reload_keys()
        return self.authenticate(request)

    def may_use(self, key: Key | None, requested: str, served: str, person: str | None = None) -> bool:
        if person is not None and person in self.people and not self.people[person].allows(requested, served):
            return False
        if key is None:
            return True
        team = self.teams.get(key.team_id) if key.team_id else None
        return key.allows(requested, served) and (team is None or team.allows(requested, served))

    def owner(self, key: Key | None) -> Person | None:
        """The person a key belongs to: its ``user_id`` names them (id or e-mail). An application's key
        (``trust_user_headers``) calls for others and belongs to nobody."""
        if key is None or not key.user_id or key.trust_user_headers:
            return None
        return self.people.get(key.user_id) or self.emails.get(key.user_id.lower())

    async def attribute(self, ex: Exchange, request: Request) -> None:
        """Whom the request is made for (see the module's docstring); refuses a person ARK has turned away."""
        owner = self.owner(ex.key)
        if owner is not None:  # a person's own key is theirs, whatever identity comes with it
            ex.person_id, ex.person = owner.id, owner.name
            if owner.disabled:  # (an identity's person is checked by its session: disabling ends them all)
                raise PermissionDenied(f"The user {ex.person} is disabled: ask an administrator of this ARK.")
        email = request.headers.get(PERSON_HEADER)
        if email is not None and owner is None:
            key = ex.key
            if key is None or not key.trust_user_headers:  # anyone can send the header: it grants nothing
                self.rt.metrics.count_untrusted_user_header(ex.key_label)
            elif email := email.strip()[:254]:
                known = self.emails.get(email.lower())
                store = self.rt.store
                if known is None and store is not None and self._may_look_up():  # added a moment ago?
                    self._know(await asyncio.to_thread(store.keys.people))
                    known = self.emails.get(email.lower())
                if known is None:  # every person is known, and limited: no one escapes a budget by a new name
                    raise PermissionDenied(
                        f"{email!r} is not a user of this ARK: an administrator adds people with `ark users add`."
                    )
                ex.person_id, ex.person = known.id, known.name
                if known.disabled:  # (a valid X-Ark-Identity is a live session, whose user is not disabled)
                    raise PermissionDenied(f"The user {ex.person} is disabled: ask an administrator of this ARK.")
        if ex.person_id is None:
            return
        person = self.people.get(ex.person_id)
        if person is not None and person.blocked:
            raise PermissionDenied(f"The user {ex.person} is blocked: ask an administrator of this ARK.")

    # -- wrappers ---------------------------------------------------------------------------------
    def admin(self, handler: Handler, what: str = "manage keys and teams") -> Handler:
        """Management routes: the master key only, errors in OpenAI's shape."""

        async def wrapped(request: Request, responder: Responder) -> None:
            try:
                if self.authenticate(request) is not None:
                    raise AdminOnly(f"Only the master key may {what}.")
                await handler(request, responder)
            except ApiError as exc:
                await send_error(responder, exc)

        return wrapped

    def api(self, handler: ApiHandler, errors: ErrorShape | None = None) -> Handler:
        """Wrap an API handler: auth, admission, the one error handler, metrics and the access log. Errors go
        out in OpenAI's shape, or in ``errors``' (the Ollama API's ``{"error": "..."}``)."""
        rt = self.rt
        metrics = rt.metrics

        async def wrapped(request: Request, responder: Responder) -> None:
            ex = Exchange(request.path, time.perf_counter(), request_id())
            responder.on_finish = lambda status: self.record(ex)
            responder.extra_head = b"x-request-id: %s\r\n" % ex.request_id.encode()
            metrics.inflight += 1
            try:
                try:
                    ex.key = self.authenticate(request)
                except UnknownKey as miss:
                    ex.key = await self.authenticate_new(request, miss)
                ex.authenticated = True
                token = request.headers.get("x-ark-identity")
                if token is not None and rt.identity is not None:  # attribution only: it grants nothing
                    identity = await rt.identity.verify(token)
                    if identity is not None:
                        ex.person, ex.person_id = identity.name, identity.user_id
                await self.attribute(ex, request)
                ex.admission = await rt.admission.admit(ex.key, ex.person_id)
                if ex.admission is not None:
                    responder.extra_head += rate_headers(ex.admission.states[0])
                if metrics.inflight > self._max_inflight:
                    raise QueueFull(
                        f"The gateway is serving {self._max_inflight} requests; retry shortly.", retry_after=1.0
                    )
                await handler(request, responder, ex)
            except ApiError as exc:
                ex.fail(exc)
                if not responder.started:
                    await send_error(responder, exc, errors)
            except (asyncio.CancelledError, ConnectionResetError):
                ex.status, ex.error = 499, "client_closed_request"  # nginx's code for it
                raise
            except Exception as exc:
                log.exception("unexpected error serving %s", request.path)
                ex.status, ex.error = 500, "internal_error"
                if responder.started:
                    raise
                await send_error(responder, ApiError(f"Internal error: {type(exc).__name__}"), errors)
            finally:
                metrics.inflight -= 1
                if responder.on_finish is not None:  # no response went out (the client left): record now
                    responder.on_finish = None
                    self.record(ex)

        return wrapped

    def record(self, ex: Exchange) -> None:
        rt = self.rt
        elapsed = time.perf_counter() - ex.started
        ex.cost = ex.price.cost(ex.prompt_tokens, ex.completion_tokens, elapsed)
        tokens = ex.prompt_tokens + ex.completion_tokens
        rt.budgets.settle(ex.reservation, ex.cost, tokens)
        if ex.lease is not None:
            ex.lease.release()
            if ex.status == 504 and rt.gpu is not None:  # the engine may hang: the arbiter checks it
                rt.gpu.arbiter.suspect(ex.model)
        RateLimits.finish(ex.admission, tokens, rt.clock.monotonic())
        if ex.cost:
            rt.metrics.add_spend(ex.key_label, ex.cost)
        rt.metrics.observe(ex.model, ex.status, elapsed, ex.ttft, ex.prompt_tokens, ex.completion_tokens)
        if rt.access_log is not None:
            rt.access_log.write(ex.record(elapsed, self.log_prompts))
        if rt.ledger is not None and ex.authenticated:
            rt.ledger.record(ex.usage_row(elapsed))
        if ex.person is not None:
            rt.metrics.observe_person(ex.person, ex.prompt_tokens, ex.completion_tokens, ex.cost)

    async def resolve(self, body: Json, ex: Exchange, prompt_bytes: int, max_completion: int | None) -> Route:
        """Route the model, check the key may use it, and reserve what the request can cost on its budgets."""
        rt = self.rt
        route = await rt.models.resolve(model_name(body))
        self.permit(ex, route.requested, route.model)
        ex.prompt_estimate = prompt_bytes // _BYTES_PER_TOKEN
        # prompt tokens <= prompt bytes for the byte-fallback tokenizers of LLMs: a safe upper bound
        price = self.prices.get(route.model, FREE)
        await self.reserve(ex, price, prompt_bytes, max_completion, route.engine.settings.total_timeout)
        return route

    def permit(self, ex: Exchange, requested: str, served: str) -> None:
        """The request is for ``served`` (asked as ``requested``): 403 unless its key and person may use it."""
        ex.model, ex.alias = served, requested if requested != served else None
        key = ex.key
        if key is not None and not self.may_use(key, requested, served):
            raise PermissionDenied(
                f"The key {key.key_prefix}… is not allowed to use the model '{requested}'.", param="model"
            )
        if ex.person_id is not None and not self.may_use(None, requested, served, ex.person_id):
            raise PermissionDenied(
                f"The user {ex.person} is not allowed to use the model '{requested}'.", param="model"
            )

    async def reserve(
        self, ex: Exchange, price: Price, prompt_tokens: int, max_completion: int | None, max_seconds: float
    ) -> None:
        """Reserve the most the request can cost on its key's, team's and person's budgets (429 when one is
        short); settled at its end (:meth:`record`) at ``ex.price``."""
        if ex.key is not None or ex.person_id is not None:  # the master key has no budget (a person it calls for has)
            now = self.rt.clock.now()
            ex.reservation = await self.rt.admission.reserve(
                ex.key, price, prompt_tokens, max_completion, max_seconds, now, ex.person_id
            )
        ex.price = price  # once reserved: a request refused here costs nothing, even at a fixed price
