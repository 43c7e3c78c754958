"""Delivering the outbox: due rows are POSTed, signed, to their webhook; a 2xx answer is delivered, anything
else (an error status, a refused connection, no answer in ``[events] timeout_s``) is tried again after a
backoff that doubles from ``retry_base_s`` up to ``retry_max_s`` (half of it random, so that receivers coming
back are not hit by every sender at once), and after ``max_attempts`` tries it is dead: kept in the outbox
(``ark events status``, ``ark events redeliver``) and written to DATA/logs/webhooks-dead.jsonl."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from datetime import UTC, timedelta
from pathlib import Path

import aiohttp
import orjson

from ark.clock import Clock
from ark.config.events import EventsSettings, WebhookSettings
from ark.events import signing
from ark.events.outbox import Due, Outbox

log = logging.getLogger("ark.events")
BATCH = 16  # deliveries to one webhook sent at once
LEASE_S = 120.0  # a delivery taken by a process that died is sent again after this (at least 2 timeouts)


def backoff(attempts: int, base: float, most: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds before try ``attempts + 1``: base, 2 x base, 4 x base... at most ``most``, the upper half random."""
    wait = float(min(most, base * 2 ** max(0, attempts - 1)))
    return wait / 2 + rand() * wait / 2


class Deliverer:
    def __init__(
        self,
        outbox: Outbox,
        webhooks: Mapping[str, WebhookSettings],
        settings: EventsSettings,
        dead_log: Path,
        clock: Clock,
        count: Callable[[str, str], None] = lambda webhook, outcome: None,
    ) -> None:
        self.outbox, self.webhooks, self.settings = outbox, webhooks, settings
        self.dead_log, self.clock, self.count = dead_log, clock, count
        self._session: aiohttp.ClientSession | None = None
        self.lease = timedelta(seconds=max(LEASE_S, 2 * settings.timeout_s + 30))
        self.sending: set[str] = set()  # ids leased to this process and not settled yet

    async def close(self) -> None:
        """After the rounds have stopped: leases of what was not sent go back, so a restart sends it at once."""
        if self.sending:
            await asyncio.to_thread(self.outbox.release, sorted(self.sending))
            self.sending.clear()
        if self._session is not None:
            await self._session.close()

    async def round(self, webhook: str) -> int:
        """Send what is due to ``webhook`` now (one webhook's rounds never wait for another's receiver);
        returns how many were tried."""
        now = self.clock.now().astimezone(UTC)
        due = await asyncio.to_thread(self.outbox.claim, webhook, now, now + self.lease, BATCH)
        self.sending.update(item.id for item in due)
        if due:
            await asyncio.gather(*(self._send(item) for item in due))
        return len(due)

    async def _send(self, item: Due) -> None:
        webhook = self.webhooks[item.webhook]
        stamp = int(self.clock.now().timestamp())
        headers = signing.headers(webhook.secret.value, item.id, stamp, item.body, item.type)
        status: int | None = None
        try:
            timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
            async with self._http().post(
                webhook.url, data=item.body, headers=headers, timeout=timeout, allow_redirects=False
            ) as reply:
                status = reply.status
                await reply.content.read(64 * 1024)  # what the receiver says is not kept; the connection is
            error = "" if 200 <= status < 300 else f"HTTP {status}"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:300] if str(exc) else type(exc).__name__
        if not error:
            await asyncio.to_thread(self.outbox.delivered, item.id, self.clock.now().astimezone(UTC), status or 200)
            self.count(item.webhook, "delivered")
        else:
            await self._failed(item, status, error, last=item.attempts + 1 >= self.settings.max_attempts)
        self.sending.discard(item.id)

    async def _failed(self, item: Due, status: int | None, error: str, *, last: bool) -> None:
        if last:
            await asyncio.to_thread(self.outbox.failed, item.id, status, error, None)
            await asyncio.to_thread(self._write_dead, item, status, error)
            log.error(
                "webhook %s: %s %s is dead after %d tries: %s",
                item.webhook,
                item.type,
                item.id,
                item.attempts + 1,
                error,
            )
            self.count(item.webhook, "dead")
            return
        wait = backoff(item.attempts + 1, self.settings.retry_base_s, self.settings.retry_max_s)
        next_at = self.clock.now().astimezone(UTC) + timedelta(seconds=wait)
        await asyncio.to_thread(self.outbox.failed, item.id, status, error, next_at)
        log.warning(
            "webhook %s: %s %s failed (%s); trying again in %.1f s", item.webhook, item.type, item.id, error, wait
        )
        self.count(item.webhook, "retry")

    def _write_dead(self, item: Due, status: int | None, error: str) -> None:
        self.dead_log.parent.mkdir(parents=True, exist_ok=True)
        line = {
            "time": self.clock.now().astimezone(UTC).isoformat(),
            "id": item.id,
            "webhook": item.webhook,
            "type": item.type,
            "attempts": item.attempts + 1,
            "status": status,
            "error": error,
            "event": orjson.loads(item.body),
        }
        with self.dead_log.open("ab") as out:
            out.write(orjson.dumps(line) + b"\n")

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session
