"""A clock a test moves on by hand: what ``ark.clock.Clock`` says, plus ``advance``."""

from __future__ import annotations

from datetime import datetime, timedelta

from ark.clock import SYSTEM, Clock


class ManualClock(Clock):
    """Starts at the system's time (rows the store stamps itself stay consistent with it), then moves
    only when the test says."""

    def __init__(self) -> None:
        self._wall = SYSTEM.now()
        self._mono = SYSTEM.monotonic()

    def now(self) -> datetime:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._wall += timedelta(seconds=seconds)
        self._mono += seconds
