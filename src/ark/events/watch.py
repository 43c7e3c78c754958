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
    reported: set[str] = field(default_factory=set)  # budget thresholds already emitted by this process
    restarts: dict[str, int] = field(default_factory=dict)  # engine or service -> restarts counted
    load_failures: int | None = None


def budgets(accounts: Mapping[str, Account], levels: Sequence[int], seen: Seen) -> list[Event]:
    """A budget.threshold for each level a key's, team's or person's spend reached in its budget period."""
    found: list[Event] = []
    for ident, account in accounts.items():
        if not account.max_budget:
            continue
        share = account.spend / account.max_budget * 100
        period = account.reset_at.isoformat() if account.reset_at else "lifetime"
        kind, _, account_id = ident.partition(":")
        for level in levels:
            dedupe = f"budget:{ident}:{period}:{level}"
            if share < level or dedupe in seen.reported:
                continue
            seen.reported.add(dedupe)
            data = {
                "account": kind,
                "id": account_id,
                "name": account.alias,
                "threshold": level,
                "spend": round(account.spend, 6),
                "max_budget": account.max_budget,
                "resets_at": account.reset_at.isoformat() if account.reset_at else None,
            }
            found.append(("budget.threshold", data, dedupe))
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
            found.append(("key.revoked", {**_key(key), "reason": "blocked"}, None))
    for ident, key in before.items():
        if ident not in current:
            found.append(("key.revoked", {**_key(key), "reason": "deleted"}, f"key.deleted:{ident}"))
    return found


def restarts(counts: Iterable[tuple[str, str, int, str]], seen: Seen) -> list[Event]:
    """engine.restarted / service.restarted when a counter of restarts went up: (event, name, count, why)."""
    found: list[Event] = []
    for event, name, count, why in counts:
        known = seen.restarts.get(f"{event}:{name}")
        seen.restarts[f"{event}:{name}"] = count
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
