"""The arbiter as the gateway runs it: device, catalog and drivers from the config, then requests take leases.

The engines it manages are the Ollama engines on this machine (``[engines.NAME] gpu_managed``); their
models are in its catalog with what ``/api/tags``, ``/api/show`` and ``/api/ps`` say, and the models an
engine already has loaded at start are adopted, not loaded twice. A request for a model the catalog
does not know (another engine, or a model installed after start) is not arbitrated.

Not wired yet (docs/arbiter.md): the embedded engine, ComfyUI's live footprint, memory used by other
processes (on an NVIDIA GPU), and a refresh of the catalog when models are installed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ark.arbiter.catalog import Facts, build, describe
from ark.arbiter.devices import DeviceError, Reading, open_device
from ark.arbiter.drivers import DriverError, OllamaDriver
from ark.arbiter.policy import GB
from ark.arbiter.scheduler import Arbiter, Lease
from ark.config import Settings
from ark.engines.base import Engine

log = logging.getLogger("ark.arbiter")


class EngineDrivers:
    """One driver per engine; the arbiter's calls go to the engine that serves the model."""

    def __init__(self, by_model: dict[str, OllamaDriver]) -> None:
        self.by_model = by_model

    async def load(self, model: str) -> int | None:
        return await self.by_model[model].load(model)

    async def unload(self, model: str) -> None:
        await self.by_model[model].unload(model)

    async def free_comfy(self) -> None:
        raise DriverError("no ComfyUI is configured")

    def offloaded(self, model: str) -> tuple[int, int] | None:
        driver = self.by_model.get(model)
        return driver.offloaded(model) if driver is not None else None

    async def close(self) -> None:
        for driver in {id(d): d for d in self.by_model.values()}.values():
            await driver.close()


class GpuService:
    def __init__(self, arbiter: Arbiter, drivers: EngineDrivers, device_name: str = "") -> None:
        self.arbiter, self.drivers, self.device_name = arbiter, drivers, device_name

    async def lease(self, model: str) -> Lease | None:
        if model not in self.arbiter.catalog:
            return None
        return await self.arbiter.acquire(model)

    async def close(self) -> None:
        await self.arbiter.close()
        await self.drivers.close()

    async def load(self, model: str) -> dict[str, Any]:
        """An operator's load: as a request would, without generating anything."""
        was = model in self.arbiter.resident
        lease = await self.arbiter.acquire(model)
        lease.release()
        return {"model": model, "loaded": not was, "resident": True}

    async def unload(self, model: str) -> dict[str, Any]:
        return {"model": model, "unloaded": await self.arbiter.unload(model)}

    def status(self) -> dict[str, Any]:
        """What `GET /admin/gpu` answers and `ark gpu status` shows."""
        arbiter = self.arbiter
        models: list[dict[str, Any]] = []
        for name, entry in sorted(arbiter.catalog.items()):
            state = arbiter.resident.get(name)
            models.append(
                {
                    "model": name,
                    "resident": state is not None,
                    "memory_bytes": state.memory if state is not None else entry.info.memory,
                    "memory_source": entry.source,
                    "leases": state.leases if state is not None else 0,
                    "queued": len(arbiter.queue_for(name)),
                    "draining": name in arbiter.draining,
                    "priority": entry.info.priority.name.lower(),
                    "pinned": entry.info.pinned,
                    "large": entry.info.large,
                    "idle_timeout_s": entry.idle_timeout,
                }
            )
        used = sum(m["memory_bytes"] for m in models if m["resident"])
        stats = arbiter.stats
        return {
            "enabled": True,
            "device": self.device_name,
            "capacity_bytes": arbiter.capacity,
            "used_bytes": used,
            "queue": len(arbiter.queue),
            "models": models,
            "stats": {
                "loads": stats.loads,
                "unloads": stats.unloads,
                "swaps": stats.swaps,
                "rejected": stats.rejected,
                "load_seconds": round(stats.load_seconds, 3),
                "leases": stats.wait_count,
                "wait_seconds": round(stats.wait_seconds, 3),
            },
        }


def _read_once(settings: Settings) -> Reading:
    """The device's size and name at start (NVML is shut again: nothing else reads it yet)."""
    device = open_device(settings.gpu, cpu_engine=True)
    try:
        return device.read()
    finally:
        device.close()


async def start(settings: Settings, engines: Sequence[Engine]) -> GpuService | None:
    """The arbiter for the managed engines, or None when there is nothing to manage (said in the log)."""
    managed = [e for e in engines if e.settings.is_gpu_managed]
    if not managed:
        return None
    try:  # an Ollama without a GPU runs on the CPU: then system memory is what to manage
        reading = await asyncio.to_thread(_read_once, settings)
    except DeviceError as exc:
        log.warning("GPU arbiter off: %s", exc)
        return None
    facts: dict[str, Facts] = {}
    by_model: dict[str, OllamaDriver] = {}
    for engine in managed:
        driver = OllamaDriver(engine.settings.url, deadline=engine.settings.first_token_timeout)
        try:
            found = await driver.facts()
        except DriverError as exc:
            log.warning("GPU arbiter: engine %s did not answer (%s); its models are not arbitrated", engine.name, exc)
            await driver.close()
            continue
        engine.managed = True  # type: ignore[attr-defined]
        facts.update(found)
        by_model.update(dict.fromkeys(found, driver))
    for model in settings.models:  # a context fixed in the config is the one Ollama loads with
        if model.num_ctx and model.id in facts:
            facts[model.id] = replace(facts[model.id], n_ctx=model.num_ctx)
    catalog = build(
        (m for m in settings.models if m.id in facts),
        facts,
        device_total=reading.total,
        large_fraction=settings.gpu.large_fraction,
    )
    capacity = reading.total - int(settings.gpu.reserve_gb * GB)
    drivers = EngineDrivers(by_model)
    arbiter = Arbiter(
        catalog,
        drivers,
        capacity=capacity,
        max_wait=settings.gpu.max_wait_s,
        queue_size=settings.gpu.queue_size,
        require_full_gpu=settings.gpu.require_full_gpu,
    )
    for name, fact in facts.items():
        if fact.reported is not None:
            arbiter.adopt(name, fact.reported)
    arbiter.start()
    log.info(
        "GPU arbiter on %s: %.1f GB to plan with; %s",
        reading.name,
        capacity / GB,
        "; ".join(describe(e) for e in catalog.values()) or "no models",
    )
    return GpuService(arbiter, drivers, reading.name)
