"""Replay a workload on a virtual GPU with the real scheduler: what ``ark gpu simulate`` runs.

The scheduler under test is the gateway's own :class:`~ark.arbiter.scheduler.Arbiter`
(``policy="ark"``) or the reference :class:`~ark.arbiter.fifo.FifoScheduler`
modelled on Ollama's (``policy="fifo"``); both are driven the same way and measured
the same way. They run on a :class:`~ark.arbiter.virtual_loop.VirtualEventLoop`, so
hours of traffic take a fraction of a second and every time is exact.

What is simulated:

* each request arrives at its ``t``, asks for a lease on its model, and keeps it
  while the engine serves it: it waits for one of the model's ``parallel`` slots,
  then takes ``prompt_tokens / prefill_tokens_per_second + max_tokens /
  tokens_per_second`` seconds (every request generates all of its ``max_tokens``);
* a hold line (a ComfyUI or render job) asks for ``memory_gb`` through ``hold`` and
  gives it back after its ``seconds``;
* the engine (:class:`SimDriver`) loads a model in its ``load_seconds`` and unloads
  it in the box's ``unload_seconds``.

Measured: a request's *wait* is the time from its arrival to its lease (what the
GPU scheduling cost it); its *latency* adds the slot queue and the generation. A
*swap* is a load (or a memory hold granted) that needed an unload first, as both
schedulers count it. Percentiles are nearest-rank.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ark.arbiter.drivers import Driver
from ark.arbiter.fifo import FifoScheduler
from ark.arbiter.leases import Releasable, Stats
from ark.arbiter.policy import GB, Priority
from ark.arbiter.scheduler import Arbiter
from ark.arbiter.virtual_loop import LoopClock, VirtualEventLoop
from ark.arbiter.workload import Box, HoldJob, Request, Workload
from ark.errors import ModelWontFit, QueueFull

HOLD_SLACK = 1.0  # a hold's cap is its seconds plus this: the simulator's release ends it, not a reclaim


class Scheduler(Protocol):
    """What the simulator drives: the arbiter, or the fifo reference policy."""

    stats: Stats

    def start(self) -> None: ...

    async def close(self) -> None: ...

    async def acquire(self, model: str) -> Releasable: ...

    async def hold(self, holder: str, memory: int, priority: Priority = ..., seconds: float = ...) -> Releasable: ...


def ark_scheduler(box: Box, driver: Driver, **options: Any) -> Scheduler:
    """The gateway's arbiter on the simulated box; ``options`` override the box's settings (``swap_delay``)."""
    return Arbiter(
        box.catalog,
        driver,
        capacity=box.capacity,
        max_wait=box.max_wait_s,
        queue_size=box.queue_size,
        clock=LoopClock(),
        **{"swap_delay": box.swap_delay_s, **options},
    )


def _fifo(box: Box, driver: Driver) -> Scheduler:
    return FifoScheduler(box.catalog, driver, capacity=box.capacity, queue_size=box.queue_size, clock=LoopClock())


POLICIES: dict[str, Callable[[Box, Driver], Scheduler]] = {"ark": ark_scheduler, "fifo": _fifo}


@dataclass(frozen=True, slots=True)
class Span:
    """A stretch of time something held GPU memory: a model (load start to unload end) or a memory hold."""

    name: str
    kind: str  # "model" or "hold"
    start: float
    end: float


class SimDriver:
    """The engine, simulated: loads and unloads take their time on the (virtual) loop, and are recorded."""

    def __init__(self, box: Box) -> None:
        self.box = box
        self.spans: list[Span] = []
        self.loads: dict[str, int] = {}
        self._since: dict[str, float] = {}

    async def load(self, model: str) -> int | None:
        self._since[model] = asyncio.get_running_loop().time()
        self.loads[model] = self.loads.get(model, 0) + 1
        await asyncio.sleep(self.box.engines[model].load_seconds)
        return None

    async def unload(self, model: str) -> None:
        await asyncio.sleep(self.box.unload_seconds)
        self.spans.append(Span(model, "model", self._since.pop(model), asyncio.get_running_loop().time()))

    async def free_comfy(self) -> None:
        return None

    def offloaded(self, model: str) -> tuple[int, int] | None:
        return None

    async def heal(self, model: str) -> set[str] | None:
        return None  # the simulated engine always answers

    def finish(self, end: float) -> None:
        """Models still loaded when the simulation ends are resident to its end."""
        self.spans += [Span(model, "model", since, end) for model, since in self._since.items()]
        self._since.clear()


@dataclass(frozen=True, slots=True)
class _Outcome:
    job: Request | HoldJob
    arrived: float
    granted: float | None  # None: refused (queue full, never fits)
    done: float


@dataclass(frozen=True)
class ModelResult:
    requests: int
    rejected: int
    loads: int
    wait_p95_s: float
    wait_max_s: float


@dataclass(frozen=True)
class Result:
    """What one run measured; :meth:`to_json` is ``ark gpu simulate --json``'s output."""

    policy: str
    requests: int
    completed: int
    rejected: int
    swaps: int
    loads: int
    unloads: int
    load_seconds_total: float
    wait_p50_s: float
    wait_p95_s: float
    wait_max_s: float
    wait_mean_s: float
    latency_p50_s: float
    latency_p95_s: float
    makespan_s: float
    holds: int
    holds_rejected: int
    hold_wait_p95_s: float
    hold_wait_max_s: float
    max_wait_s: float  # the box's [gpu] max_wait_s
    wait_bound_s: float  # max_wait_s plus one swap (an unload and the slowest load)
    capacity_gb: float
    errors: int = 0  # the scheduler's failed steps (logged errors): each one is a bug to look at
    first_error: str = ""
    models: dict[str, ModelResult] = field(default_factory=dict)
    spans: tuple[Span, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if name == "models":
                out[name] = {m: {k: _round(v) for k, v in vars_of(r).items()} for m, r in value.items()}
            elif name != "spans":
                out[name] = _round(value)
        for old, new in _OLD_KEYS.items():  # deprecated, for one release
            out[old] = out[new]
        return out


# the memory holds' figures by their old names, from before "lease" meant only a request's lease on its model
_OLD_KEYS = {
    "leases": "holds",
    "leases_rejected": "holds_rejected",
    "lease_wait_p95_s": "hold_wait_p95_s",
    "lease_wait_max_s": "hold_wait_max_s",
}


def vars_of(result: ModelResult) -> dict[str, Any]:
    return {name: getattr(result, name) for name in result.__dataclass_fields__}


def _round(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else value


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest rank: the smallest value with at least ``p`` percent of the values at or below it (0 when none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def simulate(workload: Workload, box: Box, policy: str = "ark") -> Result:
    """Run ``workload`` on ``box`` under ``policy`` ("ark" or "fifo"), on a fresh virtual loop.

    Call it from synchronous code (it runs its own event loop). The arbiter's log is
    quietened to errors meanwhile: a simulation makes thousands of decisions."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}: expected one of {', '.join(POLICIES)}")
    logger, errors = logging.getLogger("ark.arbiter"), _Errors()
    level = logger.level
    logger.setLevel(logging.ERROR)
    logger.addHandler(errors)
    try:
        result: Result = VirtualEventLoop().run(_run(workload, box, policy))
    finally:
        logger.removeHandler(errors)
        logger.setLevel(level)
    return replace(result, errors=errors.count, first_error=errors.first)


class _Errors(logging.Handler):
    """Counts the scheduler's errors (a step that failed) and keeps the first: a result to report, not noise."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count, self.first = 0, ""

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if not self.first:
            cause = f": {record.exc_info[1]!r}" if record.exc_info and record.exc_info[1] else ""
            now = asyncio.get_running_loop().time()  # emitted from the simulation's loop: virtual time
            self.first = f"at t={now:.1f} s: {record.getMessage()}{cause}"


async def _run(workload: Workload, box: Box, policy: str) -> Result:
    loop = asyncio.get_running_loop()
    driver = SimDriver(box)
    scheduler = POLICIES[policy](box, driver)
    scheduler.start()
    slots = {name: asyncio.Semaphore(engine.parallel) for name, engine in box.engines.items()}
    outcomes: list[_Outcome] = []
    tasks: list[asyncio.Task[None]] = []
    for job in workload.jobs:  # arrivals in order: tasks started at the same instant run in file order
        if job.t > loop.time():
            await asyncio.sleep(job.t - loop.time())
        if isinstance(job, Request):
            tasks.append(asyncio.create_task(_request(scheduler, box, job, slots[job.model], outcomes)))
        else:
            tasks.append(asyncio.create_task(_hold(scheduler, job, outcomes)))
    await asyncio.gather(*tasks)
    end = loop.time()
    await scheduler.close()
    driver.finish(end)
    return _result(policy, box, scheduler.stats, driver, outcomes)


async def _request(scheduler: Scheduler, box: Box, job: Request, slot: asyncio.Semaphore, out: list[_Outcome]) -> None:
    loop = asyncio.get_running_loop()
    arrived = loop.time()
    try:
        lease = await scheduler.acquire(job.model)
    except (QueueFull, ModelWontFit):
        out.append(_Outcome(job, arrived, None, loop.time()))
        return
    granted = loop.time()
    try:
        async with slot:
            await asyncio.sleep(box.engines[job.model].generation_seconds(job))
    finally:
        lease.release()
    out.append(_Outcome(job, arrived, granted, loop.time()))


async def _hold(scheduler: Scheduler, job: HoldJob, out: list[_Outcome]) -> None:
    loop = asyncio.get_running_loop()
    arrived = loop.time()
    try:
        hold = await scheduler.hold(job.holder, job.memory, job.priority, job.seconds + HOLD_SLACK)
    except (QueueFull, ModelWontFit):
        out.append(_Outcome(job, arrived, None, loop.time()))
        return
    granted = loop.time()
    try:
        await asyncio.sleep(job.seconds)
    finally:
        hold.release()
    out.append(_Outcome(job, arrived, granted, loop.time()))


def _result(policy: str, box: Box, stats: Stats, driver: SimDriver, outcomes: list[_Outcome]) -> Result:
    requests = [o for o in outcomes if isinstance(o.job, Request)]
    served = [o for o in requests if o.granted is not None]
    waits = [o.granted - o.arrived for o in served if o.granted is not None]
    latencies = [o.done - o.arrived for o in served]
    holds = [o for o in outcomes if isinstance(o.job, HoldJob)]
    hold_waits = [o.granted - o.arrived for o in holds if o.granted is not None]
    spans = [*driver.spans, *(_hold_span(o) for o in holds if o.granted is not None)]
    slowest_load = max((e.load_seconds for e in box.engines.values()), default=0.0)
    return Result(
        policy=policy,
        requests=len(requests),
        completed=len(served),
        rejected=len(requests) - len(served),
        swaps=stats.swaps,
        loads=sum(driver.loads.values()),
        unloads=stats.unloads,
        load_seconds_total=sum(box.engines[m].load_seconds * n for m, n in driver.loads.items()),
        wait_p50_s=percentile(waits, 50),
        wait_p95_s=percentile(waits, 95),
        wait_max_s=max(waits, default=0.0),
        wait_mean_s=sum(waits) / len(waits) if waits else 0.0,
        latency_p50_s=percentile(latencies, 50),
        latency_p95_s=percentile(latencies, 95),
        makespan_s=max((o.done for o in outcomes), default=0.0) - min((o.arrived for o in outcomes), default=0.0),
        holds=len(holds),
        holds_rejected=sum(o.granted is None for o in holds),
        hold_wait_p95_s=percentile(hold_waits, 95),
        hold_wait_max_s=max(hold_waits, default=0.0),
        max_wait_s=box.max_wait_s,
        wait_bound_s=box.max_wait_s + box.unload_seconds + slowest_load,
        capacity_gb=box.capacity / GB,
        models=_per_model(box, driver, requests),
        spans=tuple(sorted(spans, key=lambda s: (s.start, s.name))),
    )


def _hold_span(outcome: _Outcome) -> Span:
    assert isinstance(outcome.job, HoldJob) and outcome.granted is not None
    return Span(outcome.job.holder, "hold", outcome.granted, outcome.done)


def _per_model(box: Box, driver: SimDriver, requests: list[_Outcome]) -> dict[str, ModelResult]:
    out: dict[str, ModelResult] = {}
    for name in sorted(box.catalog):
        mine = [o for o in requests if isinstance(o.job, Request) and o.job.model == name]
        if not mine and not driver.loads.get(name):
            continue
        waits = [o.granted - o.arrived for o in mine if o.granted is not None]
        out[name] = ModelResult(
            len(mine), len(mine) - len(waits), driver.loads.get(name, 0), percentile(waits, 95), max(waits, default=0.0)
        )
    return out
