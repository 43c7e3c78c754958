"""ARK's events as a component: watched, written to the outbox, delivered as signed webhooks.

Every second the watchers (:mod:`ark.events.watch`) look at what the runtime already knows (the budgets'
accounts, the keys in memory, the engines' and services' restart counters, the arbiter's failed loads) and
emit what changed. The bus writes each event to the outbox once per webhook that wants it, the deliverer
sends what is due (docs/automation.md).
Management (master key): ``GET /admin/webhooks`` (counts per webhook and state, the dead letters) and
``POST /admin/webhooks/redeliver`` (``{"id"}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, timedelta
from typing import Any

import orjson
from prometheus_client import Counter

from ark.errors import InvalidRequest, NotFound
from ark.events import watch
from ark.events.bus import EventBus
from ark.events.delivery import Deliverer
from ark.events.outbox import Outbox
from ark.gateway import requests as parse
from ark.gateway.exchange import JSON_HEADERS
from ark.periodic import every
from ark.runtime import Component, Runtime
from ark.wire import Request, Responder

log = logging.getLogger("ark.events")
WATCH_S = 1.0
DELIVER_S = 0.5
_KEEP_DELIVERED = timedelta(days=30)


class Events(Component):
    name = "events"

    async def start(self, rt: Runtime) -> None:
        assert rt.store is not None
        self.rt = rt
        settings = rt.settings
        self.outbox = Outbox(rt.store.engine)
        self.bus = EventBus(settings.webhooks, self.outbox, rt.clock)
        deliveries = Counter(
            "ark_webhook_deliveries",
            "Tries to deliver an event to a webhook, by outcome (delivered, retry, dead).",
            ["webhook", "outcome"],
            registry=rt.metrics.registry,
        )
        self.deliverer = Deliverer(
            self.outbox,
            {w.name: w for w in settings.webhooks},
            settings.events,
            settings.logs_dir / "webhooks-dead.jsonl",
            rt.clock,
            lambda webhook, outcome: deliveries.labels(webhook, outcome).inc(),
        )
        self.seen = watch.Seen()
        self.levels = settings.events.thresholds()
        self.tasks: list[asyncio.Task[None]] = []
        admin = rt.front.admin
        rt.http.add("GET", "/admin/webhooks", admin(self.status_page, "see the webhooks"))
        rt.http.add("POST", "/admin/webhooks/redeliver", admin(self.redeliver, "redeliver events"))
        if not settings.webhooks:
            return  # nothing to send to: no watching, no outbox traffic
        self.watch()  # what exists now is the baseline
        self._keys(rt.front.keys)
        rt.front.key_watchers.append(self._keys)  # at each reload: at once after the admin API made or deleted one
        work = [
            (self.bus.run(), "ark-events-writer"),
            (every(WATCH_S, self.watch, log=log, failure="events: watching failed"), "ark-events-watch"),
            (
                every(6 * 3600.0, self._prune, log=log, failure="events: pruning failed", at_once=True),
                "ark-events-prune",
            ),
        ]
        for hook in settings.webhooks:  # one sender per webhook: a slow receiver delays only its own events

            async def deliver(name: str = hook.name) -> None:
                await self.deliverer.round(name)

            failure = f"events: delivering to {hook.name} failed"
            work.append((every(DELIVER_S, deliver, log=log, failure=failure), f"ark-events-deliver-{hook.name}"))
        self.tasks = [asyncio.create_task(coroutine, name=name) for coroutine, name in work]

    async def close(self) -> None:
        """Stop watching and sending, look once more, and put every event emitted so far in the outbox; what
        was being sent is given back (sent at the next start)."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.tasks:
            with contextlib.suppress(Exception):
                self.watch()
                self._keys(self.rt.front.keys)
            try:
                await self.bus.flush()
            except Exception:
                log.exception("events: %d events could not be written to the outbox", len(self.bus.pending))
            await self.deliverer.close()

    def _keys(self, keys: dict[str, Any]) -> None:
        for event_type, data, dedupe in watch.keys(keys, self.seen):
            self.bus.emit(event_type, data, dedupe)

    def watch(self) -> None:
        rt, seen = self.rt, self.seen
        found = watch.budgets(rt.budgets.accounts, self.levels, seen)
        counts: list[tuple[str, str, int, str]] = []
        if rt.gpu is not None:
            counts += [("engine.restarted", n, c, "stopped answering") for n, c in rt.gpu.drivers.restarts.items()]
            stats = rt.gpu.arbiter.stats
            found += watch.load_failures(stats.load_failures, stats.failed_loads, seen)
        for engine in rt.engines:
            crashes = getattr(engine, "crashes", None)
            if isinstance(crashes, int):
                counts.append(("engine.restarted", engine.name, crashes, "its worker crashed"))
        for service in rt.supervisor.status():
            counts.append(("service.restarted", service["name"], int(service.get("restarts") or 0), "it exited"))
        found += watch.restarts(counts, seen)
        for event_type, data, dedupe in found:
            self.bus.emit(event_type, data, dedupe)

    async def status_page(self, request: Request, responder: Responder) -> None:
        summary = await asyncio.to_thread(self.outbox.summary)
        summary["configured"] = [{"name": w.name, "url": w.url, "events": w.events} for w in self.rt.settings.webhooks]
        await responder.send(200, orjson.dumps(summary), JSON_HEADERS)

    async def redeliver(self, request: Request, responder: Responder) -> None:
        body = parse.parse_body(request.body)
        ident = body.get("id")
        if not isinstance(ident, str) or not ident.startswith("msg_") or len(ident) > 40:
            raise InvalidRequest(
                "'id' must be a delivery's id (msg_...), as `ark events status` lists them.", param="id"
            )
        now = self.rt.clock.now().astimezone(UTC)
        if not await asyncio.to_thread(self.outbox.redeliver, ident, now):
            raise NotFound(f"No delivery {ident}.", param="id")
        found: dict[str, Any] | None = await asyncio.to_thread(self.outbox.get, ident)
        await responder.send(200, orjson.dumps(found), JSON_HEADERS)

    async def _prune(self) -> None:
        before = self.rt.clock.now().astimezone(UTC) - _KEEP_DELIVERED
        deleted = await asyncio.to_thread(self.outbox.prune, before)
        if deleted:
            log.info("events: forgot %d deliveries done more than 30 days ago", deleted)
