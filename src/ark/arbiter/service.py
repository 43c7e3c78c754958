"""The arbiter as the gateway runs it: device, catalog and drivers from the config, then requests take leases.

The engines it manages are the Ollama engines on this machine and the embedded llama.cpp engine
(``[engines.NAME] gpu_managed``); their models are in its catalog with what ``/api/tags``, ``/api/show``
and ``/api/ps`` say (Ollama) or the GGUF headers say (embedded), and the models an engine already has
loaded at start are adopted, not loaded twice. A request for a model the catalog
does not know (another engine, or a model installed after start) is not arbitrated.

A :class:`Probe` reads the device and ComfyUI every second: ComfyUI's footprint and the memory used by
processes the arbiter does not manage go into every plan, and the device's temperature, power and
utilisation into the metrics.

Not wired yet (docs/arbiter.md): a refresh of the catalog when models are installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ark.arbiter.catalog import Entry, Facts, build, describe
from ark.arbiter.devices import Device, DeviceError, Reading, open_device
from ark.arbiter.drivers import ComfyDriver, DriverError, EmbeddedDriver, EngineDriver, OllamaDriver
from ark.arbiter.leases import Lease
from ark.arbiter.policy import GB, Comfy
from ark.arbiter.scheduler import Arbiter
from ark.config import Settings
from ark.engines.base import Engine
from ark.engines.ollama import OllamaEngine
from ark.periodic import every

PROBE_S = 1.0  # how often the device and ComfyUI are read
_LOOKUP_S = 2.0  # a request for a model the catalog does not know looks it up at most this often
_NOTICE = 256 * 1024**2  # a change in memory held by others this large makes the arbiter plan again

log = logging.getLogger("ark.arbiter")


class Probe:
    """The device and ComfyUI, read every :data:`PROBE_S`: the memory the arbiter does not own.

    ``external()`` is what the device says is used beyond the arbiter's own accounts (resident models,
    ComfyUI, memory holds): other processes, CUDA contexts, a desktop. On a virtual device nothing else exists.
    """

    def __init__(self, device: Device, reading: Reading, comfy: ComfyDriver | None) -> None:
        self.device, self.reading, self.comfy_driver = device, reading, comfy
        self.comfy: Comfy | None = None
        self.arbiter: Arbiter | None = None
        self._failing: set[str] = set()  # what failed at the last read (logged once, not every second)

    def external(self) -> int:
        if self.reading.kind == "virtual" or self.arbiter is None:
            return 0
        arbiter = self.arbiter
        # a ComfyUI job's memory shows in ComfyUI's own reading once loaded: its hold is not taken off again
        holds = sum(h.memory for h in arbiter.holds.values() if not (h.in_comfyui and self.comfy is not None))
        ours = sum(s.memory for s in arbiter.resident.values()) + holds
        return max(0, self.reading.used - ours - (self.comfy.used if self.comfy else 0))

    async def tick(self) -> None:
        before = (self.external(), self.comfy)
        with self._logged("device", DeviceError, OSError, ValueError, RuntimeError):
            self.reading = await asyncio.to_thread(self.device.read)
        if self.comfy_driver is not None:
            with self._logged("ComfyUI", DriverError):
                used = await self.comfy_driver.used()
                self.comfy = Comfy(used, self.comfy_driver.idle, await self.comfy_driver.busy())
        after = (self.external(), self.comfy)
        moved = abs(after[0] - before[0]) >= _NOTICE
        if self.arbiter is not None and (moved or before[1] != after[1]):
            # memory came back (or went), or ComfyUI's job ended (its models may be freed now): plan again
            self.arbiter.poke()

    @contextlib.contextmanager
    def _logged(self, what: str, *errors: type[BaseException]) -> Any:
        try:
            yield
        except errors as exc:
            if what not in self._failing:
                log.warning("GPU arbiter: reading %s failed: %s (the last reading stands)", what, exc)
            self._failing.add(what)
            if what == "ComfyUI":
                self.comfy = None  # ComfyUI that does not answer holds nothing we can free
        else:
            if what in self._failing:
                log.info("GPU arbiter: reading %s works again", what)
            self._failing.discard(what)

    def close(self) -> None:
        self.device.close()


class EngineDrivers:
    """One driver per engine; the arbiter's calls go to the engine that serves the model."""

    def __init__(
        self, by_model: dict[str, EngineDriver], comfy: ComfyDriver | None = None, engines: Sequence[EngineDriver] = ()
    ) -> None:
        self.by_model, self.comfy, self.engines = by_model, comfy, engines
        self.restarts = {d.name: 0 for d in engines}  # engine -> restarts because it stopped answering

    async def load(self, model: str) -> int | None:
        return await self.by_model[model].load(model)

    async def unload(self, model: str) -> None:
        await self.by_model[model].unload(model)

    async def free_comfy(self) -> None:
        if self.comfy is None:
            raise DriverError("no ComfyUI is configured ([images] comfyui_url or comfyui_path)")
        await self.comfy.free_comfy()

    async def heal(self, model: str) -> set[str] | None:
        """None when the engine of ``model`` answers. Else: free ComfyUI (VRAM pressure is the usual cause
        of the hang), restart the engine, wait until it answers, and return the models it had (all gone)."""
        driver = self.by_model[model]
        if await driver.alive():
            return None
        log.error("arbiter: engine %s stopped answering (/api/ps, %g s)", driver.name, driver.probe_timeout)
        if self.comfy is not None:
            try:
                log.warning("arbiter: freeing ComfyUI before restarting %s", driver.name)
                await self.comfy.free_comfy()
            except DriverError as exc:
                log.warning("arbiter: freeing ComfyUI failed (%s); restarting anyway", exc)
        self.restarts[driver.name] = self.restarts.get(driver.name, 0) + 1
        await driver.restart()
        return {m for m, d in self.by_model.items() if d is driver}

    def offloaded(self, model: str) -> tuple[int, int] | None:
        driver = self.by_model.get(model)
        return driver.offloaded(model) if driver is not None else None

    async def close(self) -> None:
        for driver in {id(d): d for d in [*self.by_model.values(), *self.engines]}.values():
            await driver.close()
        if self.comfy is not None:
            await self.comfy.close()


