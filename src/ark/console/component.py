"""The console as a component: its own listener on ``[console] listen`` beside the gateway, sharing the
runtime's database pool, metrics registry, secret and view of live sessions; and the live overview it
shows (the last hour sampled from the gateway's counters, and each part of ARK)."""

from __future__ import annotations

import logging
import time
from typing import Any

from ark.console.server import ConsoleServer
from ark.gateway.metrics import LATENCY_BUCKETS
from ark.monitor.recent import Recent, Sample
from ark.periodic import every
from ark.runtime import Component, Runtime

log = logging.getLogger("ark.console")


class ConsoleComponent(Component):
    name = "console"

    def __init__(self) -> None:
        self.server: ConsoleServer | None = None

    async def start(self, rt: Runtime) -> None:
        self.rt = rt
        self.recent = Recent(rt.settings.console.overview_sample_s, LATENCY_BUCKETS)
        assert rt.store is not None and rt.identity is not None
        self.server = await ConsoleServer.open(
            rt.settings, rt.store, rt.metrics.registry, self.overview, rt.secret, rt.identity.sessions, rt.http
        )
        sample = every(
            self.recent.interval, lambda: self.recent.take(self), log=log, failure="sampling failed", at_once=True
        )
        rt.background(sample, "ark-recent")

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    def sample(self) -> Sample:
        """Now, for the console's last hour: counters, and what holds the GPU."""
        rt = self.rt
        requests, errors, tokens, latency = rt.metrics.totals()
        gpu = None
        if rt.gpu is not None:
            status = rt.gpu.status()
            reading = status["reading"]
            gpu = {
                "device": status["device"],
                "capacity_bytes": status["capacity_bytes"],
                "models": {m["model"]: m["memory_bytes"] for m in status["models"] if m["resident"]},
                "comfyui_bytes": (status["comfyui"] or {}).get("used_bytes", 0),
                "holds_bytes": status["held_bytes"],
                "external_bytes": status["external_bytes"],
                "queue": status["queue"],
                "temperature_c": reading["temperature_c"],
                "power_w": reading["power_w"],
                "utilization": reading["utilization"],
            }
        spend = sum(rt.metrics.spend.values())
        return Sample(time.time(), requests, errors, tokens, rt.metrics.inflight, latency, spend, gpu)

    def overview(self) -> dict[str, Any]:
        """The console's live overview: the last hour, and whether each part of ARK is up."""
        rt = self.rt
        return {**self.recent.overview(), "health": [*rt.core_parts(), *rt.services()]}
