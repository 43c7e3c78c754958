"""Credit and token budgets of keys, teams and people: reserve before the engine, settle after, never overspend.

A request first reserves the most it can cost (prompt bytes as an upper bound
on prompt tokens, ``max_tokens`` or the model's ``max_output_tokens``, and the
engine's total timeout when GPU time has a price) on its key and its team.
Admission and settlement run on the event loop, which owns this state, so two
requests can never both take the last of a budget. After the response the
reservation is replaced by the real cost. A request that costs nothing is never
refused for a spent credit budget (only a token budget stops it).

This process's accounts start from the database (spend since the period
began) and then move in memory. When several gateways share the database
(``shared``), an account admits only within this process's allotment
(ark/store/allotments.py): ``reserve`` answers with a :class:`Shortfall` when the
allotment is too small, the caller grows it from the database and asks again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ark.config import ModelSettings
from ark.errors import InsufficientQuota
from ark.store import Key, Team, budget_period
from ark.store.keys import Limits, Person, limit_accounts, next_reset


@dataclass(frozen=True, slots=True)
class Price:
    input: float = 0.0
    output: float = 0.0
    gpu_second: float = 0.0
    max_output_tokens: int = 4096
    fixed: float = 0.0  # a price for the request itself, whatever it takes (images: per image)

    def cost(self, prompt_tokens: int, completion_tokens: int, seconds: float) -> float:
        return self.fixed + prompt_tokens * self.input + completion_tokens * self.output + seconds * self.gpu_second


FREE = Price()


def prices(models: Iterable[ModelSettings]) -> dict[str, Price]:
    return {
        m.id: Price(m.input_cost_per_token, m.output_cost_per_token, m.cost_per_gpu_second, m.max_output_tokens)
        for m in models
    }


@dataclass(slots=True)
class Account:
    name: str  # "key sk-ark-ab12…" or "team research", for messages
    alias: str  # the key's alias or the team's, for metrics
    max_budget: float | None
    max_tokens: int | None
    spend: float
    tokens: int
    reset_at: datetime | None
    period: timedelta | None
    reserved_cost: float = 0.0
    reserved_tokens: int = 0
    # shared database only: the allotment (credits/tokens this process may use), what of it was spent and is
    # not yet in the database's `spend`, and when it last grew (monotonic seconds)
    allotted_cost: float = 0.0
    allotted_tokens: int = 0
    pending_cost: float = 0.0
    pending_tokens: int = 0
    grown_at: float = 0.0
    # a request was refused for this budget (the period it happened in, as (reset_at,)): it is as good as spent
    refused: tuple[datetime | None] | None = None

    def short(self, cost: float, tokens: int) -> tuple[float, int]:
        """What the allotment lacks for a request that may cost ``cost`` and use ``tokens`` (shared database)."""
        credits = 0.0
        if cost > 0 and self.max_budget is not None:
            credits = max(0.0, cost - (self.allotted_cost - self.reserved_cost - self.pending_cost))
        needed = 0
        if self.max_tokens is not None:
            needed = max(0, tokens - (self.allotted_tokens - self.reserved_tokens - self.pending_tokens))
        return credits, needed

    def unused(self) -> tuple[float, int]:
        """The part of the allotment that nothing uses."""
        return (
            max(0.0, self.allotted_cost - self.reserved_cost - self.pending_cost),
            max(0, self.allotted_tokens - self.reserved_tokens - self.pending_tokens),
        )

    @property
    def whose(self) -> str:
        return "their" if self.name.startswith("user ") else "its"  # a person's budget, a key's or team's

    def refusal(self, cost: float, tokens: int) -> str | None:
        whose = self.whose
        if cost > 0 and self.max_budget is not None and self.spend + self.reserved_cost + cost > self.max_budget:
            return f"The {self.name} has spent {self.spend:.6g} of {whose} budget of {self.max_budget:.6g} credits"
        if self.max_tokens is not None and self.tokens + self.reserved_tokens + tokens > self.max_tokens:
            return f"The {self.name} has used {self.tokens} of {whose} budget of {self.max_tokens} tokens"
        return None

    def roll(self, now: datetime) -> bool:
        """Start a new period when the old one has ended; True when it did."""
        if self.reset_at is None or self.period is None or now < self.reset_at:
            return False
        self.reset_at = next_reset(self.reset_at, self.period, now)
        self.spend, self.tokens = 0.0, 0
        return True


@dataclass(slots=True)
class Reservation:
    accounts: list[Account]
    cost: float
    tokens: int
    settled: bool = field(default=False)
    shared: bool = False


@dataclass(slots=True)
class Shortfall:
    """The allotments to grow before a request fits: [(account id, account, credits, tokens)]."""

    needs: list[tuple[str, Account, float, int]]
    cost: float  # the whole request's reservation, a measure for how much extra to ask for
    tokens: int


class Budgets:
    """The accounts of every key, team and person with a budget; owned by the event loop."""

    def __init__(self, *, shared: bool = False) -> None:
        self.shared = shared
        self.accounts: dict[str, Account] = {}
        self.by_key: dict[str, list[tuple[str, Account]]] = {}  # key id -> its account and its team's
        self.by_person: dict[str, tuple[str, Account]] = {}  # user id -> the person's account
        self.rolled: dict[str, datetime] = {}  # account -> start of its new period, not yet in the store

    def roll_all(self, now: datetime) -> None:
        for ident, account in self.accounts.items():
            if account.roll(now) and account.reset_at is not None:
                self.rolled[ident] = account.reset_at

    def sync(self, keys: Iterable[Key], teams: Iterable[Team], people: Iterable[Person] = ()) -> None:
        """Take limits from the store; keep what this process has counted since (spend moves here first)."""
        seen = set()
        keys, people = list(keys), list(people)
        for ident, name, alias, limits in limit_accounts(keys, teams, people):
            if limits.max_budget is None and limits.max_tokens_budget is None:
                continue
            seen.add(ident)
            period = budget_period(limits.budget_duration) if limits.budget_duration else None
            account = self.accounts.get(ident)
            if account is None:
                self.accounts[ident] = Account(
                    name,
                    alias,
                    limits.max_budget,
                    limits.max_tokens_budget,
                    limits.spend,
                    limits.tokens_used,
                    limits.budget_reset_at,
                    period,
                )
                continue
            # updated in place: reservations in flight hold this object and settle into it
            account.name, account.alias = name, alias
            account.max_budget, account.max_tokens, account.period = limits.max_budget, limits.max_tokens_budget, period
            if self.shared:  # the database has every process's spend; ours not yet copied there is pending
                account.spend = limits.spend + account.pending_cost
                account.tokens = limits.tokens_used + account.pending_tokens
                account.reset_at = limits.budget_reset_at
            elif _reset_elsewhere(account, limits):
                account.spend, account.tokens, account.reset_at = (
                    limits.spend,
                    limits.tokens_used,
                    limits.budget_reset_at,
                )
        for ident in list(self.accounts):
            account = self.accounts[ident]
            if ident not in seen and not (account.reserved_cost or account.reserved_tokens or account.allotted_cost):
                del self.accounts[ident]
        self.by_key = {}
        for k in keys:
            pairs = [(i, self.accounts[i]) for i in (f"key:{k.id}", f"team:{k.team_id}") if i in seen]
            if pairs:
                self.by_key[k.id] = pairs
        person_ids = (f"user:{p.id}" for p in people)
        self.by_person = {ident[5:]: (ident, self.accounts[ident]) for ident in person_ids if ident in seen}

    def reserve(
        self,
        key: Key | None,
        price: Price,
        max_prompt_tokens: int,
        max_completion: int | None,
        max_seconds: float,
        now: datetime,
        person: str | None = None,
    ) -> Reservation | Shortfall | None:
        """Reserve on the key's account, its team's and, for a request made for ``person`` (a user id), theirs
        (the master key has no budget of its own; a person it calls for has theirs)."""
        pairs = self.by_key.get(key.id) if key is not None else None
        if person is not None and person in self.by_person:
            pairs = [*(pairs or ()), self.by_person[person]]
        if not pairs:
            return None
        accounts = [account for _, account in pairs] if len(pairs) > 1 else [pairs[0][1]]
        completion = max_completion if max_completion is not None else price.max_output_tokens
        tokens = max_prompt_tokens + completion
        cost = price.fixed + max_prompt_tokens * price.input + completion * price.output  # price.cost(), written out
        if price.gpu_second:
            cost += max_seconds * price.gpu_second
        if self.shared:
            needs = [(i, a, *a.short(cost, tokens)) for i, a in pairs]
            needs = [need for need in needs if need[2] or need[3]]
            if needs:
                return Shortfall(needs, cost, tokens)
            for account in accounts:
                account.reserved_cost += cost
                account.reserved_tokens += tokens
            return Reservation(accounts, cost, tokens, shared=True)
        for ident, account in pairs:  # the hot path: the usual case written out
            if account.reset_at is not None and now >= account.reset_at and account.roll(now):
                self.rolled[ident] = account.reset_at
            if (
                cost > 0
                and account.max_budget is not None
                and account.spend + account.reserved_cost + cost > account.max_budget
            ) or (
                account.max_tokens is not None
                and account.tokens + account.reserved_tokens + tokens > account.max_tokens
            ):
                reason = account.refusal(cost, tokens)
                account.refused = (account.reset_at,)
                raise InsufficientQuota(
                    f"{reason}; this request could cost up to {cost:.6g} credits and {tokens} tokens."
                )
        for account in accounts:
            account.reserved_cost += cost
            account.reserved_tokens += tokens
        return Reservation(accounts, cost, tokens)

    @staticmethod
    def settle(reservation: Reservation | None, cost: float, tokens: int) -> None:
        """Replace the reservation by what the request really cost (also after a failure: work done is paid)."""
        if reservation is None or reservation.settled:
            return
        reservation.settled = True
        for account in reservation.accounts:
            account.reserved_cost -= reservation.cost
            account.reserved_tokens -= reservation.tokens
            account.spend += cost
            account.tokens += tokens
            if reservation.shared:  # in the allotment until the ledger moves it into the database's spend
                account.pending_cost += cost
                account.pending_tokens += tokens

    def ingested(self, sums: Mapping[str, tuple[float, int, int]]) -> None:
        """The ledger moved this much from our allotments into the database's spend (shared database)."""
        for ident, (cost, tokens, _) in sums.items():
            account = self.accounts.get(ident)
            if account is not None:
                account.pending_cost -= cost
                account.allotted_cost -= cost
                account.pending_tokens -= tokens
                account.allotted_tokens -= tokens

    def remaining(self) -> Sequence[tuple[str, float, float]]:
        """(key alias, credits left, the budget) of every account with a budget."""
        return [
            (a.alias, a.max_budget - a.spend, a.max_budget) for a in self.accounts.values() if a.max_budget is not None
        ]


def _reset_elsewhere(account: Account, limits: Limits) -> bool:
    """The store shows a later period than ours: someone (an operator, another process) reset it."""
    return limits.budget_reset_at is not None and (
        account.reset_at is None or limits.budget_reset_at > account.reset_at
    )
