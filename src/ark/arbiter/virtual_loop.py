"""An asyncio event loop on virtual time, for simulations: timers fire in order and at once.

The loop is asyncio's own selector loop with two changes: :meth:`VirtualEventLoop.time`
reads a counter instead of the monotonic clock, and the selector's ``select(timeout)``
advances that counter by ``timeout`` instead of sleeping (it never reports I/O). asyncio
asks the selector to wait exactly until its next timer, so ``asyncio.sleep``,
``asyncio.wait_for`` and ``loop.call_later`` all run on virtual time: an hour of
simulated traffic takes as long as its callbacks take to run, and every timestamp is
exact (the sum of the delays, nothing of the wall clock).

With nothing ready and no timer left, a real loop would wait for I/O; here nothing can
ever happen again, so :class:`SimulationStuck` is raised instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
from typing import Any


class SimulationStuck(RuntimeError):
    """Every task waits and no timer is due: the simulation would wait forever."""


class _VirtualSelector(selectors.SelectSelector):
    """A selector whose wait advances the virtual clock and reports no events."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise SimulationStuck(f"at t={self.now:.3f} s every task waits and no timer is due")
        self.now += max(timeout, 0.0)
        return []


class VirtualEventLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose clock is virtual (starts at 0.0, moves only between callbacks)."""

    def __init__(self) -> None:
        self._virtual = _VirtualSelector()
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.now

    def run(self, coro: Any) -> Any:
        """Run ``coro`` to completion on this loop, then close the loop (like ``asyncio.run``, without a policy)."""
        try:
            return self.run_until_complete(coro)
        finally:
            self._cancel_all()
            self.close()

    def _cancel_all(self) -> None:
        """Cancel what the run left behind (owner tasks, loads), again while one swallows its cancellation."""
        for _ in range(100):
            left = [t for t in asyncio.all_tasks(self) if not t.done()]
            if not left:
                return
            for task in left:
                task.cancel()
            with contextlib.suppress(SimulationStuck):
                self.run_until_complete(asyncio.wait(left, timeout=1.0))


class LoopClock:
    """The scheduler's clock read from the running loop: virtual time on a :class:`VirtualEventLoop`.

    ``wait`` uses ``asyncio.timeout_at``, not ``asyncio.wait_for``: on Python 3.11 ``wait_for``
    swallows a cancellation that arrives in the same loop iteration as the event, and the
    owner task it runs in would then never stop."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def wait(self, event: asyncio.Event, deadline: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await event.wait()
