"""The outbox: every delivery of an event to a webhook is a row, written before it is sent and kept until it
is delivered or given up on (dead), so that no event is lost when ARK stops, crashes or the receiver is down.

A process takes due rows with a lease (``lease_until``): another process on the same database leaves them
alone until it runs out, and a row whose sender died mid-delivery is sent again once it has. Delivery is
therefore at least once, and ``webhook-id`` (the row's id, the same on every try) lets a receiver drop a
duplicate. ``dedupe`` makes an event happen once per webhook (a budget threshold once per budget period,
a key's creation once however many gateways saw it). All methods block: the caller runs them in a thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, and_, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from ark.store.keys import aware
from ark.store.tables import webhook_outbox as outbox


@dataclass(frozen=True, slots=True)
class Due:
    id: str
    webhook: str
    type: str
    body: bytes
    attempts: int


class Outbox:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, rows: Sequence[dict[str, Any]]) -> int:
        """Insert new deliveries; one whose (webhook, dedupe) is there already is left out. Returns how many."""
        if not rows:
            return 0
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(outbox).on_conflict_do_nothing()
        with self.engine.begin() as connection:
            return connection.execute(statement, list(rows)).rowcount or 0

    def claim(self, webhook: str, now: datetime, lease_until: datetime, limit: int) -> list[Due]:
        """Due deliveries to ``webhook`` that nobody is sending, leased to this process until ``lease_until``."""
        free = or_(outbox.c.lease_until.is_(None), outbox.c.lease_until < now)
        due = and_(outbox.c.webhook == webhook, outbox.c.state == "pending", outbox.c.next_at <= now, free)
        with self.engine.begin() as connection:
            ids = connection.execute(select(outbox.c.id).where(due).order_by(outbox.c.next_at).limit(limit)).scalars()
            wanted = list(ids)
            if not wanted:
                return []
            taken = connection.execute(
                update(outbox)
                .where(outbox.c.id.in_(wanted), due)  # all of it again: another process may have sent it since
                .values(lease_until=lease_until)
                .returning(outbox.c.id, outbox.c.webhook, outbox.c.type, outbox.c.body, outbox.c.attempts)
            ).all()
        return [Due(row.id, row.webhook, row.type, row.body.encode(), row.attempts) for row in taken]

    def delivered(self, ident: str, now: datetime, status: int) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(outbox)
                .where(outbox.c.id == ident)
                .values(
                    state="delivered",
                    attempts=outbox.c.attempts + 1,
                    delivered_at=now,
                    lease_until=None,
                    last_status=status,
                    last_error=None,
                )
            )

    def failed(self, ident: str, status: int | None, error: str, next_at: datetime | None) -> None:
        """A try that failed: tried again at ``next_at``, or dead (None)."""
        values: dict[str, Any] = {
            "attempts": outbox.c.attempts + 1,
            "lease_until": None,
            "last_status": status,
            "last_error": error[:500],
        }
        values.update({"state": "dead"} if next_at is None else {"next_at": next_at})
        with self.engine.begin() as connection:
            connection.execute(update(outbox).where(outbox.c.id == ident).values(**values))

    def release(self, idents: Sequence[str]) -> None:
        """Give back the leases of deliveries this process took and will not send (it is stopping)."""
        if idents:
            with self.engine.begin() as connection:
                connection.execute(
                    update(outbox)
                    .where(outbox.c.id.in_(list(idents)), outbox.c.state == "pending")
                    .values(lease_until=None)
                )

    def redeliver(self, ident: str, now: datetime) -> bool:
        """A dead (or delivered) delivery sent again, as new: its tries start over."""
        with self.engine.begin() as connection:
            done = connection.execute(
                update(outbox)
                .where(outbox.c.id == ident, outbox.c.state != "pending")
                .values(state="pending", attempts=0, next_at=now, lease_until=None, delivered_at=None)
            )
        return bool(done.rowcount)

    def summary(self, dead_limit: int = 100) -> dict[str, Any]:
        """How many deliveries each webhook has in each state, and the latest dead ones."""
        with self.engine.connect() as connection:
            counts = connection.execute(
                select(outbox.c.webhook, outbox.c.state, func.count()).group_by(outbox.c.webhook, outbox.c.state)
            ).all()
            dead = connection.execute(
                select(outbox).where(outbox.c.state == "dead").order_by(outbox.c.created_at.desc()).limit(dead_limit)
            ).mappings()
            dead_rows = [_public(row) for row in dead]
        webhooks: dict[str, dict[str, int]] = {}
        for webhook, state, count in counts:
            webhooks.setdefault(webhook, {"pending": 0, "delivered": 0, "dead": 0})[state] = count
        return {"webhooks": webhooks, "dead": dead_rows}

    def get(self, ident: str) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(outbox).where(outbox.c.id == ident)).mappings().first()
        return _public(row) if row is not None else None

    def prune(self, before: datetime) -> int:
        """Forget deliveries done before ``before``. Kept: dead ones (until redelivered), and those with a
        ``dedupe`` key, which is what makes their event happen once (a lifetime budget's thresholds)."""
        with self.engine.begin() as connection:
            gone = connection.execute(
                delete(outbox).where(
                    outbox.c.state == "delivered", outbox.c.delivered_at < before, outbox.c.dedupe.is_(None)
                )
            )
        return gone.rowcount or 0


def _public(row: Any) -> dict[str, Any]:
    stamp = aware(row["created_at"])
    return {
        "id": row["id"],
        "webhook": row["webhook"],
        "type": row["type"],
        "state": row["state"],
        "attempts": row["attempts"],
        "created_at": stamp.isoformat() if stamp else None,
        "last_status": row["last_status"],
        "last_error": row["last_error"],
    }
