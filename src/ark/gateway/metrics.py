"""The gateway's Prometheus metrics, on a registry of its own (no process-wide globals).

Labels stay bounded: ``model`` is a name the router knows (or ``unknown``),
never a free-form string from a client; no prompt, no request id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ark.engines.base import Engine
from ark.gateway.budgets import Budgets

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _EngineCollector(Collector):
    """Engine counters read at scrape time, so generation itself pays nothing for them."""

    def __init__(self, engines: Callable[[], Sequence[Engine]], up: Callable[[str], bool]) -> None:
        self._engines = engines
        self._up = up

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("ark_engine_up", "1 when the engine answered its last probe.", labels=["engine"])
        tokens = CounterMetricFamily(
            "ark_engine_generated_tokens", "Tokens sampled by an in-process engine.", labels=["engine"]
        )
        loads = CounterMetricFamily(
            "ark_engine_model_loads", "Models loaded by an in-process engine.", labels=["engine"]
        )
        for engine in self._engines():
            up.add_metric([engine.name], 1.0 if self._up(engine.name) else 0.0)
            stats = engine.stats()
            if "generated_tokens" in stats:
                tokens.add_metric([engine.name], stats["generated_tokens"])
            if "loads" in stats:
                loads.add_metric([engine.name], stats["loads"])
        yield from (up, tokens, loads)


class _BudgetCollector(Collector):
    def __init__(self, budgets: Budgets) -> None:
        self._budgets = budgets

    def collect(self) -> Iterable[Metric]:
        remaining = GaugeMetricFamily(
            "ark_budget_remaining", "Credits left in the current budget period.", labels=["key_alias"]
        )
        for alias, left in self._budgets.remaining():
            remaining.add_metric([alias], left)
        yield remaining


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("ark_requests", "API requests answered.", ["model", "status"], registry=r)
        self.duration = Histogram(
            "ark_request_duration_seconds",
            "Time from request to last byte.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "ark_time_to_first_token_seconds",
            "Time from request to the first streamed token.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "ark_tokens", "Tokens processed, by kind (prompt, completion).", ["model", "kind"], registry=r
        )
        self.inflight = Gauge("ark_inflight_requests", "API requests being served now.", registry=r)
        self.spend = Counter("ark_spend", "Credits spent, by key alias.", ["key_alias"], registry=r)
        self.rate_limited = Counter(
            "ark_rate_limited",
            "Requests refused by a rate limit (rpm, tpm, parallel).",
            ["key_alias", "limit"],
            registry=r,
        )

    def watch_budgets(self, budgets: Budgets) -> None:
        self.registry.register(_BudgetCollector(budgets))

    def watch_engines(self, engines: Callable[[], Sequence[Engine]], up: Callable[[str], bool]) -> None:
        self.registry.register(_EngineCollector(engines, up))

    def observe(
        self,
        model: str,
        status: int,
        seconds: float,
        ttft: float | None,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        self.requests.labels(model, str(status)).inc()
        self.duration.labels(model).observe(seconds)
        if ttft is not None:
            self.ttft.labels(model).observe(ttft)
        if prompt_tokens:
            self.tokens.labels(model, "prompt").inc(prompt_tokens)
        if completion_tokens:
            self.tokens.labels(model, "completion").inc(completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
