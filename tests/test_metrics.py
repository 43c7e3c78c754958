"""The gateway's metrics: plain counters on the request path, valid Prometheus families at scrape."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from ark.gateway.metrics import Metrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_histograms_are_cumulative_with_inclusive_bounds() -> None:
    m = Metrics()
    for seconds in (0.005, 0.0051, 0.2, 400.0):  # on a bound, just above it, mid-range, above the last bound
        m.observe("tiny", 200, seconds, None, 0, 0)
    got = samples(m)

    def bucket(le: str) -> float:
        return got["ark_request_duration_seconds_bucket", (("le", le), ("model", "tiny"))]

    assert [bucket(le) for le in ("0.005", "0.01", "0.25", "300", "+Inf")] == [1, 2, 3, 3, 4]
    assert got["ark_request_duration_seconds_count", (("model", "tiny"),)] == 4
    assert got["ark_request_duration_seconds_sum", (("model", "tiny"),)] == 400.2101
    # no streamed request yet: no time-to-first-token series that would read as zero
    assert not any(name.startswith("ark_time_to_first_token") for name, _ in got)


def test_counters_by_status_tokens_spend_and_refusals() -> None:
    m = Metrics()
    m.observe("tiny", 200, 0.1, 0.05, 7, 3)
    m.observe("tiny", 502, 0.1, None, 7, 0)
    m.refused("unknown", 413)
    m.add_spend("team-a", 0.25)
    m.add_spend("team-a", 0.5)
    m.count_rate_limited("team-a", "rpm")
    m.inflight = 3
    got = samples(m)
    assert got["ark_requests_total", (("model", "tiny"), ("status", "200"))] == 1
    assert got["ark_requests_total", (("model", "tiny"), ("status", "502"))] == 1
    assert got["ark_requests_total", (("model", "unknown"), ("status", "413"))] == 1
    assert got["ark_tokens_total", (("kind", "prompt"), ("model", "tiny"))] == 14
    assert got["ark_tokens_total", (("kind", "completion"), ("model", "tiny"))] == 3
    assert got["ark_spend_total", (("key_alias", "team-a"),)] == 0.75
    assert got["ark_rate_limited_total", (("key_alias", "team-a"), ("limit", "rpm"))] == 1
    assert got["ark_inflight_requests", ()] == 3
