"""The gateway's Prometheus metrics, on a registry of its own (no process-wide globals).

Labels stay bounded: ``model`` is a name the router knows (or ``unknown``),
never a free-form string from a client; no prompt, no request id.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from ark.arbiter.leases import WAIT_BUCKETS
from ark.engines.base import Engine
from ark.gateway.budgets import Budgets

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _EngineCollector(Collector):
    """Engine counters read at scrape time, so generation itself pays nothing for them."""

    def __init__(
        self,
        engines: Callable[[], Sequence[Engine]],
        up: Callable[[str], bool],
        loaded: Callable[[], Mapping[str, Sequence[Mapping[str, Any]]]] = dict,
    ) -> None:
        self._engines = engines
        self._up = up
        self._loaded = loaded

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("ark_engine_up", "1 when the engine answered its last probe.", labels=["engine"])
        tokens = CounterMetricFamily(
            "ark_engine_generated_tokens", "Tokens sampled by an in-process engine.", labels=["engine"]
        )
        loads = CounterMetricFamily(
            "ark_engine_model_loads", "Models loaded by an in-process engine.", labels=["engine"]
        )
        crashes = CounterMetricFamily(
            "ark_engine_crashes",
            "Engine worker processes that died under ARK (a fault, an abort, out of memory, killed).",
            labels=["engine"],
        )
        for engine in self._engines():
            up.add_metric([engine.name], 1.0 if self._up(engine.name) else 0.0)
            stats = engine.stats()
            if "generated_tokens" in stats:
                tokens.add_metric([engine.name], stats["generated_tokens"])
            if "loads" in stats:
                loads.add_metric([engine.name], stats["loads"])
            if "crashes" in stats:
                crashes.add_metric([engine.name], stats["crashes"])
        memory = GaugeMetricFamily(
            "ark_engine_model_memory_bytes",
            "Memory a model loaded in an engine takes, as the engine reports it (Ollama's /api/ps): "
            "total, and the part on the GPU.",
            labels=["engine", "model", "kind"],
        )
        for engine_name, models in sorted(self._loaded().items()):
            for model in models:
                size, vram = int(model.get("size") or 0), int(model.get("size_vram") or 0)
                memory.add_metric([engine_name, str(model.get("name", "")), "total"], size)
                memory.add_metric([engine_name, str(model.get("name", "")), "gpu"], vram)
        yield from (up, tokens, loads, crashes, memory)


class _BudgetCollector(Collector):
    def __init__(self, budgets: Budgets) -> None:
        self._budgets = budgets

    def collect(self) -> Iterable[Metric]:
        remaining = GaugeMetricFamily(
            "ark_budget_remaining", "Credits left in the current budget period.", labels=["key_alias"]
        )
        budget = GaugeMetricFamily(
            "ark_budget_max", "The budget of the current period, in credits.", labels=["key_alias"]
        )
        for alias, left, limit in self._budgets.remaining():
            remaining.add_metric([alias], left)
            budget.add_metric([alias], limit)
        yield from (remaining, budget)


class _Histogram:
    """Counts per latency bucket (not cumulative: one increment per observation); cumulated at scrape."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, value)] += 1  # le is inclusive: the first bound >= value
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        return cumulative(LATENCY_BUCKETS, self.counts)


