"""Sign-in throttling: after ``free`` failures a name (or a client address) waits, doubling each time.

Failures are counted per user name, whether or not the user exists (an unknown name is throttled
exactly like a known one: no enumeration), and per client address (per /64 for IPv6, since one host
usually holds a whole /64). The wait after failure n > free is ``base_s * 2**(n - free - 1)``, capped
at ``max_s``; an attempt made while waiting is refused without checking the password and does not
count. A count that has been quiet for ``max_s`` is forgotten.

The caller counts an attempt as failed *before* checking it, so that many attempts sent at once
cannot all slip through before the first one fails, and takes that back when it succeeds: the name's
count is cleared, the address's loses that one attempt only (an attacker's own good password must
not buy more guesses at other accounts).

Memory is bounded: at most ``capacity`` subjects are tracked; the least recently failed go first.
Owned by the event loop (no locks); the clock is injected, so the rule is tested without waiting.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(slots=True)
class _Count:
    failures: int
    last: float  # clock time of the last failure


class Throttle:
    def __init__(
        self,
        free: int = 5,
        base_s: float = 30.0,
        max_s: float = 3600.0,
        capacity: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free, self.base_s, self.max_s, self.capacity = free, base_s, max(max_s, base_s), capacity
        self._clock = clock
        self._counts: OrderedDict[str, _Count] = OrderedDict()

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failures in a row."""
        if failures <= self.free:
            return 0.0
        return min(self.max_s, self.base_s * 2.0 ** min(failures - self.free - 1, 60))

    def wait(self, subjects: Iterable[str]) -> float:
        """Seconds before any of ``subjects`` may try again (0: now)."""
        now = self._clock()
        longest = 0.0
        for subject in subjects:
            count = self._live(subject, now)
            if count is not None:
                longest = max(longest, count.last + self.delay(count.failures + 1) - now)
        return max(0.0, longest)

    def failed(self, subjects: Iterable[str]) -> None:
        now = self._clock()
        for subject in subjects:
            count = self._live(subject, now)
            if count is None:
                count = self._counts[subject] = _Count(0, now)
            count.failures += 1
            count.last = now
            self._counts.move_to_end(subject)
        while len(self._counts) > self.capacity:
            self._counts.popitem(last=False)

    def succeeded(self, subject: str) -> None:
        self._counts.pop(subject, None)

    def forgive(self, subject: str) -> None:
        """Take back one failure counted ahead (an attempt is counted as failed until it succeeds)."""
        count = self._counts.get(subject)
        if count is not None:
            count.failures -= 1
            if count.failures <= 0:
                del self._counts[subject]

    def _live(self, subject: str, now: float) -> _Count | None:
        count = self._counts.get(subject)
        if count is not None and now - count.last > self.max_s:
            del self._counts[subject]
            return None
        return count
