"""A reference policy modelled on Ollama's scheduler (ollama/ollama ``server/sched.go``), for the simulator.

It offers what the simulator drives on the arbiter (``acquire(model) -> lease``,
``hold(...)`` for memory holds, ``stats``), so both are measured the same way,
and it decides as sched.go does. Where it follows sched.go:

* **One queue, one request at a time.** Requests go through one bounded FIFO
  (``pendingReqCh``; a full one fails at once, ``ErrMaxQueue``). One owner task
  (``processPending``) schedules the request at the head and takes the next only
  once that one is placed: while it waits for a runner to unload, every request
  behind it waits too, even one for a model that is loaded (sched.go says so).
* **A loaded runner serves at once** (``useLoadedRunner``): its reference count
  goes up and its expiry timer stops; a request's keep-alive becomes the runner's.
* **Making room.** At ``OLLAMA_MAX_LOADED_MODELS`` (3 per GPU by default) a runner
  goes first, whatever the memory says. Otherwise the model loads when it fits
  beside the loaded runners; if not, ``findRunnerToUnload`` picks a runner: sorted
  by keep-alive, the first idle one, else the one with the shortest keep-alive,
  busy. That runner is set to expire (``sessionDuration = 0``): it unloads when its
  last request ends. The owner waits for an unload (``unloadedCh``) and decides
  again, one runner at a time.
* **Expiry.** A runner that goes idle gets a timer of its keep-alive; a negative
  keep-alive (here: pinned, or ``idle_timeout_s = 0``) never expires and sorts last
  (sched.go reads it as the longest duration), but an idle pinned model can still
  be picked to make room, as in Ollama.
* **Loads run beside the owner** (``load``'s goroutine): the request gets its
  runner once it runs. The next request for that model waits for the load (the
  runner's ``refMu``); one for a model that is not loaded waits for it too
  (``updateFreeSpace`` takes every runner's ``refMu``) and then, below the runner
  limit, goes to the back of the queue after ``reschedDelay`` (250 ms).

Where it simplifies:

* One GPU, sizes from the catalog (sched.go predicts them per request, with
  ``num_ctx`` times ``numParallel``); no reload for changed options
  (``needsReload``), no partial CPU offload: a model bigger than the whole GPU is
  refused (sched.go would load it partly on the CPU), and one that does not fit
  beside memory holds while nothing is loaded waits for memory (sched.go would
  load it partly on the CPU).
* Ties in keep-alive (sched.go leaves them to Go's map order, which is random) go
  to the runner whose timer expires first, then by name, so runs are reproducible.
* The 10 ms retry of an expiry that races a new request, the VRAM-recovery poll
  after an unload (folded into the driver's unload time) and cancelled requests'
  contexts are not modelled beyond skipping a request that left the queue.
* Memory holds (``hold``) do not exist in Ollama. Here one queues in the same
  FIFO and makes room as a model would (idle runners go, busy ones are waited for):
  the kindest reading of Ollama next to ComfyUI, which in reality just allocates
  and fails or spills to the CPU when the memory is not there.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from ark.arbiter.catalog import Entry
from ark.arbiter.drivers import Driver
from ark.arbiter.leases import Clock, MonotonicClock, OwnerTask, Releasing, Stats
from ark.arbiter.policy import GB, Priority
from ark.errors import ModelWontFit, QueueFull

MAX_RUNNERS = 3  # sched.go's defaultModelsPerGPU, times one GPU
RESCHED_DELAY = 0.25  # sched.go's reschedDelay


@dataclass(eq=False)
class _Runner:
    name: str
    memory: int
    session: float  # keep-alive in seconds; inf: never expires; 0: unload when idle
    expires_at: float = 0.0
    refs: int = 0
    loading: bool = True
    unloading: bool = False
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class _Pending:
    model: str | None  # None: a memory hold
    memory: int
    future: asyncio.Future[FifoLease | FifoHold]
    since: float
    holder: str = ""
    seconds: float = 0.0
    evicted: bool = False  # a runner was unloaded to make room for it: its load is a swap


class FifoLease(Releasing):
    """A request's reference on its runner (sched.go's refCount); ``release`` ends the request."""

    def __init__(self, scheduler: FifoScheduler, runner: _Runner) -> None:
        super().__init__(lambda _: scheduler._finished(runner))
        self.model = runner.name


class FifoHold(Releasing):
    """Memory set aside for a job that is not a model; given back by ``release`` or after its seconds."""

    def __init__(self, scheduler: FifoScheduler, holder: str, memory: int) -> None:
        super().__init__(lambda _: self._give_back(scheduler))
        self.holder, self.memory = holder, memory
        self.timer: asyncio.TimerHandle | None = None

    def _give_back(self, scheduler: FifoScheduler) -> None:
        if self.timer is not None:
            self.timer.cancel()
        scheduler._give_back(self.memory)


class FifoScheduler(OwnerTask):
    """Ollama's scheduling on the arbiter's interface (see the module docstring for what it models)."""

    task_name = "ark-fifo"

    def __init__(
        self,
        catalog: Mapping[str, Entry],
        driver: Driver,
        *,
        capacity: int,
        queue_size: int,
        clock: Clock | None = None,
        max_runners: int = MAX_RUNNERS,
        resched_delay: float = RESCHED_DELAY,
    ) -> None:
        self.catalog, self.driver, self.capacity, self.queue_size = catalog, driver, capacity, queue_size
        self.clock: Clock = clock or MonotonicClock()
        self.max_runners, self.resched_delay = max_runners, resched_delay
        self.stats = Stats()
        # Only the owner task and the callbacks below touch these (one event loop: no locks).
        self.loaded: dict[str, _Runner] = {}
        self.pending: deque[_Pending] = deque()
        self._held = 0  # bytes given to memory holds
        self._unloading = 0  # bytes of runners being unloaded
        self._freed = 0  # unload (or hold end) events not yet seen by the owner: sched.go's unloadedCh
        self._kick = asyncio.Event()
        self._work: set[asyncio.Task[None]] = set()  # loads and unloads under way (sched.go's goroutines)

    # -- the request side -------------------------------------------------------------------------
    async def acquire(self, model: str) -> FifoLease:
        entry = self.catalog.get(model)
        if entry is None:
            raise KeyError(model)
        lease = await self._enqueue(_Pending(model, entry.info.memory, self._future(), self.clock.now()))
        assert isinstance(lease, FifoLease)
        return lease

    async def hold(
        self, holder: str, memory: int, priority: Priority = Priority.MEDIUM, seconds: float = 600.0
    ) -> FifoHold:
        """Set ``memory`` bytes aside for ``holder``, in the same FIFO as requests (priority plays no part)."""
        hold = await self._enqueue(_Pending(None, memory, self._future(), self.clock.now(), holder, seconds))
        assert isinstance(hold, FifoHold)
        return hold

    def _future(self) -> asyncio.Future[FifoLease | FifoHold]:
        return asyncio.get_running_loop().create_future()

    async def _enqueue(self, pending: _Pending) -> FifoLease | FifoHold:
        if len(self.pending) >= self.queue_size:
            raise QueueFull(f"{len(self.pending)} requests are pending; retry shortly.", retry_after=5.0)
        self.pending.append(pending)
        self._kick.set()
        # a cancelled request stays in the queue: sched.go skips a pending request whose context is done
        return await self.granted(pending.future, lambda: None)

    def _finished(self, runner: _Runner) -> None:
        """processCompleted's finishedReqCh: the last request out starts the runner's expiry."""
        runner.refs -= 1
        if runner.refs > 0 or runner.unloading:
            return
        if runner.session <= 0:
            self._unload(runner)
        elif math.isfinite(runner.session):
            loop = asyncio.get_running_loop()
            runner.timer = loop.call_later(runner.session, self._expired, runner)
            runner.expires_at = self.clock.now() + runner.session

    def _expired(self, runner: _Runner) -> None:
        runner.timer = None
        if runner.refs == 0 and not runner.unloading:
            self._unload(runner)

    def _give_back(self, memory: int) -> None:
        self._held -= memory
        self._freed += 1
        self._kick.set()

    # -- the owner task (processPending) ----------------------------------------------------------
    async def run(self) -> None:
        while True:
            if self.pending:
                item = self.pending.popleft()
                if not item.future.done():  # still wanted
                    await (self._place(item) if item.model is not None else self._place_hold(item))
            elif self._freed:
                self._freed = 0  # sched.go: "ignoring unload event with no pending requests"
            else:
                self._kick.clear()
                await self._kick.wait()

    async def _place(self, item: _Pending) -> None:
        """processPending's inner loop for one request: serve it, load its model, or make room and retry."""
        assert item.model is not None
        while not item.future.done():
            runner = self.loaded.get(item.model)
            if runner is not None:
                await runner.ready.wait()  # a runner still loading holds its refMu
                if self.loaded.get(item.model) is runner and not item.future.done():
                    self._use(runner, item)
                    return
                continue
            if item.memory > self.capacity:
                item.future.set_exception(
                    ModelWontFit(f"model {item.model} needs {item.memory / GB:.1f} GB", param="model")
                )
                self.stats.rejected += 1
                return
            loading = next((r for r in self.loaded.values() if r.loading), None)
            if loading is not None:  # updateFreeSpace waits for the loading runner's refMu
                await loading.ready.wait()
                if len(self.loaded) < self.max_runners:
                    self._requeue(item)
                    return
            victim: _Runner | None = None
            if len(self.loaded) >= self.max_runners:
                victim = self._runner_to_unload()
            elif self._fits(item.memory):
                self._load(item)
                return
            elif self.loaded:
                victim = self._runner_to_unload()
            if victim is not None:
                self._expire(victim)
                item.evicted = True
            await self._unloaded()

    async def _place_hold(self, item: _Pending) -> None:
        """A memory hold: placed as a model's load would be, without the runner limit."""
        while not item.future.done():
            if item.memory > self.capacity:
                item.future.set_exception(ModelWontFit(f"{item.holder} needs {item.memory / GB:.1f} GB"))
                return
            if self._fits(item.memory):
                self._held += item.memory
                self.stats.holds += 1
                self.stats.swaps += item.evicted  # counted as the arbiter counts it: a placement after an unload
                hold = FifoHold(self, item.holder, item.memory)
                hold.timer = asyncio.get_running_loop().call_later(item.seconds, hold.release)
                self._grant(item, hold)
                return
            victim = self._runner_to_unload()
            if victim is not None:
                self._expire(victim)
                item.evicted = True
            await self._unloaded()

    def _runner_to_unload(self) -> _Runner | None:
        """findRunnerToUnload: by keep-alive, the first idle runner, else the shortest keep-alive."""
        runners = sorted(
            (r for r in self.loaded.values() if not r.unloading), key=lambda r: (r.session, r.expires_at, r.name)
        )
        return next((r for r in runners if r.refs == 0), runners[0] if runners else None)

    def _expire(self, runner: _Runner) -> None:
        """Expire now: unload when idle (sched.go sets sessionDuration to 0 and stops the timer)."""
        if runner.timer is not None:
            runner.timer.cancel()
            runner.timer = None
        runner.session = 0.0
        if runner.refs == 0:
            self._unload(runner)

    async def _unloaded(self) -> None:
        """Wait for the next unload event (or a memory hold's end), as sched.go waits on unloadedCh."""
        while not self._freed:
            self._kick.clear()
            await self._kick.wait()
        self._freed -= 1

    def _fits(self, memory: int) -> bool:
        used = sum(r.memory for r in self.loaded.values()) + self._held + self._unloading
        return used + memory <= self.capacity

    def _requeue(self, item: _Pending) -> None:
        def back() -> None:
            self.pending.append(item)
            self._kick.set()

        asyncio.get_running_loop().call_later(self.resched_delay, back)

    def _use(self, runner: _Runner, item: _Pending) -> None:
        """useLoadedRunner: one more reference, the expiry timer stopped, the request's keep-alive kept."""
        runner.refs += 1
        if runner.timer is not None:
            runner.timer.cancel()
            runner.timer = None
        runner.session = self._keep_alive(runner.name)
        self._grant(item, FifoLease(self, runner))

    def _grant(self, item: _Pending, lease: FifoLease | FifoHold) -> None:
        self.stats.record_wait(self.clock.now() - item.since)
        item.future.set_result(lease)

    def _keep_alive(self, model: str) -> float:
        """The keep_alive a client sends for ``model``: its idle timeout; never for a pinned model."""
        entry = self.catalog[model]
        return math.inf if entry.info.pinned or not entry.idle_timeout else entry.idle_timeout

    def _load(self, item: _Pending) -> None:
        assert item.model is not None
        runner = _Runner(item.model, item.memory, self._keep_alive(item.model), refs=1)
        self.loaded[item.model] = runner
        if item.evicted:
            self.stats.swaps += 1
        self._spawn(self._run_load(runner, item))

    async def _run_load(self, runner: _Runner, item: _Pending) -> None:
        started = self.clock.now()
        await self.driver.load(runner.name)
        self.stats.loads += 1
        self.stats.load_seconds += self.clock.now() - started
        runner.loading = False
        runner.ready.set()
        lease = FifoLease(self, runner)
        if item.future.done():  # the request left while its model loaded
            lease.release()
        else:
            self._grant(item, lease)
        self._kick.set()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._work.add(task)
        task.add_done_callback(self._work.discard)

    def _unload(self, runner: _Runner) -> None:
        runner.unloading = True
        del self.loaded[runner.name]
        self._unloading += runner.memory
        self._spawn(self._run_unload(runner))

    async def _run_unload(self, runner: _Runner) -> None:
        await self.driver.unload(runner.name)
        self.stats.unloads += 1
        self._unloading -= runner.memory
        self._freed += 1
        self._kick.set()