class GpuService:
    def __init__(
        self,
        arbiter: Arbiter,
        drivers: EngineDrivers,
        probe: Probe,
        *,
        settings: Settings | None = None,
        catalog: dict[str, Entry] | None = None,
    ) -> None:
        self.arbiter, self.drivers, self.probe = arbiter, drivers, probe
        self.device_name = probe.reading.name
        self._probing: asyncio.Task[None] | None = None
        self._settings = settings
        self._catalog = catalog if catalog is not None else {}  # the arbiter's own dict: refresh adds to it
        self._refreshed = 0.0

    async def refresh(self) -> list[str]:
        """Bring models installed (or removed) since the start into the catalog; returns the new ones.

        Removed models leave the catalog only when nothing holds or waits for them."""
        if self._settings is None:
            return []
        self._refreshed = asyncio.get_running_loop().time()
        added: list[str] = []
        for driver in self.drivers.engines:
            try:
                found = await driver.facts(known=set(self._catalog))
            except DriverError as exc:
                log.warning("GPU arbiter: listing the models of %s failed: %s", driver.name, exc)
                continue
            new = {name: fact for name, fact in found.items() if name not in self._catalog}
            for name, entry in _entries(self._settings, new, self.probe.reading.total).items():
                self._catalog[name] = entry
                self.drivers.by_model[name] = driver
                added.append(name)
                log.info("GPU arbiter: new model %s", describe(entry))
            for name in [n for n, d in self.drivers.by_model.items() if d is driver and n not in found]:
                if name not in self.arbiter.resident and not self.arbiter.queue_for(name):
                    self._catalog.pop(name, None)
                    del self.drivers.by_model[name]
                    log.info("GPU arbiter: model %s is gone from %s", name, driver.name)
        return added

    def start(self) -> None:
        self.arbiter.start()
        self._probing = asyncio.create_task(
            every(PROBE_S, self.probe.tick, log=log, failure="GPU arbiter: probing failed"), name="ark-gpu-probe"
        )

    async def lease(self, model: str, managed: bool = True) -> Lease | None:
        """A request's lease on ``model`` (resident until it ends); None when the arbiter does not manage it.
        A model of a ``managed`` engine that the catalog does not know yet (installed since) is looked up
        first, at most every :data:`_LOOKUP_S` seconds."""
        if model not in self.arbiter.catalog:
            if not managed or asyncio.get_running_loop().time() - self._refreshed < _LOOKUP_S:
                return None
            await self.refresh()
            if model not in self.arbiter.catalog:
                return None
        return await self.arbiter.acquire(model)

    async def close(self) -> None:
        if self._probing is not None:
            self._probing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probing
        await self.arbiter.close()
        await self.drivers.close()
        self.probe.close()

    async def free_comfy(self) -> dict[str, Any]:
        """An operator's `ark gpu free-comfyui`: unload ComfyUI's models, confirmed by its memory coming back."""
        comfy = self.drivers.comfy
        if comfy is None:
            raise DriverError("no ComfyUI is configured ([images] comfyui_url or comfyui_path)")
        before = await comfy.used()
        await comfy.free_comfy()
        after = await comfy.used()
        await self.probe.tick()
        return {"before_bytes": before, "after_bytes": after, "freed_bytes": max(0, before - after)}

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
        stats = arbiter.stats
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
                    # unrounded: a lease of 0.4 ms is not "no lease seen"
                    "expected_lease_s": state.expected_lease() if state is not None else None,
                    "priority": entry.info.priority.name.lower(),
                    "pinned": entry.info.pinned,
                    "large": entry.info.large,
                    "idle_timeout_s": entry.idle_timeout,
                    "offloaded": stats.offloaded.get(name, 0),
                }
            )
        used = sum(m["memory_bytes"] for m in models if m["resident"])
        stats = arbiter.stats
        reading, comfy = self.probe.reading, self.probe.comfy
        holds = arbiter.hold_status()
        return {
            "enabled": True,
            "device": self.device_name,
            "reading": {
                "kind": reading.kind,
                "index": reading.index,
                "total_bytes": reading.total,
                "used_bytes": reading.used,
                "temperature_c": reading.temperature_c,
                "power_w": reading.power_w,
                "utilization": reading.utilization,
            },
            "capacity_bytes": arbiter.capacity,
            "used_bytes": used,
            "comfyui": None
            if comfy is None
            else {"used_bytes": comfy.used, "idle_bytes": comfy.idle, "busy": comfy.busy},
            "external_bytes": self.probe.external(),
            "held_bytes": sum(h.memory for h in arbiter.holds.values()),
            "queue": len(arbiter.queue),
            "waiting": arbiter.queue_status(),  # the queue itself, first in line first
            "models": models,
            "holds": holds,
            "leases": holds,  # deprecated: the old name of "holds", kept for one release (docs/api.md)
            "restarts": dict(self.drivers.restarts),
            "stats": {
                "loads": stats.loads,
                "unloads": stats.unloads,
                "swaps": stats.swaps,
                "rejected": stats.rejected,
                "load_seconds": round(stats.load_seconds, 3),
                "leases": stats.wait_count,  # grants waited for: leases and memory holds (wait_seconds' count)
                "wait_seconds": round(stats.wait_seconds, 3),
                "wait_buckets": list(stats.wait_buckets),
                "holds_granted": stats.holds,
                "holds_reclaimed": stats.reclaimed,
                "leases_granted": stats.holds,  # deprecated: the old names of the two above, for one release
                "leases_reclaimed": stats.reclaimed,
            },
        }


