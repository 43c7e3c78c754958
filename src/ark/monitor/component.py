"""Monitoring as a component: Prometheus, node_exporter and Alertmanager under ARK's supervisor, when
installed (``[monitor] embedded``), started beside serving (Prometheus takes seconds to get ready)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ark.monitor import embedded
from ark.runtime import Component, Runtime, Status

log = logging.getLogger("ark.monitor")


class Monitoring(Component):
    name = "monitoring"

    def __init__(self) -> None:
        self.report: list[dict[str, str]] = []  # one line per service: name, state (absent, failed...), why
        self._task: asyncio.Task[None] | None = None

    async def start(self, rt: Runtime) -> None:
        self._task = asyncio.create_task(self._start(rt), name="ark-monitoring")

    async def _start(self, rt: Runtime) -> None:
        try:
            self.report = await embedded.start(rt.settings, rt.supervisor)
        except Exception as exc:  # [monitor] embedded = yes and something is missing: say so, serve on
            log.error("monitoring: %s", exc)
            self.report = [{"name": "monitoring", "state": "failed", "why": str(exc).splitlines()[0]}]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def status(self) -> list[Status]:
        return [Status(entry["name"], entry["state"], entry.get("why", "")) for entry in self.report]
