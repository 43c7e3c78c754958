"""What both schedulers hand out and count, and the owner task they run on (their errors: ark.errors).

A :class:`Lease` is a request's claim on its model (it stays loaded while any
is out); a :class:`Hold`, a memory hold, is memory set aside for a GPU user that
is not a model. :class:`Stats` counts swaps, loads and waits the same way for
the arbiter and the fifo reference policy, so the simulator measures both alike.
Each scheduler is one :class:`OwnerTask` on a :class:`Clock` (the monotonic
clock, or the simulator's virtual one).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, Self, TypeVar

from ark.arbiter.policy import Priority


class Releasing:
    """Ends once: by ``release``, or by leaving the ``with`` block; ``ended`` is then told."""

    def __init__(self, ended: Callable[[Any], None]) -> None:
        self._ended, self._released = ended, False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._ended(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Lease(Releasing):
    """A request's claim on its model; ``release`` (or leaving the ``with`` block) ends it."""

    def __init__(self, model: str, granted: float, ended: Callable[[Lease], None], on: object = None) -> None:
        super().__init__(ended)
        self.model, self.granted = model, granted
        self.on = on  # what the scheduler granted it on (its loaded model): a reload is another one


class Hold(Releasing):
    """Memory set aside for a GPU user that is not a model; ``release`` gives it back."""

    def __init__(
        self,
        holder: str,
        memory: int,
        priority: Priority,
        seconds: float,
        ended: Callable[[Hold], None],
        in_comfyui: bool = False,
    ) -> None:
        super().__init__(ended)
        self.id = uuid.uuid4().hex[:12]
        self.holder, self.memory, self.priority, self.seconds = holder, memory, priority, seconds
        self.in_comfyui = in_comfyui  # for a ComfyUI job: ComfyUI's own use grows into it (counted once)
        self.name = f"hold {self.id} ({holder})"  # its name in plans and queues: never a model's
        self.granted: float | None = None
        self.expires: float | None = None

    def describe(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "holder": self.holder,
            "memory_bytes": self.memory,
            "priority": self.priority.name.lower(),
            "in_comfyui": self.in_comfyui,
            "granted": self.granted is not None,
            "expires_in_s": round(self.expires - now, 3) if self.expires is not None else None,
        }


WAIT_BUCKETS = (0.01, 0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 120, 300, 600)  # seconds: ark_queue_wait_seconds


@dataclass
class Stats:
    swaps: int = 0
    loads: int = 0
    unloads: int = 0
    load_seconds: float = 0.0
    rejected: int = 0
    offloaded: dict[str, int] = field(default_factory=dict)  # loads that landed partly on the CPU
    waits: deque[float] = field(default_factory=lambda: deque(maxlen=1024))  # the latest grants' waits (s)
    wait_count: int = 0
    wait_seconds: float = 0.0
    # how many waits fell at or under each of WAIT_BUCKETS (one count per wait; cumulated at scrape), +Inf last
    wait_buckets: list[int] = field(default_factory=lambda: [0] * (len(WAIT_BUCKETS) + 1))
    restarts: int = 0  # engines restarted because they stopped answering
    holds: int = 0  # memory holds granted
    reclaimed: int = 0  # memory holds taken back when they outlived their time
    load_failures: int = 0  # loads an engine refused or did not finish
    failed_loads: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=64))  # (model, why), latest

    def record_wait(self, seconds: float) -> None:
        """A lease or memory hold granted after ``seconds`` in the queue (both schedulers count waits alike)."""
        self.waits.append(seconds)
        self.wait_count += 1
        self.wait_seconds += seconds
        self.wait_buckets[bisect_left(WAIT_BUCKETS, seconds)] += 1


class Clock(Protocol):
    def now(self) -> float: ...

    async def wait(self, event: asyncio.Event, deadline: float | None) -> None:
        """Return when ``event`` is set or the clock reaches ``deadline``."""
        ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    async def wait(self, event: asyncio.Event, deadline: float | None) -> None:
        # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that arrives in the same
        # loop iteration as the event, and the owner task would never stop
        timeout = None if deadline is None else max(0.0, deadline - self.now())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()


class Releasable(Protocol):
    def release(self) -> None: ...


R = TypeVar("R", bound=Releasable)


class OwnerTask:
    """The one asyncio task that owns a scheduler's state; requests talk to it through futures."""

    task_name = "ark-scheduler"
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=self.task_name)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def run(self) -> None:
        raise NotImplementedError

    @staticmethod
    async def granted(future: asyncio.Future[R], withdraw: Callable[[], None]) -> R:
        """What the owner task grants through ``future``. A caller cancelled meanwhile withdraws its request,
        or gives back what was granted in the same loop iteration."""
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                future.result().release()
            else:
                withdraw()
            raise
