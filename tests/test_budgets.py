"""Budgets: reserve, settle, never overspend — the accounting alone, then 200 concurrent requests on a real gateway."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from ark.errors import InsufficientQuota
from ark.gateway.budgets import FREE, Budgets, Price
from ark.store.keys import Key, Person, Team
from tests.conftest import MASTER_KEY, embedded_ark, stop_ark, wait_until

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
PAID = Price(input=0.0, output=0.125)


def limits(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "models": (),
        "max_budget": None,
        "budget_duration": None,
        "budget_reset_at": None,
        "max_tokens_budget": None,
        "spend": 0.0,
        "tokens_used": 0,
        "tpm_limit": None,
        "rpm_limit": None,
        "max_parallel_requests": None,
        "blocked": False,
        "metadata": {},
        "created_at": NOW,
        "updated_at": NOW,
    }
    return {**base, **overrides}


def key(**overrides: object) -> Key:
    fields = {
        "id": "k1",
        "key_prefix": "sk-ark-k1",
        "key_alias": None,
        "user_id": None,
        "team_id": None,
        "expires_at": None,
    }
    fields.update(overrides)
    own = {name: fields.pop(name) for name in list(fields) if name in limits()}
    return Key(**limits(**own), **fields)  # type: ignore[arg-type]


def test_reservations_cannot_oversubscribe_a_budget() -> None:
    budgets = Budgets()
    k = key(max_budget=3.0)
    budgets.sync([k], [])
    held = [budgets.reserve(k, PAID, 0, 8, 60, NOW) for _ in range(3)]  # 1.0 credit each
    with pytest.raises(InsufficientQuota, match="budget of 3 credits"):
        budgets.reserve(k, PAID, 0, 8, 60, NOW)
    Budgets.settle(held[0], 0.5, 4)  # it cost less than reserved: room for another
    assert budgets.reserve(k, PAID, 0, 4, 60, NOW) is not None
    Budgets.settle(held[0], 0.5, 4)  # settling twice changes nothing
    assert budgets.accounts["key:k1"].spend == 0.5


def test_free_models_pass_a_spent_credit_budget_but_not_a_spent_token_budget() -> None:
    budgets = Budgets()
    k = key(max_budget=1.0, spend=1.0, max_tokens_budget=100, tokens_used=90)
    budgets.sync([k], [])
    with pytest.raises(InsufficientQuota):
        budgets.reserve(k, PAID, 0, 1, 60, NOW)
    assert budgets.reserve(k, FREE, 2, 8, 60, NOW) is not None  # 10 tokens: fits the token budget
    with pytest.raises(InsufficientQuota, match="90 of its budget of 100 tokens"):
        budgets.reserve(k, FREE, 2, 8, 60, NOW)


def test_team_budget_binds_every_key_of_the_team() -> None:
    budgets = Budgets()
    team = Team(**limits(max_budget=1.0), id="t1", alias="lab")  # type: ignore[arg-type]
    a, b = key(id="a", team_id="t1"), key(id="b", team_id="t1")
    budgets.sync([a, b], [team])
    assert budgets.reserve(a, PAID, 0, 8, 60, NOW) is not None
    with pytest.raises(InsufficientQuota, match="team lab"):
        budgets.reserve(b, PAID, 0, 8, 60, NOW)


def test_budget_period_resets() -> None:
    budgets = Budgets()
    k = key(max_budget=1.0, spend=1.0, budget_duration="1d", budget_reset_at=NOW + timedelta(hours=1))
    budgets.sync([k], [])
    with pytest.raises(InsufficientQuota):
        budgets.reserve(k, PAID, 0, 8, 60, NOW)
    assert budgets.reserve(k, PAID, 0, 8, 60, NOW + timedelta(hours=2)) is not None
    assert budgets.rolled == {"key:k1": NOW + timedelta(days=1, hours=1)}


def test_gpu_time_is_reserved_for_the_whole_timeout() -> None:
    budgets = Budgets()
    k = key(max_budget=10.0)
    budgets.sync([k], [])
    with pytest.raises(InsufficientQuota, match="up to 30 credits"):
        budgets.reserve(k, Price(gpu_second=0.5), 0, 8, 60, NOW)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_200_concurrent_requests_never_overspend(
    tmp_path: Path, tiny_gguf: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    store = "" if backend == "sqlite" else request.getfixturevalue("postgres").create_database()
    ark = embedded_ark(
        tmp_path,
        tiny_gguf,
        models=("tiny", "free"),
        store=store,
        extra="[models.tiny]\noutput_cost_per_token = 0.125\n",
    )
    try:
        created = httpx.post(
            ark.url + "/key/generate",
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
            json={"key_alias": "race", "max_budget": 20},
        ).json()
        headers = {"Authorization": f"Bearer {created['key']}"}
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}  # 1 credit

        async def storm() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
            async with httpx.AsyncClient(timeout=60, limits=limits, headers=headers) as client:
                return list(
                    await asyncio.gather(*(client.post(ark.api + "/chat/completions", json=body) for _ in range(200)))
                )

        responses = asyncio.run(storm())
        statuses = [r.status_code for r in responses]
        assert statuses.count(200) == 20 and statuses.count(429) == 180, sorted(set(statuses))
        refused = next(r for r in responses if r.status_code == 429).json()["error"]
        assert refused["type"] == "insufficient_quota" and refused["code"] == "insufficient_quota"
        # a free model still answers once the credit budget is spent
        free = httpx.post(ark.api + "/chat/completions", headers=headers, timeout=30, json={**body, "model": "free"})
        assert free.status_code == 200

        def logs() -> list[dict[str, object]]:
            return httpx.get(
                ark.url + "/spend/logs",
                headers={"Authorization": f"Bearer {MASTER_KEY}"},
                params={"api_key": created["key"], "limit": "1000"},
            ).json()  # type: ignore[no-any-return]

        assert wait_until(lambda: len(logs()) == 201, timeout=10)
        paid = [row for row in logs() if row["status"] == 200 and row["model"] == "tiny"]
        assert len(paid) == 20 and sum(float(row["spend"]) for row in paid) == 20.0  # type: ignore[arg-type]
        info = httpx.get(
            ark.url + "/key/info", headers={"Authorization": f"Bearer {MASTER_KEY}"}, params={"key": created["key"]}
        ).json()["info"]
        assert info["spend"] == 20.0
    finally:
        stop_ark(ark)


def test_a_reload_during_a_request_keeps_its_reservation() -> None:
    budgets = Budgets()
    k = key(max_budget=2.0)
    budgets.sync([k], [])
    held = budgets.reserve(k, PAID, 0, 8, 60, NOW)
    budgets.sync([k], [])  # the periodic reload while the request runs
    Budgets.settle(held, 1.0, 8)
    account = budgets.accounts["key:k1"]
    assert (account.spend, account.reserved_cost) == (1.0, 0.0)


def test_a_period_left_alone_for_years_rolls_in_one_step() -> None:
    from ark.store.keys import next_reset

    start = datetime(2020, 1, 1, tzinfo=UTC)
    # a one-second budget untouched for six years: the next boundary after now, computed, not walked to
    assert next_reset(start, timedelta(seconds=1), NOW) == NOW.replace(microsecond=0) + timedelta(seconds=1)
    assert next_reset(start, timedelta(days=7), start + timedelta(days=7)) == start + timedelta(days=14)
    assert next_reset(start + timedelta(days=1), timedelta(days=7), start) == start + timedelta(days=1)
    budgets = Budgets()
    k = key(max_budget=1.0, spend=1.0, budget_duration="1s", budget_reset_at=start)
    budgets.sync([k], [])
    budgets.roll_all(NOW)
    account = budgets.accounts["key:k1"]
    assert account.spend == 0.0 and account.reset_at == NOW + timedelta(seconds=1)


def person(**overrides: object) -> Person:
    own = {name: overrides.pop(name) for name in list(overrides) if name in limits()}
    fields = {"id": "u1", "name": "bob", "email": "bob@example.com", "disabled": False, **overrides}
    return Person(**limits(**own), **fields)  # type: ignore[arg-type]


def test_a_persons_budget_binds_with_any_key_and_with_the_master_key() -> None:
    budgets = Budgets()
    k, bob = key(), person(max_budget=2.0)
    budgets.sync([k], [], [bob])
    assert budgets.reserve(k, PAID, 0, 8, 60, NOW) is None  # the key alone has no budget
    held = budgets.reserve(k, PAID, 0, 8, 60, NOW, "u1")  # 1 credit on bob's account
    assert held is not None and [a.name for a in held.accounts] == ["user bob"]
    master = budgets.reserve(None, PAID, 0, 8, 60, NOW, "u1")  # the console's master key, calling for bob
    assert master is not None
    with pytest.raises(InsufficientQuota, match="The user bob has spent 0 of their budget of 2 credits"):
        budgets.reserve(None, PAID, 0, 8, 60, NOW, "u1")
    assert budgets.reserve(None, PAID, 0, 8, 60, NOW) is None  # the master key for nobody: no budget