def _open(settings: Settings) -> tuple[Device, Reading]:
    device = open_device(settings.gpu, cpu_engine=True)
    try:
        return device, device.read()
    except BaseException:
        device.close()
        raise


async def start(settings: Settings, engines: Sequence[Engine]) -> GpuService | None:
    """The arbiter for the managed engines, or None when there is nothing to manage (said in the log)."""
    managed = [e for e in engines if e.settings.is_gpu_managed]
    if not managed:
        return None
    try:  # an Ollama without a GPU runs on the CPU: then system memory is what to manage
        device, reading = await asyncio.to_thread(_open, settings)
    except DeviceError as exc:
        log.warning("GPU arbiter off: %s", exc)
        return None
    try:
        return await _build(settings, managed, device, reading)
    except BaseException:
        device.close()
        raise


def _entries(settings: Settings, facts: dict[str, Facts], device_total: int) -> dict[str, Entry]:
    """Catalog entries for the models an engine reported, with what the config says of them."""
    for model in settings.models:  # a context fixed in the config is the one the engine loads with
        if model.num_ctx and model.id in facts:
            facts[model.id] = replace(facts[model.id], n_ctx=model.num_ctx)
    return build(
        (m for m in settings.models if m.id in facts),
        facts,
        device_total=device_total,
        large_fraction=settings.gpu.large_fraction,
    )


