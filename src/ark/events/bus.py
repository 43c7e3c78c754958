"""Where ARK's events start: ``emit`` turns an event into one outbox row per webhook that wants it, at once
and without blocking (the event loop's code calls it), and the writer puts them in the database within a
moment, and at the latest when ARK stops.

An event is ``{"type", "timestamp", "data"}`` (Standard Webhooks' envelope), the same bytes for every
webhook and every try.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC
from typing import Any

import orjson

from ark.clock import Clock
from ark.config.events import WebhookSettings
from ark.events.outbox import Outbox

log = logging.getLogger("ark.events")
FLUSH_S = 0.25  # the longest an emitted event waits in memory


def new_id() -> str:
    return "msg_" + uuid.uuid4().hex


class EventBus:
    def __init__(self, webhooks: Sequence[WebhookSettings], outbox: Outbox, clock: Clock) -> None:
        self.webhooks, self.outbox, self.clock = webhooks, outbox, clock
        self._rows: list[dict[str, Any]] = []
        self._wake = asyncio.Event()

    @property
    def pending(self) -> list[dict[str, Any]]:
        """Rows emitted and not yet in the outbox."""
        return self._rows

    def emit(self, event_type: str, data: dict[str, Any], dedupe: str | None = None) -> int:
        """Queue ``event_type`` for every webhook that wants it; returns how many. ``dedupe``: once per webhook
        ever (the outbox keeps the key) however often it is emitted, by this process or another."""
        targets = [webhook for webhook in self.webhooks if webhook.wants(event_type)]
        if not targets:
            return 0
        now = self.clock.now().astimezone(UTC)
        stamp = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        body = orjson.dumps({"type": event_type, "timestamp": stamp, "data": data}).decode()
        for webhook in targets:
            self._rows.append(
                {
                    "id": new_id(),
                    "webhook": webhook.name,
                    "type": event_type,
                    "dedupe": dedupe[:200] if dedupe else None,
                    "body": body,
                    "created_at": now,
                    "state": "pending",
                    "attempts": 0,
                    "next_at": now,
                }
            )
        self._wake.set()
        return len(targets)

    async def run(self) -> None:
        """The writer: whatever was emitted goes to the outbox, a batch at a time."""
        while True:
            try:
                async with asyncio.timeout(FLUSH_S * 4):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                log.exception("events: writing to the outbox failed; retrying")
            await asyncio.sleep(FLUSH_S)

    async def flush(self) -> None:
        rows, self._rows = self._rows, []
        if not rows:
            return
        try:
            await asyncio.to_thread(self.outbox.add, rows)
        except BaseException:
            self._rows[:0] = rows  # kept, in order, for the next try
            raise
