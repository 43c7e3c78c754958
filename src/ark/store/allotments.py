"""Allotments of shared budgets and rate limits, for several gateways on one database.

Each gateway process is a *holder* (its name is its ledger journal's, so a
journal left by a dead process says whose allotments it settles). For every key
and team with limits, the database keeps, per holder, that process's allotment
(in table ``holds``: its name is older than the word here, and renaming a table takes a migration):

* ``cost`` / ``tokens``: credits and tokens it may spend without asking again;
  they cover its reservations in flight and what it has spent but not yet
  copied from its journal into ``spend``. The invariant, kept by :func:`grant`
  under a row lock, is ``spend + sum(allotments.cost) <= max_budget`` (the same for
  tokens), so no two processes can spend the same credit.
* ``slots``: requests it may run at once; ``sum(slots) <= max_parallel_requests``.

Rate buckets (rpm, tpm) are one shared row per key or team that processes take
request-tokens from in small batches and charge used tokens to.

Every function here is one short transaction, run off the event loop. The first
statement of each writes, so SQLite takes its write lock before reading (no
lock upgrade, no deadlock); PostgreSQL also locks the limited row itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, Table, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import RowMapping

from ark.store.keys import LIMIT_TABLES, aware, budget_period, next_reset
from ark.store.tables import allotments, gateways, rate_buckets


@dataclass(frozen=True, slots=True)
class Want:
    """What one process asks of one key or team: ``need`` or nothing; ``extra`` only if there is room."""

    subject: str  # "key:ID", "team:ID" or "user:ID"
    cost: float = 0.0
    cost_extra: float = 0.0
    tokens: int = 0
    tokens_extra: int = 0
    slots: int = 0


@dataclass(frozen=True, slots=True)
class Granted:
    cost: float
    tokens: int
    slots: int
    spend: float  # the subject's spend in the database (this period), for display
    tokens_used: int


@dataclass(frozen=True, slots=True)
class Refusal:
    subject: str
    limit: str  # "budget", "tokens" or "parallel"
    used: float  # spent, used or held by every process together
    maximum: float


def _table(subject: str) -> tuple[Table, str]:
    kind, _, ident = subject.partition(":")
    return LIMIT_TABLES[kind], ident


def _lock(connection: Any, holder: str, now: float) -> None:
    """The transaction's first statement writes (SQLite's write lock); it is also the heartbeat."""
    connection.execute(update(gateways).where(gateways.c.holder == holder).values(heartbeat=now))


def grant(engine: Engine, holder: str, wants: Sequence[Want], now: float) -> dict[str, Granted] | Refusal:
    """Grow this holder's allotments by every ``Want`` together, or by none of them."""
    granted: dict[str, Granted] = {}
    with engine.begin() as connection:
        _lock(connection, holder, now)
        for want in wants:
            table, ident = _table(want.subject)
            row = connection.execute(select(table).where(table.c.id == ident).with_for_update()).mappings().first()
            if row is None:
                return Refusal(want.subject, "budget", 0.0, 0.0)  # deleted meanwhile
            spend, used = _current_period(connection, table, row, now)
            allotted = connection.execute(
                select(
                    func.coalesce(func.sum(allotments.c.cost), 0.0),
                    func.coalesce(func.sum(allotments.c.tokens), 0),
                    func.coalesce(func.sum(allotments.c.slots), 0),
                ).where(allotments.c.subject == want.subject)
            ).one()
            allotted_cost, allotted_tokens, allotted_slots = float(allotted[0]), int(allotted[1]), int(allotted[2])
            cost = tokens = slots = 0
            if want.cost > 0 and row["max_budget"] is not None:
                room = row["max_budget"] - spend - allotted_cost
                if room < want.cost:
                    return Refusal(want.subject, "budget", spend + allotted_cost, row["max_budget"])
                cost = want.cost + min(want.cost_extra, (room - want.cost) / 2)  # leave others half the rest
            if want.tokens > 0 and row["max_tokens_budget"] is not None:
                room_tokens = row["max_tokens_budget"] - used - allotted_tokens
                if room_tokens < want.tokens:
                    return Refusal(want.subject, "tokens", used + allotted_tokens, row["max_tokens_budget"])
                tokens = want.tokens + min(want.tokens_extra, (room_tokens - want.tokens) // 2)
            if want.slots > 0 and row["max_parallel_requests"] is not None:
                if row["max_parallel_requests"] - allotted_slots < want.slots:
                    return Refusal(want.subject, "parallel", allotted_slots, row["max_parallel_requests"])
                slots = want.slots
            _add_allotment(connection, holder, want.subject, cost, tokens, slots)
            granted[want.subject] = Granted(cost, tokens, slots, spend, used)
    return granted


def _current_period(connection: Any, table: Table, row: RowMapping, now: float) -> tuple[float, int]:
    """The subject's spend and tokens in the current budget period, starting a new period when it is due."""
    reset_at = aware(row["budget_reset_at"])
    if row["budget_duration"] is None or reset_at is None or reset_at.timestamp() > now:
        return float(row["spend"]), int(row["tokens_used"])
    period = budget_period(row["budget_duration"])
    moment = datetime.fromtimestamp(now, UTC)
    reset_at = next_reset(reset_at, period, moment)
    connection.execute(
        update(table).where(table.c.id == row["id"]).values(spend=0.0, tokens_used=0, budget_reset_at=reset_at)
    )
    return 0.0, 0


def _add_allotment(connection: Any, holder: str, subject: str, cost: float, tokens: int, slots: int) -> None:
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    columns = allotments.c
    statement = dialect.insert(allotments).values(holder=holder, subject=subject, cost=cost, tokens=tokens, slots=slots)
    connection.execute(
        statement.on_conflict_do_update(
            index_elements=["holder", "subject"],
            set_={"cost": columns.cost + cost, "tokens": columns.tokens + tokens, "slots": columns.slots + slots},
        )
    )


def release(engine: Engine, holder: str, amounts: Mapping[str, tuple[float, int, int]], now: float) -> None:
    """Give back part of this holder's allotments: {subject: (credits, tokens, slots)}."""
    with engine.begin() as connection:
        _lock(connection, holder, now)
        settle_allotments(connection, holder, amounts)


def settle_allotments(connection: Any, holder: str, amounts: Mapping[str, tuple[float, int, int]]) -> None:
    """Shrink allotments in the caller's transaction (the ledger does it as it moves spend into ``spend``)."""
    columns = allotments.c
    for subject, (cost, tokens, slots) in amounts.items():
        connection.execute(
            update(allotments)
            .where(columns.holder == holder, columns.subject == subject)
            .values(cost=columns.cost - cost, tokens=columns.tokens - tokens, slots=columns.slots - slots)
        )


@dataclass(frozen=True, slots=True)
class RateLevels:
    taken: int  # request-tokens this holder now has to spend
    requests: float  # the shared rpm bucket after the take
    tokens: float  # the shared tpm bucket after the charge


def take_rate(
    engine: Engine,
    holder: str,
    subject: str,
    rpm: int | None,
    tpm: int | None,
    *,
    take: int = 0,
    extra: int = 0,
    give_back: int = 0,
    charge: int = 0,
    now: float,
) -> RateLevels:
    """Refill the shared buckets, return unused request-tokens, charge used tokens, take ``take`` (+ ``extra``)."""
    with engine.begin() as connection:
        _lock(connection, holder, now)
        row = (
            connection.execute(select(rate_buckets).where(rate_buckets.c.subject == subject).with_for_update())
            .mappings()
            .first()
        )
        if row is None:
            requests, tokens, elapsed = float(rpm or 0), float(tpm or 0), 0.0
        else:
            requests, tokens, elapsed = row["requests"], row["tokens"], max(0.0, now - row["stamp"])
        if rpm is not None:
            requests = min(float(rpm), requests + elapsed * rpm / 60.0 + give_back)
        if tpm is not None:
            tokens = min(float(tpm), tokens + elapsed * tpm / 60.0) - charge
        taken = 0
        if take and rpm is not None and requests >= take:
            taken = take + min(extra, math.floor((requests - take) / 2))  # leave others half the rest
            requests -= taken
        values = {"requests": requests, "tokens": tokens, "stamp": now}
        if row is None:
            connection.execute(insert(rate_buckets).values(subject=subject, **values))
        else:
            connection.execute(update(rate_buckets).where(rate_buckets.c.subject == subject).values(**values))
    return RateLevels(taken, requests, tokens)


def register(engine: Engine, holder: str, host: str, pid: int, now: float) -> None:
    with engine.begin() as connection:
        connection.execute(insert(gateways).values(holder=holder, host=host, pid=pid, heartbeat=now))


def beat(engine: Engine, holder: str, now: float) -> bool:
    """The heartbeat; False when this holder was given up for dead (its allotments are gone)."""
    with engine.begin() as connection:
        result = connection.execute(update(gateways).where(gateways.c.holder == holder).values(heartbeat=now))
        return bool(result.rowcount)


def stale_holders(engine: Engine, before: float) -> list[str]:
    with engine.connect() as connection:
        return list(connection.execute(select(gateways.c.holder).where(gateways.c.heartbeat < before)).scalars())


def drop_holders(engine: Engine, holders: Iterable[str]) -> None:
    """Forget processes that are gone, and with them their allotments."""
    names = list(holders)
    if not names:
        return
    with engine.begin() as connection:
        connection.execute(delete(allotments).where(allotments.c.holder.in_(names)))
        connection.execute(delete(gateways).where(gateways.c.holder.in_(names)))


def list_allotments(engine: Engine) -> list[dict[str, Any]]:
    """Every allotment, for `ark status` and tests."""
    with engine.connect() as connection:
        rows = connection.execute(select(allotments).order_by(allotments.c.subject)).mappings()
        return [dict(row) for row in rows]
