"""Rate limits: the buckets with a hand-driven clock, then headers, 429s and metrics from a real gateway."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ark.gateway.ratelimits import RateLimited, RateLimits
from tests.conftest import MASTER_KEY, ArkProcess, embedded_ark, stop_ark, wait_until
from tests.fakes.ollama import FakeOllama
from tests.test_budgets import key


def test_rpm_bucket_refills_continuously() -> None:
    limits = RateLimits()
    k = key(rpm_limit=2)
    limits.sync([k], [], now=0.0)
    for _ in range(2):
        RateLimits.finish(limits.admit(k, 0.0), 0)
    with pytest.raises(RateLimited) as caught:
        limits.admit(k, 0.0)
    assert caught.value.retry_after == 30  # one request refills in 60/2 s
    assert ("x-ratelimit-remaining-requests", "0") in caught.value.headers
    assert limits.admit(k, 30.0) is not None


def test_tpm_charges_what_was_used() -> None:
    limits = RateLimits()
    k = key(tpm_limit=600)  # 10 tokens a second
    limits.sync([k], [], now=0.0)
    RateLimits.finish(limits.admit(k, 0.0), 900)  # a long answer: the bucket is in debt
    with pytest.raises(RateLimited, match="600 tokens per minute"):
        limits.admit(k, 10.0)
    assert limits.admit(k, 31.0) is not None  # 300 tokens of debt repaid after 30 s


def test_parallel_and_team_limits() -> None:
    from ark.store.keys import Team
    from tests.test_budgets import limits as fields

    team = Team(**fields(max_parallel_requests=1), id="t", alias="lab")  # type: ignore[arg-type]
    a, b = key(id="a", team_id="t"), key(id="b", team_id="t")
    limits = RateLimits()
    limits.sync([a, b], [team], now=0.0)
    held = limits.admit(a, 0.0)
    with pytest.raises(RateLimited, match="team lab: 1 requests at once"):
        limits.admit(b, 0.0)
    RateLimits.finish(held, 0)
    RateLimits.finish(held, 0)  # twice: counted once
    assert limits.admit(b, 0.0) is not None


def test_limits_survive_a_reload_but_follow_new_values() -> None:
    limits = RateLimits()
    k = key(rpm_limit=1)
    limits.sync([k], [], now=0.0)
    limits.admit(k, 0.0)
    limits.sync([k], [], now=1.0)  # the periodic reload must not refill the bucket
    with pytest.raises(RateLimited):
        limits.admit(k, 1.0)
    limits.sync([key(rpm_limit=100)], [], now=1.0)
    assert limits.admit(k, 1.0) is not None


@pytest.fixture(scope="module")
def ark(
    tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path, fake_ollama_server: FakeOllama
) -> Iterator[ArkProcess]:
    extra = "[models.tiny]\noutput_cost_per_token = 0.5\n"
    extra += f'[engines.ollama]\nkind = "ollama"\nurl = "{fake_ollama_server.url}"\n'  # answers when a test says so
    process = embedded_ark(tmp_path_factory.mktemp("rates"), tiny_gguf, n_ctx=2048, extra=extra)
    yield process
    stop_ark(process)


def new_key(ark: ArkProcess, **body: object) -> str:
    response = httpx.post(ark.url + "/key/generate", headers={"Authorization": f"Bearer {MASTER_KEY}"}, json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["key"])


def chat(ark: ArkProcess, key: str, **extra: object) -> httpx.Response:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **extra}
    return httpx.post(ark.api + "/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=body, timeout=60)


def test_rpm_429_with_openai_headers_and_metrics(ark: ArkProcess) -> None:
    k = new_key(ark, key_alias="rpm-three", rpm_limit=3, tpm_limit=100_000, max_budget=100)
    first = chat(ark, k)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "3"
    assert first.headers["x-ratelimit-remaining-requests"] == "2"
    reset = first.headers["x-ratelimit-reset-requests"]  # one of three used: 20 s to refill, as OpenAI writes it
    assert reset.endswith("ms") and 18_000 <= int(reset[:-2]) <= 20_000, reset
    assert first.headers["x-ratelimit-limit-tokens"] == "100000"
    assert chat(ark, k).status_code == 200 and chat(ark, k).status_code == 200
    refused = chat(ark, k)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert ark.metric("ark_rate_limited_total", key_alias="rpm-three", limit="rpm") == 1
    assert ark.metric("ark_spend_total", key_alias="rpm-three") == 3.0  # 3 requests x 2 tokens x 0.5
    assert ark.metric("ark_budget_remaining", key_alias="rpm-three") == 97.0


def test_parallel_limit(ark: ArkProcess, fake_ollama: FakeOllama) -> None:
    k = new_key(ark, key_alias="one-at-a-time", max_parallel_requests=1)
    results: list[int] = []
    # The first request stays in flight until the second has been answered, however fast this machine is
    # (a long generation by a fast engine could end first): the stand-in holds it.
    fake_ollama.mode = "hold"
    worker = threading.Thread(target=lambda: results.append(chat(ark, k, model="llama3.2:1b").status_code))
    worker.start()
    try:
        assert wait_until(lambda: fake_ollama.holding >= 1, timeout=10)
        refused = chat(ark, k)
    finally:
        fake_ollama.mode = "normal"
        worker.join(60)
    assert refused.status_code == 429 and "1 requests at once" in refused.json()["error"]["message"]
    assert results == [200]
    assert chat(ark, k, model="llama3.2:1b").status_code == 200  # the slot is free again


def test_master_key_has_no_limits_or_headers(ark: ArkProcess) -> None:
    response = chat(ark, MASTER_KEY)
    assert response.status_code == 200 and "x-ratelimit-limit-requests" not in response.headers


def test_a_reload_during_a_request_does_not_leak_its_slot() -> None:
    limits = RateLimits()
    k = key(max_parallel_requests=1)
    limits.sync([k], [], now=0.0)
    held = limits.admit(k, 0.0)
    limits.sync([k], [], now=1.0)  # the periodic reload while the request runs
    RateLimits.finish(held, 0)
    assert limits.admit(k, 2.0) is not None