def cumulative(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    """Prometheus' histogram buckets (``le``, count at or under it) from one count per bucket, +Inf last."""
    out, running = [], 0
    for bound, count in zip((*(f"{b:g}" for b in bounds), "+Inf"), counts, strict=True):
        running += count
        out.append((bound, float(running)))
    return out


class _ModelSeries:
    __slots__ = ("completion", "duration", "prompt", "statuses", "ttft")

    def __init__(self) -> None:
        self.statuses: dict[int, int] = {}
        self.duration = _Histogram()
        self.ttft = _Histogram()
        self.prompt = 0
        self.completion = 0


class _GpuCollector(Collector):
    """The arbiter's state and counters and the device's reading, from ``GpuService.status()`` at scrape."""

    def __init__(self, service: Callable[[], Any]) -> None:
        self._service = service

    def collect(self) -> Iterable[Metric]:
        service = self._service()
        if service is None:
            return
        status = service.status()
        yield from _device_families(status)
        resident = GaugeMetricFamily("ark_model_resident", "1 while the model is loaded.", labels=["model"])
        memory = GaugeMetricFamily(
            "ark_model_memory_bytes", "Device memory the model takes (or would take) when loaded.", labels=["model"]
        )
        depth = GaugeMetricFamily("ark_queue_depth", "Requests waiting for the model.", labels=["model"])
        offloaded = CounterMetricFamily(
            "ark_model_offloaded", "Loads the engine put partly on the CPU (slow).", labels=["model"]
        )
        for m in status["models"]:
            resident.add_metric([m["model"]], 1.0 if m["resident"] else 0.0)
            memory.add_metric([m["model"]], float(m["memory_bytes"]))
            depth.add_metric([m["model"]], float(m["queued"]))
            offloaded.add_metric([m["model"]], m["offloaded"])  # 0 too: an alert's increase() needs the series
        stats = status["stats"]
        yield from (resident, memory, depth, offloaded)
        yield CounterMetricFamily("ark_model_swaps", "Loads that had to unload another model first.", stats["swaps"])
        yield SummaryMetricFamily(
            "ark_model_load_seconds",
            "Time to load a model.",
            count_value=stats["loads"],
            sum_value=stats["load_seconds"],
        )
        waits = HistogramMetricFamily(
            "ark_queue_wait_seconds", "Time from a request's arrival to its lease on the model (or a memory hold's)."
        )
        waits.add_metric([], cumulative(WAIT_BUCKETS, stats["wait_buckets"]), stats["wait_seconds"])
        yield waits
        restarts = CounterMetricFamily(
            "ark_engine_restarts", "Engines restarted because they stopped answering.", labels=["engine"]
        )
        for engine, count in sorted(status["restarts"].items()):
            restarts.add_metric([engine], count)
        yield restarts
        reclaimed = stats["holds_reclaimed"]
        yield CounterMetricFamily("ark_gpu_holds_reclaimed", "GPU memory holds taken back past their time.", reclaimed)
        # the old name, from before "lease" meant only a request's lease on its model: kept for one release
        yield CounterMetricFamily("ark_gpu_leases_reclaimed", "Deprecated: ark_gpu_holds_reclaimed.", reclaimed)


def _device_families(status: dict[str, Any]) -> Iterable[Metric]:
    """``ark_gpu_*``: what the device read last (NVML: all of it; a virtual GPU or system RAM: memory)."""
    reading = status["reading"]
    gpu = str(reading["index"])
    memory = GaugeMetricFamily(
        "ark_gpu_memory_bytes",
        "Device memory: total and used as the device reports them, planned by the arbiter, held by others.",
        labels=["gpu", "kind"],
    )
    memory.add_metric([gpu, "total"], reading["total_bytes"])
    memory.add_metric([gpu, "used"], reading["used_bytes"])
    memory.add_metric([gpu, "free"], max(0, reading["total_bytes"] - reading["used_bytes"]))
    memory.add_metric([gpu, "models"], status["used_bytes"])
    memory.add_metric([gpu, "holds"], status["held_bytes"])
    memory.add_metric([gpu, "leases"], status["held_bytes"])  # deprecated: "holds" by its old name, for one release
    memory.add_metric([gpu, "comfyui"], (status["comfyui"] or {}).get("used_bytes", 0))
    memory.add_metric([gpu, "external"], status["external_bytes"])
    yield memory
    for name, key, help_text in (
        ("ark_gpu_temperature_celsius", "temperature_c", "GPU temperature."),
        ("ark_gpu_power_watts", "power_w", "GPU power draw."),
        ("ark_gpu_utilization_ratio", "utilization", "Share of the last sample period the GPU was busy (0..1)."),
    ):
        if reading[key] is not None:
            family = GaugeMetricFamily(name, help_text, labels=["gpu"])
            family.add_metric([gpu], reading[key])
            yield family


class Metrics:
    """Plain counters on the request path (a dict lookup and an addition); Prometheus families at scrape.

    prometheus_client's labelled metrics take a lock and build a label tuple on every update, several
    times per request; here a request costs a few additions and the registry reads them when scraped.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.models: dict[str, _ModelSeries] = {}
        self.spend: dict[str, float] = {}  # key alias -> credits
        self.rate_limited: dict[tuple[str, str], int] = {}  # (key alias, limit) -> refusals
        self.people: dict[str, list[float]] = {}  # person -> [requests, prompt tokens, completion tokens, credits]
        self.untrusted_user_headers: dict[str, int] = {}  # key alias -> requests that named a person, ignored
        self.inflight = 0
        self.registry.register(_Collector(self))

    def watch_budgets(self, budgets: Budgets) -> None:
        self.registry.register(_BudgetCollector(budgets))

    def watch_engines(
        self,
        engines: Callable[[], Sequence[Engine]],
        up: Callable[[str], bool],
        loaded: Callable[[], Mapping[str, Sequence[Mapping[str, Any]]]] = dict,
    ) -> None:
        self.registry.register(_EngineCollector(engines, up, loaded))

    def watch_certificates(self, patterns: str) -> None:
        from ark.monitor.certificates import CertificateCollector

        self.registry.register(CertificateCollector(patterns))

    def watch_gpu(self, service: Callable[[], Any]) -> None:
        self.registry.register(_GpuCollector(service))

    def series(self, model: str) -> _ModelSeries:
        series = self.models.get(model)
        if series is None:
            series = self.models[model] = _ModelSeries()
        return series

    def observe(
        self,
        model: str,
        status: int,
        seconds: float,
        ttft: float | None,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        series = self.series(model)
        series.statuses[status] = series.statuses.get(status, 0) + 1
        series.duration.observe(seconds)
        if ttft is not None:
            series.ttft.observe(ttft)
        series.prompt += prompt_tokens
        series.completion += completion_tokens

    def refused(self, model: str, status: int) -> None:
        """A request answered before it had a model (413, 400 from the server)."""
        series = self.series(model)
        series.statuses[status] = series.statuses.get(status, 0) + 1

    def add_spend(self, alias: str, credits: float) -> None:
        self.spend[alias] = self.spend.get(alias, 0.0) + credits

    def observe_person(self, person: str, prompt_tokens: int, completion_tokens: int, credits: float) -> None:
        totals = self.people.get(person)
        if totals is None:
            totals = self.people[person] = [0, 0, 0, 0.0]
        totals[0] += 1
        totals[1] += prompt_tokens
        totals[2] += completion_tokens
        totals[3] += credits

    def count_untrusted_user_header(self, alias: str) -> None:
        self.untrusted_user_headers[alias] = self.untrusted_user_headers.get(alias, 0) + 1

    def count_rate_limited(self, alias: str, limit: str) -> None:
        self.rate_limited[alias, limit] = self.rate_limited.get((alias, limit), 0) + 1

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def totals(self) -> tuple[int, int, int, tuple[int, ...]]:
        """(requests, 5xx answers, tokens, requests per latency bucket) over every model, for the console."""
        requests = errors = tokens = 0
        latency = [0] * (len(LATENCY_BUCKETS) + 1)
        for series in list(self.models.values()):
            for status, count in series.statuses.items():
                requests += count
                errors += count if status >= 500 else 0
            tokens += series.prompt + series.completion
            latency = [a + b for a, b in zip(latency, series.duration.counts, strict=True)]
        return requests, errors, tokens, tuple(latency)


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterable[Metric]:
        m = self._m
        requests = CounterMetricFamily("ark_requests", "API requests answered.", labels=["model", "status"])
        duration = HistogramMetricFamily(
            "ark_request_duration_seconds", "Time from request to last byte.", labels=["model"]
        )
        ttft = HistogramMetricFamily(
            "ark_time_to_first_token_seconds", "Time from request to the first streamed token.", labels=["model"]
        )
        tokens = CounterMetricFamily(
            "ark_tokens", "Tokens processed, by kind (prompt, completion).", labels=["model", "kind"]
        )
        for model, series in sorted(m.models.items()):
            for status, count in sorted(series.statuses.items()):
                requests.add_metric([model, str(status)], count)
            if any(series.duration.counts):
                duration.add_metric([model], series.duration.buckets(), series.duration.total)
            if any(series.ttft.counts):
                ttft.add_metric([model], series.ttft.buckets(), series.ttft.total)
            if series.prompt:
                tokens.add_metric([model, "prompt"], series.prompt)
            if series.completion:
                tokens.add_metric([model, "completion"], series.completion)
        inflight = GaugeMetricFamily("ark_inflight_requests", "API requests being served now.", value=m.inflight)
        spend = CounterMetricFamily("ark_spend", "Credits spent, by key alias.", labels=["key_alias"])
        for alias, credits in sorted(m.spend.items()):
            spend.add_metric([alias], credits)
        limited = CounterMetricFamily(
            "ark_rate_limited", "Requests refused by a rate limit (rpm, tpm, parallel).", labels=["key_alias", "limit"]
        )
        for (alias, limit), count in sorted(m.rate_limited.items()):
            limited.add_metric([alias, limit], count)
        yield from (requests, duration, ttft, tokens, inflight, spend, limited)
        yield from _people(m)


def _people(m: Metrics) -> Iterable[Metric]:
    """Per person (the requests a UI made for them), and the person headers ARK did not trust."""
    requests = CounterMetricFamily("ark_user_requests", "API requests made for a person, by a UI.", labels=["user"])
    tokens = CounterMetricFamily("ark_user_tokens", "Tokens used for a person, by kind.", labels=["user", "kind"])
    spend = CounterMetricFamily("ark_user_spend", "Credits spent for a person.", labels=["user"])
    for person, (count, prompt, completion, credits) in sorted(m.people.items()):
        requests.add_metric([person], count)
        tokens.add_metric([person, "prompt"], prompt)
        tokens.add_metric([person, "completion"], completion)
        spend.add_metric([person], credits)
    untrusted = CounterMetricFamily(
        "ark_untrusted_user_header",
        "Requests that named a person (X-OpenWebUI-User-Email) with a key not trusted to: ignored.",
        labels=["key_alias"],
    )
    for alias, count in sorted(m.untrusted_user_headers.items()):
        untrusted.add_metric([alias], count)
    yield from (requests, tokens, spend, untrusted)
