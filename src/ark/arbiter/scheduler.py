"""The scheduler: one asyncio task owns the device's state and decides who runs.

Every request takes a :class:`Lease` on its model for its whole life, so
nothing is unloaded under it. A request for a resident model gets its lease at
once, unless that model is draining (below). A request for a model that is not
resident queues; the owner task takes the first waiter (the *head*) and carries
out what :func:`ark.arbiter.policy.plan` says through the :class:`Driver`.

The rules (docs/arbiter.md, "The scheduler"):

* Order: a waiter that is due (it has waited ``max_wait`` less the drain lead,
  below) goes before every one that is not, the oldest first; the others by
  priority, then the oldest.
* Batching with a bound: while the head's swap must wait for models that are
  serving requests, those models keep taking new ones until the head has waited
  ``max_wait`` less the drain lead (how long their leases are expected to last,
  at most half of ``max_wait``); then they take no new lease (they drain)
  and the swap follows, by ``max_wait`` when the leases last as expected.
  They do not drain while the head waits for memory they would not give back
  (a memory hold, other processes, a ComfyUI job).
* The swap delay: a swap that would unload an idle model in demand (two requests
  served in the last ``max_wait``, the latest less than ``swap_delay`` ago) waits
  until the head has waited ``swap_delay`` (at most until it is due); meanwhile
  that model serves what comes.
* Backfill: while the head waits, a waiter whose model fits without unloading
  anything is brought in; one that would keep the head out only before the head
  is due (or while the head waits for memory no model holds), and never a
  memory hold.

Idle models unload after their ``idle_timeout``. The queue is bounded: a full
queue refuses at once with a ``Retry-After``.

Memory holds (:meth:`Arbiter.hold`) set memory aside for GPU users that are
not models (a Blender render, a ComfyUI job): they queue like requests, the
same plan makes room for them, and one that outlives its ``seconds`` is
reclaimed.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ark.arbiter.catalog import Entry
from ark.arbiter.drivers import Driver, DriverError
from ark.arbiter.leases import Clock, Hold, Lease, MonotonicClock, OwnerTask, Stats
from ark.arbiter.policy import (
    GB,
    Action,
    Comfy,
    FreeComfy,
    Load,
    ModelInfo,
    Priority,
    Reject,
    Resident,
    Snapshot,
    Unload,
    Wait,
    in_the_way,
    lets_in,
    plan,
)
from ark.errors import ApiError, EngineCrashed, EngineDown, ModelBusy, ModelOffloaded, ModelWontFit, QueueFull

log = logging.getLogger("ark.arbiter")


@dataclass(eq=False)
class _Waiter:
    model: str
    since: float
    priority: int
    future: asyncio.Future[Any]  # a Lease, or the Hold below once granted
    hold: Hold | None = None


@dataclass
class _Model:
    entry: Entry
    leases: int = 0
    last_used: float = 0.0
    memory: int = 0  # what it takes: the catalog's figure, or what the engine reported
    served: deque[float] = field(default_factory=lambda: deque(maxlen=2))  # when its latest two leases ended
    lease_lengths: deque[float] = field(default_factory=lambda: deque(maxlen=LEASES_SEEN))  # the latest (s)

    def expected_lease(self) -> float:
        """How long a lease on this model lasts, by what its latest leases took: the 90th percentile."""
        if not self.lease_lengths:
            return 0.0
        ordered = sorted(self.lease_lengths)
        return ordered[math.ceil(0.9 * len(ordered)) - 1]


LEAD_SHARE = 0.5  # a drain starts at most this share of max_wait early: the model in the way keeps half its turn
LEASES_SEEN = 32  # lease lengths remembered per model: what the drain lead is estimated from


class Arbiter(OwnerTask):
    task_name = "ark-arbiter"

    def __init__(
        self,
        catalog: Mapping[str, Entry],
        driver: Driver,
        *,
        capacity: int,
        max_wait: float,
        queue_size: int,
        comfy: Callable[[], Comfy | None] = lambda: None,
        external: Callable[[], int] = lambda: 0,
        clock: Clock | None = None,
        require_full_gpu: bool = False,
        swap_delay: float = 0.0,
    ) -> None:
        self.catalog = catalog
        self.driver = driver
        self.capacity = capacity
        self.max_wait = max_wait
        self.queue_size = queue_size
        self.clock: Clock = clock or MonotonicClock()
        self.require_full_gpu = require_full_gpu
        self.swap_delay = swap_delay
        self._wakeups: list[float] = []  # when the last round's decisions change (a swap held back may go)
        self._lead = 0.0  # the drain lead (_drain_lead), as of the current round
        self._comfy, self._external = comfy, external
        self.resident: dict[str, _Model] = {}
        self.queue: list[_Waiter] = []
        self.draining: set[str] = set()  # models that take no new leases until a swap is done
        self.holds: dict[str, Hold] = {}  # memory holds granted, by id
        self.stats = Stats()
        self._wake = asyncio.Event()
        self._unloads: list[tuple[str, asyncio.Future[bool]]] = []  # asked by an operator
        self._suspects: set[str] = set()  # models whose engine timed out on a request
        self._restarted_for: set[str] = set()  # models whose failed load already cost one restart

    # -- the request side -------------------------------------------------------------------------
    async def acquire(self, model: str) -> Lease:
        """Wait until ``model`` is resident and lease it; raises for a full queue or a model that cannot fit."""
        entry = self.catalog.get(model)
        if entry is None:
            raise KeyError(model)
        now = self.clock.now()
        state = self.resident.get(model)
        if state is not None and model not in self.draining and not any(w.model == model for w in self.queue):
            return self._grant(state, now, now)
        return await self._enqueue(_Waiter(model, now, int(entry.info.priority), self._future()))  # type: ignore[no-any-return]

    async def hold(
        self,
        holder: str,
        memory: int,
        priority: Priority = Priority.MEDIUM,
        seconds: float = 600.0,
        *,
        in_comfyui: bool = False,
    ) -> Hold:
        """Set ``memory`` bytes aside for ``holder`` (a render, an image job) for at most ``seconds``.

        Waits, like a request, until the plan has made room (idle models may go); raises for a full
        queue, and with the numbers for memory the device can never give. A hold ``in_comfyui`` is for a
        ComfyUI job: what ComfyUI loads for it is inside the hold, not counted again (:meth:`comfy_view`)."""
        if memory <= 0 or seconds <= 0:
            raise ValueError("a memory hold needs a positive memory and time")
        hold = Hold(holder, memory, priority, seconds, self._release_hold, in_comfyui)
        waiter = _Waiter(hold.name, self.clock.now(), int(priority), self._future(), hold)
        return await self._enqueue(waiter)  # type: ignore[no-any-return]

    def _future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    async def _enqueue(self, waiter: _Waiter) -> Any:
        if len(self.queue) >= self.queue_size:
            raise QueueFull(f"{len(self.queue)} requests are waiting for the GPU; retry shortly.", retry_after=5.0)
        self.queue.append(waiter)
        self._wake.set()
        return await self.granted(waiter.future, lambda: self._withdraw(waiter))

    def _withdraw(self, waiter: _Waiter) -> None:
        if waiter in self.queue:  # else the owner task already answered it
            self.queue.remove(waiter)

    async def unload(self, model: str) -> bool:
        """An operator's unload: done by the owner task between its decisions. False: it was not loaded."""
        entry = self.catalog.get(model)
        if entry is None:
            raise KeyError(model)
        if entry.info.pinned:
            raise ModelBusy(f"The model {model} is pinned: it stays loaded.", param="model")
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._unloads.append((model, done))
        self._wake.set()
        return await done

    def queue_status(self) -> list[dict[str, Any]]:
        """What waits for the GPU in the order it will be served (overdue first, then by priority, then the
        oldest): the model (or a memory hold's holder), its priority, whether it is a hold, how long it waited."""
        now = self.clock.now()
        return [
            {
                "model": w.hold.holder if w.hold is not None else w.model,
                "priority": Priority(w.priority).name.lower(),
                "hold": w.hold is not None,
                "waited_s": round(now - w.since, 3),
            }
            for w in self._order(now)
        ]

    def queue_for(self, model: str) -> list[_Waiter]:
        return [w for w in self.queue if w.model == model]

    def _grant(self, state: _Model, since: float, now: float) -> Lease:
        state.leases += 1
        self.stats.record_wait(now - since)
        return Lease(state.entry.info.name, now, self._release, on=state)

    def _release(self, lease: Lease) -> None:
        state = self.resident.get(lease.model)
        if state is not None and state is lease.on:  # not a lease on a load an engine restart took away
            state.leases -= 1
            state.last_used = self.clock.now()
            state.served.append(state.last_used)
            state.lease_lengths.append(state.last_used - lease.granted)
        self._wake.set()

    def hold_status(self) -> list[dict[str, Any]]:
        """The memory holds: granted ones, then those waiting."""
        now = self.clock.now()
        waiting = [w.hold for w in self.queue if w.hold is not None]
        return [h.describe(now) for h in [*self.holds.values(), *waiting]]

    def _release_hold(self, hold: Hold) -> None:
        if self.holds.pop(hold.id, None) is not None:
            log.info("arbiter: %s gave back its %.1f GB", hold.name, hold.memory / GB)
        self._wake.set()

    def suspect(self, model: str) -> None:
        """A request to ``model`` timed out: the owner task checks its engine (and heals it if it hangs)."""
        if model in self.catalog:
            self._suspects.add(model)
            self._wake.set()

    def poke(self) -> None:
        """Something outside changed (memory came back): plan again."""
        self._wake.set()

    def adopt(self, model: str, memory: int | None = None) -> bool:
        """Count a model the engine already has loaded (found at start): resident, idle, never loaded twice."""
        entry = self.catalog.get(model)
        if entry is None or model in self.resident:
            return False
        self.resident[model] = _Model(entry, 0, self.clock.now(), memory or entry.info.memory)
        self._wake.set()
        return True

    def forget(self, model: str) -> None:
        """The engine lost ``model`` by itself (its worker process died): it and its memory are gone.

        Leases granted on it end against the load they were granted on, never a later one."""
        state = self.resident.pop(model, None)
        self.draining.discard(model)
        if state is not None:
            log.warning("arbiter: %s is gone with its engine worker (%d request(s) on it)", model, state.leases)
        self._wake.set()

    # -- the owner task ---------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.step()
            except Exception:
                log.exception("arbiter: a step failed; the queue stays")
            await self.clock.wait(self._wake, self._next_deadline())

    def comfy_view(self) -> Comfy | None:
        """ComfyUI as plans count it: its use less what its jobs' memory holds already count (a job loads its
        model into the memory held for it), never below its idle footprint, so a job's memory is counted
        once; and busy while a job's hold is out (ComfyUI frees nothing before its job ends, and its busy
        flag is read only once a second)."""
        comfy = self._comfy()
        inside = sum(h.memory for h in self.holds.values() if h.in_comfyui)
        if comfy is None or not inside:
            return comfy
        return replace(comfy, used=max(comfy.idle, comfy.used - inside), busy=True)

    def snapshot(self) -> Snapshot:
        return Snapshot(
            self.capacity,
            tuple(Resident(replace_memory(s.entry, s.memory), s.leases, s.last_used) for s in self.resident.values()),
            self.comfy_view(),
            self._external(),
            sum(h.memory for h in self.holds.values()),
        )

    async def step(self) -> None:
        """One round of decisions: serve what is resident, bring in the next model, unload idle ones."""
        now = self.clock.now()
        suspects, self._suspects = self._suspects, set()
        for model in suspects:
            try:
                await self._recover(model)
            except DriverError as exc:
                log.error("arbiter: %s", exc)
        unloads, self._unloads = self._unloads, []
        for model, done in unloads:
            state = self.resident.get(model)
            if state is None:
                done.set_result(False)
            elif state.leases:
                done.set_exception(ModelBusy(f"The model {model} is serving {state.leases} request(s).", param="model"))
            else:
                log.info("arbiter: unloading %s: asked by an operator", model)
                try:
                    await self._unload(model)
                except DriverError as exc:
                    done.set_exception(EngineDown(f"Unloading {model} failed: {exc}", retry_after=30.0))
                else:
                    done.set_result(True)
        now = self.clock.now()  # a recovery or an unload above may have taken a while
        for hold in [h for h in self.holds.values() if h.expires is not None and h.expires <= now]:
            log.warning(
                "arbiter: %s outlived its %.0f s: its %.1f GB are taken back", hold.name, hold.seconds, hold.memory / GB
            )
            self.holds.pop(hold.id)
            self.stats.reclaimed += 1
        for waiter in list(self.queue):  # resident and not draining: served now
            state = self.resident.get(waiter.model)
            if state is not None and waiter.model not in self.draining:
                self.queue.remove(waiter)
                if not waiter.future.done():
                    waiter.future.set_result(self._grant(state, waiter.since, now))
        self._wakeups = []
        self._lead = self._drain_lead()
        if self.queue:
            await self._schedule(now)
        else:
            self._drain(set())
        await self._unload_idle(now)

    def _order(self, now: float) -> list[_Waiter]:
        # a request that has waited max_wait goes before every one that has not (the oldest first among them):
        # the bound holds for every priority; the others by priority, then the oldest
        def key(w: _Waiter) -> tuple[bool, int, float]:
            overdue = now >= self._due(w)
            return (not overdue, 0 if overdue else -w.priority, w.since)

        return sorted(self.queue, key=key)

    def _due(self, waiter: _Waiter) -> float:
        """When the models in the way of ``waiter`` stop taking leases, so that the leases already given end by
        the time it has waited max_wait: max_wait after it came, less the drain lead (the same for every waiter)."""
        return waiter.since + self.max_wait - self._lead

    def _drain_lead(self) -> float:
        """How long a drain is expected to take: the longest expected lease among the resident models, at most
        LEAD_SHARE of max_wait (the model in the way keeps half its turn even when its answers are long).

        All resident models, not only those in the way of a waiter: measured both ways (docs/arbiter.md), this
        one kept more waits within max_wait plus one swap; a long-serving model beside the one in the way costs
        some batching."""
        leases = (s.expected_lease() for s in self.resident.values() if not s.entry.info.pinned)
        return min(LEAD_SHARE * self.max_wait, max(leases, default=0.0))

    def _info(self, waiter: _Waiter) -> ModelInfo:
        if waiter.hold is not None:
            return ModelInfo(waiter.hold.name, waiter.hold.memory, waiter.hold.priority)
        entry = self.catalog[waiter.model]
        return replace_memory(entry, self._memory(entry))

    async def _schedule(self, now: float) -> None:
        """Bring in the first waiter (the head), or let it wait and bring in others that fit meanwhile."""
        order = self._order(now)
        # a request for a draining model waits for that drain to end: the head is what the drain is for
        head = next((w for w in order if w.model not in self.draining), order[0])
        info, snapshot = self._info(head), self.snapshot()
        actions = plan(snapshot, info)
        if not actions:  # every waiter is for a draining model: what it drained for has left the queue
            self._drain(set())
            return
        if isinstance(actions[0], Reject):
            self._reject(head, actions[0])
            return
        overdue = now >= self._due(head)
        if isinstance(actions[0], Wait):
            # batching with a bound: the models in the way keep taking requests until the head has waited
            # max_wait, then drain; not while the head waits for memory that is not theirs to give back
            blockers = {b for b in actions[0].blockers if b in self.resident}
            self._drain(blockers if overdue and lets_in(snapshot, info, blockers) else set())
        elif self._hold_back(head, actions, now):
            self._drain(set())
        else:
            await self._swap_for(head, actions)
            return
        await self._backfill(order, head, info, snapshot, overdue)

    def _drain(self, models: set[str]) -> None:
        """From now on ``models`` take no new lease; a model that no longer drains serves its queue next round."""
        if self.draining - models:
            self._wake.set()
        self.draining = models

    def _hold_back(self, head: _Waiter, actions: list[Action], now: float) -> bool:
        """The swap delay: a swap that would unload an idle model in demand (it served two requests in the last
        max_wait, the latest less than swap_delay ago) waits until the head has waited swap_delay (at most
        until it is due), or until that model is no longer in demand; meanwhile it serves what comes."""
        ends = [
            min(s.served[-1] + self.swap_delay, s.served[0] + self.max_wait)
            for s in (self.resident[a.model] for a in actions if isinstance(a, Unload))
            if len(s.served) == 2
        ]
        until = min(min(head.since + self.swap_delay, self._due(head)), max(ends, default=now))
        if now >= until:
            return False
        self._wakeups.append(until)
        return True

    async def _backfill(
        self, order: list[_Waiter], head: _Waiter, info: ModelInfo, snapshot: Snapshot, overdue: bool
    ) -> None:
        """While the head waits, bring in a waiter that fits without unloading anything. One that would keep the
        head out (it takes memory the head needs once what holds it now is back) goes only before the head is
        due or while the head waits for memory no model holds (it drains with the others once that is back),
        and never as a memory hold, which cannot drain."""
        outside = not lets_in(snapshot, info, set(self.resident))  # it waits for memory no model holds
        tried = {head.model, *self.draining}
        for waiter in order:
            if waiter.model in tried:
                continue
            tried.add(waiter.model)
            other = self._info(waiter)
            actions = plan(snapshot, other)
            if len(actions) != 1 or not isinstance(actions[0], Load):
                continue
            if ((overdue and not outside) or waiter.hold is not None) and in_the_way(snapshot, info, other):
                continue
            await self._swap_for(waiter, actions)
            return

    def _reject(self, waiter: _Waiter, reject: Reject) -> None:
        self.stats.rejected += 1
        reason = reject.reason
        if waiter.hold is not None:
            reason = reason.replace(f"model {waiter.hold.name}", f"a memory hold for {waiter.hold.holder}", 1)
        self._fail(waiter.model, ModelWontFit(reason, param="memory_gb" if waiter.hold else "model"))
        self._wake.set()  # the rest of the queue: in the next round

    async def _swap_for(self, waiter: _Waiter, actions: list[Action]) -> None:
        # the models this plan unloads take no lease from here on: the actions await, and a request that came
        # in between would otherwise get a lease on a model about to go; those draining for the head (a backfill
        # loads while they drain) go on draining
        unloads, draining = {a.model for a in actions if isinstance(a, Unload)}, self.draining
        self.draining = draining | unloads
        if unloads:
            self.stats.swaps += 1
        try:
            await self._carry_out(actions, waiter)
        except DriverError as exc:  # an unload or ComfyUI's /free failed: what needed the room cannot go now
            log.error("arbiter: making room for %s failed: %s", waiter.model, exc)
            self._fail(waiter.model, EngineDown(f"Making room for {waiter.model} failed: {exc}", retry_after=30.0))
        finally:
            self.draining = draining - unloads
        self._wake.set()  # serve the new resident's queue in the next round

    async def _carry_out(self, actions: list[Action], waiter: _Waiter) -> None:
        hold = waiter.hold
        for action in actions:
            if isinstance(action, FreeComfy):
                log.info("arbiter: freeing ComfyUI (%d bytes) for %s", action.frees, waiter.model)
                await self.driver.free_comfy()
            elif isinstance(action, Unload):
                log.info("arbiter: unloading %s: %s", action.model, action.reason)
                await self._unload(action.model)
            elif isinstance(action, Load) and hold is not None:
                hold.granted, hold.expires = self.clock.now(), self.clock.now() + hold.seconds
                self.holds[hold.id] = hold
                self.stats.holds += 1
                if waiter in self.queue:
                    self.queue.remove(waiter)
                if waiter.future.done():  # its caller is gone
                    self.holds.pop(hold.id)
                else:
                    self.stats.record_wait(hold.granted - waiter.since)
                    waiter.future.set_result(hold)
                log.info("arbiter: %s holds %.1f GB for at most %.0f s", hold.name, hold.memory / GB, hold.seconds)
            elif isinstance(action, Load):
                entry = self.catalog[waiter.model]
                started = self.clock.now()
                log.info("arbiter: loading %s", action.model)
                try:
                    reported = await self.driver.load(action.model)
                except DriverError as exc:
                    await self._load_failed(action.model, exc)
                    return
                self._restarted_for.discard(action.model)
                self.stats.loads += 1
                self.stats.load_seconds += self.clock.now() - started
                self.resident[action.model] = _Model(
                    entry, 0, self.clock.now(), reported if reported else self._memory(entry)
                )
                await self._check_offload(action.model)

    async def _load_failed(self, model: str, error: DriverError) -> None:
        """A load failed: when the engine hangs, restart it once and let the queue try again; else 503."""
        log.error("arbiter: loading %s failed: %s", model, error)
        self.stats.load_failures += 1
        self.stats.failed_loads.append((model, str(error)))
        if model not in self._restarted_for:
            try:
                if await self._recover(model):
                    self._restarted_for.add(model)  # the queue stays: the next round loads on the fresh engine
                    return
            except DriverError as exc:
                self._fail(
                    model,
                    EngineDown(
                        f"The engine serving {model} stopped answering and could not be restarted: {exc}",
                        retry_after=30.0,
                    ),
                )
                return
        self._restarted_for.discard(model)
        if isinstance(error.__cause__, EngineCrashed):  # its worker died: said as such, and the next try is soon
            self._fail(model, error.__cause__)
            return
        self._fail(model, EngineDown(f"The engine could not load {model}: {error}", retry_after=30.0))

    async def _recover(self, model: str) -> bool:
        """True when the engine of ``model`` hung and was restarted: what it had loaded is gone."""
        lost = await self.driver.heal(model)
        if lost is None:
            return False
        self.stats.restarts += 1
        for name in lost:
            state = self.resident.pop(name, None)
            self.draining.discard(name)
            if state is not None and state.leases:
                log.warning("arbiter: %s went with its engine under %d request(s)", name, state.leases)
        self._wake.set()
        return True

    def _fail(self, model: str, error: ApiError) -> None:
        """Answer every request queued for ``model`` with ``error``."""
        for waiter in self.queue_for(model):
            self.queue.remove(waiter)
            if not waiter.future.done():
                waiter.future.set_exception(error)

    async def _check_offload(self, model: str) -> None:
        """The engine put part of the model on the CPU (it does so silently when memory is short)."""
        split = self.driver.offloaded(model)
        if split is None:
            return
        size, on_gpu = split
        self.stats.offloaded[model] = self.stats.offloaded.get(model, 0) + 1
        where = f"{on_gpu / 2**30:.1f} of {size / 2**30:.1f} GB on the GPU"
        if not self.require_full_gpu:
            log.warning("arbiter: %s landed partly on the CPU (%s): it will be slow", model, where)
            return
        log.warning("arbiter: %s landed partly on the CPU (%s); require_full_gpu: unloading it", model, where)
        await self._unload(model)
        self._fail(
            model,
            ModelOffloaded(
                f"The model {model} did not fit on the GPU ({where}) and [gpu] require_full_gpu is on.",
                retry_after=30.0,
            ),
        )

    async def _unload(self, model: str) -> None:
        state = self.resident.pop(model)  # nothing can take a lease on it from here on
        assert state.leases == 0, f"unloading {model} under {state.leases} lease(s)"
        try:
            await self.driver.unload(model)
        except DriverError as exc:
            log.error("arbiter: unloading %s failed: %s", model, exc)
            try:
                restarted = await self._recover(model)
            except DriverError:
                restarted = False
            if not restarted:  # the engine keeps the model (or cannot be restarted): it still counts
                self.resident[model] = state
                raise
            return
        self.stats.unloads += 1

    async def _unload_idle(self, now: float) -> None:
        for name, state in list(self.resident.items()):
            timeout = state.entry.idle_timeout
            idle = not state.entry.info.pinned and not state.leases and not self.queue_for(name)
            if timeout and idle and now - state.last_used >= timeout:
                log.info("arbiter: unloading %s: idle for %.0f s", name, now - state.last_used)
                await self._unload(name)

    def _memory(self, entry: Entry) -> int:
        state = self.resident.get(entry.info.name)
        return state.memory if state is not None else entry.info.memory

    def _next_deadline(self) -> float | None:
        deadlines = [self._due(w) for w in self.queue] + self._wakeups
        deadlines += [h.expires for h in self.holds.values() if h.expires is not None]
        deadlines += [
            s.last_used + s.entry.idle_timeout
            for s in self.resident.values()
            if s.entry.idle_timeout and not s.entry.info.pinned and not s.leases
        ]
        now = self.clock.now()
        future = [d for d in deadlines if d > now]  # one already passed was acted on in this round
        return min(future) if future else None


def replace_memory(entry: Entry, memory: int) -> ModelInfo:
    """The catalog's model with the memory it really takes once the engine has said."""
    return entry.info if entry.info.memory == memory else replace(entry.info, memory=memory)
