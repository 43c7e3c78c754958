"""Scale-out: several gateways on one database enforce one budget and one rate limit together.

Each process admits requests from its allotment, its share of each budget and
limit (ark/store/allotments.py), with no database work on the request path while
the allotment lasts. When an allotment is short, the request asks the database
for what it needs plus some headroom (never more than half of what is left, so
the other processes keep a share), one request per key at a time. A background task gives back what has gone
unused (slots at once: every tick), charges used tokens to the shared tpm bucket, beats the heart and
reclaims the allotments of processes that died: a dead process's journal on this
host is replayed first (its spend reaches the database, then its allotments go);
a process on another host is given up after ``STALE_S`` without a heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Engine

from ark.clock import SYSTEM, Clock
from ark.errors import InsufficientQuota
from ark.gateway import budgets as budgeting
from ark.gateway import ratelimits as limiting
from ark.gateway.budgets import Budgets, Price, Reservation
from ark.gateway.ratelimits import Admission, RateLimits, RateState
from ark.store import Key
from ark.store.allotments import Refusal, Want, beat, drop_holders, grant, register, release, stale_holders, take_rate
from ark.store.ledger import Ledger

log = logging.getLogger("ark.allotments")

T = TypeVar("T")

TICK_S = 0.2
IDLE_S = 1.0  # credits, tokens and request-tokens unused this long go back to the database
HEARTBEAT_S = 1.0
STALE_S = 15.0  # a process silent this long is dead; its allotments go back
REAP_S = 5.0
HEADROOM = 4  # an allotment grows by what this many more requests like the current one need
_ATTEMPTS = 4


class Allotments:
    """This process's allotments; the event loop owns the local side, the database the shared one."""

    def __init__(
        self, engine: Engine, ledger: Ledger, budgets: Budgets, rates: RateLimits, clock: Clock = SYSTEM
    ) -> None:
        self.engine, self.ledger, self.budgets, self.rates = engine, ledger, budgets, rates
        self.clock = clock
        self.holder = ledger.holder
        self._locks: dict[str, asyncio.Lock] = {}
        self._beat_at = self._reap_at = 0.0

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(fn, self.engine, *args, **kwargs)

    async def start(self) -> None:
        await self._db(register, self.holder, socket.gethostname(), os.getpid(), time.time())

    async def close(self) -> None:
        """After the ledger's last flush: nothing of ours is pending, every allotment goes back."""
        await self._db(drop_holders, [self.holder])

    # -- the request path -------------------------------------------------------------------------
    async def reserve(
        self,
        key: Key | None,
        price: Price,
        prompt: int,
        completion: int | None,
        seconds: float,
        now: datetime,
        person: str | None = None,
    ) -> Reservation | None:
        for _ in range(_ATTEMPTS):
            result = self.budgets.reserve(key, price, prompt, completion, seconds, now, person)
            if not isinstance(result, budgeting.Shortfall):
                return result
            async with self._locked(f"budget:{ident}" for ident, *_ in result.needs):
                result = self.budgets.reserve(key, price, prompt, completion, seconds, now, person)  # grown meanwhile?
                if not isinstance(result, budgeting.Shortfall):
                    return result
                await self._grow_budgets(result)
        raise InsufficientQuota("Budgets are in heavy use by other gateways; retry shortly.", retry_after=1.0)

    async def _grow_budgets(self, short: budgeting.Shortfall) -> None:
        wants = [
            Want(
                ident,
                cost=credits,
                cost_extra=HEADROOM * short.cost if credits else 0.0,
                tokens=tokens,
                tokens_extra=HEADROOM * short.tokens if tokens else 0,
            )
            for ident, _, credits, tokens in short.needs
        ]
        result = await self._db(grant, self.holder, wants, time.time())
        if isinstance(result, Refusal):
            account = next(a for i, a, _, _ in short.needs if i == result.subject)
            account.refused = (account.reset_at,)
            unit = "credits" if result.limit == "budget" else "tokens"
            whose = account.whose
            raise InsufficientQuota(
                f"The {account.name} has used {result.used:.6g} of {whose} budget of {result.maximum:.6g} {unit} "
                f"(every gateway together); this request could cost up to {short.cost:.6g} credits and "
                f"{short.tokens} tokens."
            )
        grown = time.monotonic()
        for ident, account, _, _ in short.needs:
            account.allotted_cost += result[ident].cost
            account.allotted_tokens += result[ident].tokens
            account.grown_at = grown

    async def admit(self, key: Key | None, person: str | None = None) -> Admission | None:
        for _ in range(_ATTEMPTS):
            result = self.rates.admit(key, self.clock.monotonic(), person)
            if not isinstance(result, limiting.Shortfall):
                return result
            async with self._locked(f"rate:{subject}" for subject, *_ in result.needs):
                result = self.rates.admit(key, self.clock.monotonic(), person)
                if not isinstance(result, limiting.Shortfall):
                    return result
                for subject, state, requests, refresh, slots in result.needs:
                    if requests or refresh:
                        await self._take(subject, state, requests)
                    if slots:
                        await self._grant_slot(subject, state)
        raise limiting.RateLimited("Rate limits are in heavy use by other gateways; retry shortly.", retry_after=1.0)

    async def _take(self, subject: str, state: RateState, requests: int) -> None:
        await self._sync_rate(subject, state, take=requests, extra=HEADROOM if requests else 0)
        if requests and state.rpm is not None and state.rpm.level < 1:
            self.rates.refuse(state, "rpm", (1 - state.shared_requests) / state.rpm.rate)
        if state.tpm is not None and state.tpm.level <= 0:
            self.rates.refuse(state, "tpm", state.tpm.wait_for(1))

    async def _grant_slot(self, subject: str, state: RateState) -> None:
        result = await self._db(grant, self.holder, [Want(subject, slots=1)], time.time())
        if isinstance(result, Refusal):
            self.rates.refuse(state, "parallel", 1.0)
        else:
            state.slots += 1

    async def _sync_rate(self, subject: str, state: RateState, *, take: int = 0, extra: int = 0, give: int = 0) -> None:
        """Charge the tokens used here, give back or take request-tokens; learn the shared levels."""
        charge, state.uncharged = state.uncharged, 0
        if state.rpm is not None:
            state.rpm.level -= give
        try:
            levels = await self._db(
                take_rate,
                self.holder,
                subject,
                int(state.rpm.capacity) if state.rpm else None,
                int(state.tpm.capacity) if state.tpm else None,
                take=take,
                extra=extra,
                give_back=give,
                charge=charge,
                now=time.time(),
            )
        except Exception:
            state.uncharged += charge  # the database has not seen them: charge them next time
            if state.rpm is not None:
                state.rpm.level += give
            raise
        state.shared_requests = levels.requests
        if state.rpm is not None:
            state.rpm.level += levels.taken
        if state.tpm is not None:
            state.tpm.level = levels.tokens - state.uncharged  # what finished meanwhile is not charged yet

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    @contextlib.asynccontextmanager
    async def _locked(self, names: Iterable[str]) -> AsyncIterator[None]:
        """The locks of every account a request grows (a key, its team, a person shared by several keys),
        taken in one order so that two requests never wait on each other's."""
        async with contextlib.AsyncExitStack() as stack:
            for name in sorted(set(names)):
                await stack.enter_async_context(self._lock(name))
            yield

    # -- in the background (every TICK_S) ----------------------------------------------------------
    async def tick(self) -> None:
        now = time.monotonic()
        await self._give_back(now)
        for subject, state in list(self.rates.states.items()):
            idle = now - state.used_at > IDLE_S
            give = math.floor(state.rpm.level) if state.rpm is not None and idle else 0
            if state.uncharged or give > 0:
                await self._sync_rate(subject, state, give=give)
        if now - self._beat_at > HEARTBEAT_S:
            self._beat_at = now
            if not await self._db(beat, self.holder, time.time()):
                await self._reclaimed()
        if now - self._reap_at > REAP_S:
            self._reap_at = now
            await self.reap()

    async def _give_back(self, now: float) -> None:
        amounts: dict[str, tuple[float, int, int]] = {}
        for ident, account in self.budgets.accounts.items():
            if now - account.grown_at > IDLE_S:
                credits, tokens = account.unused()
                if credits > 0 or tokens > 0:
                    account.allotted_cost -= credits  # ours no more from now: nothing here may use it
                    account.allotted_tokens -= tokens
                    amounts[ident] = (credits, tokens, 0)
        for subject, state in self.rates.states.items():
            free = state.slots - state.parallel  # a slot is worth more to a process that waits for it
            if free > 0:
                state.slots -= free
                credits, tokens, _ = amounts.get(subject, (0.0, 0, 0))
                amounts[subject] = (credits, tokens, free)
        if not amounts:
            return
        try:
            await self._db(release, self.holder, amounts, time.time())
        except Exception:
            for subject, (credits, tokens, slots) in amounts.items():  # still ours in the database
                if subject in self.budgets.accounts:
                    self.budgets.accounts[subject].allotted_cost += credits
                    self.budgets.accounts[subject].allotted_tokens += tokens
                if subject in self.rates.states:
                    self.rates.states[subject].slots += slots
            raise

    async def _reclaimed(self) -> None:
        """Another process took us for dead (no heartbeat for STALE_S) and dropped our allotments."""
        log.error(
            "allotments: this gateway missed its heartbeat for %.0f s and lost its allotments; taking new ones", STALE_S
        )
        for account in self.budgets.accounts.values():
            account.allotted_cost = account.allotted_tokens = 0
        for state in self.rates.states.values():
            state.slots = 0
        await self.start()

    async def reap(self) -> list[str]:
        """Settle and drop the allotments of dead processes; returns the holders dropped for silence."""
        await asyncio.to_thread(self.ledger.replay_orphans)  # dead ones on this host: their journals first
        stale = await self._db(stale_holders, time.time() - STALE_S)
        dead = [h for h in stale if h != self.holder and not self.ledger.owns_journal(h)]
        if dead:
            log.warning("allotments: dropping the allotments of %d silent gateway(s): %s", len(dead), ", ".join(dead))
            await self._db(drop_holders, dead)
        return dead
