"""The runtime's clock: wall time (UTC, for expiry dates and budget periods) and monotonic seconds (for
rate-limit windows and intervals). Code asks the clock it was given, never ``datetime.now`` itself, so
a test moves time on (tests/fakes/clock.py) instead of sleeping through a period."""

from __future__ import annotations

import time
from datetime import UTC, datetime


class Clock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM = Clock()
