"""The last hour of ARK's own numbers, in memory: what the console's overview draws.

Prometheus keeps 30 days when it runs; the console must show live charts without it too (a laptop, a
fresh box). Every ``interval`` seconds the gateway takes a :class:`Sample` of its counters and of the GPU
arbiter into a ring of an hour; :func:`overview` turns the ring into rates between samples (requests and
tokens per second, errors per second, the 95th percentile of request latency from the histogram's
bucket deltas) and the latest state (GPU memory by model, temperature, power, spend today).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from itertools import pairwise
from typing import Any, Protocol

HOUR_S = 3600.0


@dataclass(frozen=True, slots=True)
class Sample:
    t: float  # Unix time
    requests: int
    errors: int  # answered 5xx
    tokens: int
    inflight: int
    latency_counts: tuple[int, ...]  # requests per latency bucket (not cumulative), all models
    spend: float  # credits since the start
    gpu: dict[str, Any] | None = None  # the arbiter's memory by owner and the device's sensors


class Source(Protocol):
    """What a sample is read from: the gateway."""

    def sample(self) -> Sample: ...


@dataclass
class Recent:
    """A ring of samples covering the last hour, and spend since local midnight."""

    interval: float = 5.0
    buckets: tuple[float, ...] = ()  # the latency histogram's upper bounds (seconds), +Inf implied
    samples: deque[Sample] = field(default_factory=deque)
    _day: str = ""
    _spend_at_day_start: float = 0.0

    def __post_init__(self) -> None:
        self.samples = deque(maxlen=max(2, int(HOUR_S / self.interval) + 1))

    def add(self, sample: Sample) -> None:
        day = datetime.fromtimestamp(sample.t).strftime("%Y-%m-%d")
        if day != self._day:  # local midnight (or the first sample): today's spend counts from here
            self._day, self._spend_at_day_start = day, (self.samples[-1].spend if self.samples else 0.0)
        self.samples.append(sample)

    def take(self, source: Source) -> None:
        self.add(source.sample())

    def overview(self) -> dict[str, Any]:
        return overview(list(self.samples), self.buckets, self._spend_at_day_start, self.interval)


def p95(deltas: list[int], bounds: tuple[float, ...]) -> float | None:
    """The 95th percentile of what fell into the buckets, interpolated inside its bucket as Prometheus'
    histogram_quantile does; None without observations. The +Inf bucket answers its lower bound."""
    total = sum(deltas)
    if total == 0:
        return None
    rank, below, lower = 0.95 * total, 0, 0.0
    for upper, count in zip((*bounds, float("inf")), deltas, strict=True):
        if below + count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / count
        below += count
        lower = upper
    return lower


def overview(
    samples: list[Sample], bounds: tuple[float, ...], spend_at_day_start: float, interval: float
) -> dict[str, Any]:
    """Per interval: t, requests/s, errors/s, tokens/s, p95 latency (s); and the latest state."""
    series: list[dict[str, Any]] = []
    for before, after in pairwise(samples):
        seconds = after.t - before.t
        if seconds <= 0:
            continue
        deltas = [max(0, a - b) for a, b in zip(after.latency_counts, before.latency_counts, strict=True)]
        series.append(
            {
                "t": round(after.t, 3),
                "requests_per_s": round((after.requests - before.requests) / seconds, 4),
                "errors_per_s": round((after.errors - before.errors) / seconds, 4),
                "tokens_per_s": round((after.tokens - before.tokens) / seconds, 3),
                "p95_s": p95(deltas, bounds),
            }
        )
    latest = samples[-1] if samples else None
    return {
        "interval_s": interval,
        "now": time.time(),
        "series": series,
        "totals": {
            "requests": latest.requests if latest else 0,
            "tokens": latest.tokens if latest else 0,
            "inflight": latest.inflight if latest else 0,
            "spend_today": round((latest.spend if latest else 0.0) - spend_at_day_start, 6),
        },
        "gpu": latest.gpu if latest else None,
    }
