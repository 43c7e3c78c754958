"""What happened since the last look: ARK's state read every second and turned into events, so that no
subsystem has to know about webhooks. Each function compares what it is shown with what it saw before (the
:class:`Seen` it is given) and returns the events, ``(type, data, dedupe)``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ark.gateway.budgets import Account
from ark.store import Key

Event = tuple[str, dict[str, Any], str | None]


@dataclass
class Seen:
    keys: dict[str, Key] | None = None  # None: not looked yet (what exists at the start is no news)
    # budget thresholds this process emitted: account -> (its period, the levels), the current period only
    reported: dict[str, tuple[str, set[int]]] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)  # engine or service -> restarts counted
    load_failures: int | None = None


def budgets(accounts: Mapping[str, Account], levels: Sequence[int], seen: Seen) -> list[Event]:
    """A budget.threshold for each level a key's, team's or person's credits or tokens reached in its budget
    period. A request refused for the budget counts as 100%: reservations refuse before spend gets there."""
    found: list[Event] = []
    for ident, account in accounts.items():
        shares = []
        if account.max_budget:
            shares.append(account.spend / account.max_budget * 100)
        if account.max_tokens:
            shares.append(account.tokens / account.max_tokens * 100)
        refused = account.refused is not None and account.refused[0] == account.reset_at
        if refused:
            shares.append(100.0)
        if not shares:
            continue
        share = max(shares) + 1e-9  # 0.1 x 80 is 7.999... in floating point
        period = account.reset_at.isoformat() if account.reset_at else "lifetime"
        done = seen.reported.get(ident)
        if done is None or done[0] != period:
            done = seen.reported[ident] = (period, set())
        kind, _, account_id = ident.partition(":")
        for level in levels:
            if share < level or level in done[1]:
                continue
            done[1].add(level)
            data = {
                "account": kind,
                "id": account_id,
                "name": account.alias,
                "threshold": level,
                "spend": round(account.spend, 6),
                "max_budget": account.max_budget,
                "tokens": account.tokens,
                "max_tokens": account.max_tokens,
                "refused": refused,
                "resets_at": account.reset_at.isoformat() if account.reset_at else None,
            }
            found.append(("budget.threshold", data, f"budget:{ident}:{period}:{level}"))
    return found


def keys(current: Mapping[str, Key], seen: Seen) -> list[Event]:
    """key.created for a key that appeared, key.revoked for one deleted or blocked."""
    before, seen.keys = seen.keys, dict(current)
    if before is None:
        return []
    found: list[Event] = []
    for ident, key in current.items():
        old = before.get(ident)
        if old is None:
            found.append(("key.created", _key(key), f"key.created:{ident}"))
        elif key.blocked and not old.blocked:
            blocked = f"key.blocked:{ident}:{key.updated_at.isoformat()}"  # once, however many gateways saw it
            found.append(("key.revoked", {**_key(key), "reason": "blocked"}, blocked))
    for ident, key in before.items():
        if ident not in current:
            found.append(("key.revoked", {**_key(key), "reason": "deleted"}, f"key.deleted:{ident}"))
    return found


def restarts(counts: Iterable[tuple[str, str, int, str]], seen: Seen) -> list[Event]:
    """engine.restarted / service.restarted when a counter of restarts went up: (event, name, count, why)."""
    found: list[Event] = []
    for event, name, count, why in counts:
        counter = f"{event}:{name}:{why}"  # an engine has two counters: the arbiter's restarts, its worker's crashes
        known = seen.restarts.get(counter)
        seen.restarts[counter] = count
        if known is not None and count > known:
            subject = "engine" if event == "engine.restarted" else "service"
            found.append((event, {subject: name, "restarts": count, "reason": why}, None))
    return found


def load_failures(total: int, latest: Sequence[tuple[str, str]], seen: Seen) -> list[Event]:
    """model.load_failed for each load the arbiter saw fail since the last look."""
    before, seen.load_failures = seen.load_failures, total
    if before is None or total <= before:
        return []
    new = list(latest)[-(total - before) :]
    return [("model.load_failed", {"model": model, "error": why[:500]}, None) for model, why in new]


def _key(key: Key) -> dict[str, Any]:
    return {
        "key": f"{key.key_prefix}…",
        "key_alias": key.key_alias,
        "team_id": key.team_id,
        "user_id": key.user_id,
        "models": list(key.models),
        "max_budget": key.max_budget,
    }