def _driver(engine: Engine) -> EngineDriver:
    settings = engine.settings
    if settings.kind == "embedded":
        return EmbeddedDriver(engine, n_ctx=settings.n_ctx, deadline=settings.first_token_timeout)  # type: ignore[arg-type]
    return OllamaDriver(
        engine.http if isinstance(engine, OllamaEngine) else settings.url,  # the engine's own client
        deadline=settings.first_token_timeout,
        name=engine.name,
        restart_command=settings.restart_command,
        restart_timeout=settings.restart_timeout_s,
        probe_timeout=min(5.0, settings.first_token_timeout),
    )


async def _build(settings: Settings, managed: Sequence[Engine], device: Device, reading: Reading) -> GpuService:
    facts: dict[str, Facts] = {}
    by_model: dict[str, EngineDriver] = {}
    answered: list[EngineDriver] = []
    for engine in managed:
        driver = _driver(engine)
        try:
            found = await driver.facts()
        except DriverError:
            log.info("GPU arbiter: engine %s did not answer; its models are not arbitrated until it does", engine.name)
            await driver.close()
            continue
        engine.managed = True
        answered.append(driver)
        facts.update(found)
        by_model.update(dict.fromkeys(found, driver))
    catalog = _entries(settings, facts, reading.total)
    capacity = reading.total - int(settings.gpu.reserve_gb * GB)
    comfy = None
    comfy_url = settings.gpu.comfyui_url or settings.images.comfyui()  # the one images run on, by default
    if comfy_url:
        comfy = ComfyDriver(comfy_url, idle=int(settings.gpu.comfyui_idle_gb * GB))
    drivers = EngineDrivers(by_model, comfy, answered)
    probe = Probe(device, reading, comfy)
    arbiter = Arbiter(
        catalog,
        drivers,
        capacity=capacity,
        max_wait=settings.gpu.max_wait_s,
        queue_size=settings.gpu.queue_size,
        comfy=lambda: probe.comfy,
        external=probe.external,
        require_full_gpu=settings.gpu.require_full_gpu,
        swap_delay=settings.gpu.swap_delay_s,
    )
    probe.arbiter = arbiter
    for driver in answered:
        driver.watch(arbiter.forget)
    await probe.tick()  # ComfyUI's footprint before the first plan
    for name, fact in facts.items():
        if fact.reported is not None:
            arbiter.adopt(name, fact.reported)
    service = GpuService(arbiter, drivers, probe, settings=settings, catalog=catalog)
    service.start()
    log.info(
        "GPU arbiter on %s: %.1f GB to plan with; %s",
        reading.name,
        capacity / GB,
        "; ".join(describe(e) for e in catalog.values()) or "no models",
    )
    return service
