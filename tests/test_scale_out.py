"""Two gateways on one database enforce one budget and one rate limit together (SQLite and PostgreSQL).

First the allotments in the database alone (ark/store/allotments.py), hammered from threads; then two real
`ark up` processes sharing one database, each with its own data directory as if on two hosts.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from ark.config import load_settings
from ark.gateway.allotments import STALE_S, Allotments
from ark.gateway.budgets import Budgets
from ark.gateway.ratelimits import RateLimits
from ark.store import Store
from ark.store.allotments import Refusal, Want, beat, grant, list_allotments, register, release, take_rate
from ark.store.ledger import Ledger, UsageRow
from ark.store.tables import api_keys, gateways
from tests.conftest import MASTER_KEY, ArkProcess, start_ark, stop_ark, wait_until
from tests.fakes.ollama import FakeOllama

MODEL = "llama3.2:1b"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    return str(request.getfixturevalue("postgres").create_database())


@pytest.fixture
def store(tmp_path: Path, store_url: str) -> Iterator[Store]:
    settings = load_settings(env={"ARK_DATA_DIR": str(tmp_path / "data"), "ARK_STORE_URL": store_url})
    opened = Store.open(settings)
    yield opened
    opened.close()


def make_key(store: Store, **limits: Any) -> str:
    _, key = store.keys.create_key({"key_alias": "shared", **limits})
    return f"key:{key.id}"


# -- the allotments alone --------------------------------------------------------------------------


def test_concurrent_grants_never_exceed_the_budget(store: Store) -> None:
    subject = make_key(store, max_budget=10.0, max_tokens_budget=1000, max_parallel_requests=3)
    holders = [f"h{i}" for i in range(4)]
    for holder in holders:
        register(store.engine, holder, "test", 1, time.time())
    granted: dict[str, list[float]] = {h: [] for h in holders}
    refused: list[Refusal] = []

    def worker(holder: str) -> None:
        for _ in range(15):
            result = grant(store.engine, holder, [Want(subject, cost=0.5, cost_extra=1.0, tokens=10)], time.time())
            if isinstance(result, Refusal):
                refused.append(result)
            else:
                granted[holder].append(result[subject].cost)

    threads = [threading.Thread(target=worker, args=(h,)) for h in holders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = sum(sum(g) for g in granted.values())
    assert 9.5 <= total <= 10.0 + 1e-9  # all of it handed out, never more
    assert refused and {r.limit for r in refused} == {"budget"} and refused[0].maximum == 10.0
    allotted = {row["holder"]: row["cost"] for row in list_allotments(store.engine)}
    assert allotted == pytest.approx({h: sum(g) for h, g in granted.items() if g})
    # slots: three at once across every holder
    results = [grant(store.engine, h, [Want(subject, slots=1)], time.time()) for h in holders]
    assert [isinstance(r, Refusal) for r in results] == [False, False, False, True]
    release(store.engine, "h0", {subject: (0.0, 0, 1)}, time.time())
    assert not isinstance(grant(store.engine, "h3", [Want(subject, slots=1)], time.time()), Refusal)


def test_the_ledger_moves_spend_from_the_allotment_into_the_key(store: Store, tmp_path: Path) -> None:
    subject = make_key(store, max_budget=10.0)
    ledger = Ledger(store.engine, tmp_path / "ledger", shared=True)
    seen: list[dict[str, tuple[float, int, int]]] = []
    ledger._on_ingested = seen.append
    register(store.engine, ledger.holder, "test", 1, time.time())
    assert not isinstance(grant(store.engine, ledger.holder, [Want(subject, cost=4.0)], time.time()), Refusal)
    key_id = subject.split(":", 1)[1]

    async def spend() -> None:
        ledger.open()
        for i in range(3):
            row = UsageRow(f"r{i}", datetime.now(UTC).isoformat(), "/v1/chat/completions", 200, 1.0, key_id=key_id)
            row.cost, row.completion_tokens = 1.0, 8
            ledger.record(row)
        await ledger.close()

    asyncio.run(spend())
    assert seen == [{subject: (3.0, 24, 0)}]
    assert store.keys.get_key(key_id).spend == 3.0  # type: ignore[union-attr]
    assert list_allotments(store.engine)[0]["cost"] == pytest.approx(1.0)  # spend + allotted still 4: none twice
    # another holder now finds 10 - 3 - 1 = 6 credits of room
    register(store.engine, "other", "test", 1, time.time())
    refusal = grant(store.engine, "other", [Want(subject, cost=6.5)], time.time())
    assert isinstance(refusal, Refusal) and refusal.used == pytest.approx(4.0)
    assert not isinstance(grant(store.engine, "other", [Want(subject, cost=6.0)], time.time()), Refusal)


def test_a_shared_rate_bucket_hands_out_one_minutes_worth(store: Store) -> None:
    subject = make_key(store, rpm_limit=10, tpm_limit=100)
    now = time.time()
    first = take_rate(store.engine, "a", subject, 10, 100, take=1, extra=4, now=now)
    second = take_rate(store.engine, "b", subject, 10, 100, take=1, extra=4, charge=150, now=now)
    assert (first.taken, second.taken) == (5, 3)  # the second leaves half of what is left
    assert second.tokens == -50  # in debt: nobody gets tokens until it refills
    taken = sum(take_rate(store.engine, "c", subject, 10, 100, take=1, now=now).taken for _ in range(5))
    assert taken == 2 and take_rate(store.engine, "c", subject, 10, 100, take=1, now=now).taken == 0
    later = take_rate(store.engine, "c", subject, 10, 100, give_back=3, now=now + 6)  # 1 refilled, 3 back
    assert later.requests == pytest.approx(4.0) and later.tokens == pytest.approx(-40.0)


def test_a_new_budget_period_starts_in_the_database(store: Store) -> None:
    subject = make_key(store, max_budget=1.0, budget_duration="1d")
    key_id = subject.split(":", 1)[1]
    with store.engine.begin() as connection:  # spent, and the period ended an hour ago
        connection.execute(
            update(api_keys)
            .where(api_keys.c.id == key_id)
            .values(spend=1.0, budget_reset_at=datetime.fromtimestamp(time.time() - 3600, UTC))
        )
    result = grant(store.engine, "a", [Want(subject, cost=0.5)], time.time())
    assert not isinstance(result, Refusal) and result[subject].spend == 0.0
    key = store.keys.get_key(key_id)
    assert key is not None and key.spend == 0.0 and key.budget_reset_at is not None
    assert key.budget_reset_at.timestamp() == pytest.approx(time.time() + 23 * 3600, abs=60)


def test_a_silent_gateways_allotments_are_reclaimed(store: Store, tmp_path: Path) -> None:
    subject = make_key(store, max_budget=10.0)
    register(store.engine, "gone", "elsewhere", 99, time.time() - STALE_S - 1)
    grant(store.engine, "gone", [Want(subject, cost=10.0)], time.time() - STALE_S - 1)
    with store.engine.begin() as connection:  # grant() beat the heart; make it old again
        connection.execute(update(gateways).values(heartbeat=time.time() - STALE_S - 1))
    ledger = Ledger(store.engine, tmp_path / "ledger", shared=True)
    ledger.open()
    mine = Allotments(store.engine, ledger, Budgets(shared=True), RateLimits(shared=True))
    asyncio.run(mine.start())
    assert asyncio.run(mine.reap()) == ["gone"]
    assert [row["holder"] for row in list_allotments(store.engine)] == []
    assert not beat(store.engine, "gone", time.time())  # it would learn it lost its allotments
    with store.engine.connect() as connection:
        assert connection.execute(select(gateways.c.holder)).scalars().all() == [ledger.holder]


# -- two real gateways ----------------------------------------------------------------------------

CONFIG = """master_key = "{key}"
[gateway]
listen = "127.0.0.1:{{PORT}}"
[store]
url = "{db}"
shared = "yes"
[engines.ollama]
kind = "ollama"
url = "{ollama}"
max_parallel = 64
[models."{model}"]
output_cost_per_token = 0.125
"""


@pytest.fixture
def pair(tmp_path: Path, store_url: str, fake_ollama: FakeOllama) -> Iterator[tuple[ArkProcess, ArkProcess]]:
    fake_ollama.reply_tokens = 8  # 8 tokens at 0.125: every request costs exactly one credit
    text = CONFIG.format(key=MASTER_KEY, db=store_url, ollama=fake_ollama.url, model=MODEL)
    (tmp_path / "a").mkdir()
    a = start_ark(text, tmp_path / "a")
    (tmp_path / "b").mkdir()
    try:
        b = start_ark(text, tmp_path / "b")
    except Exception:
        stop_ark(a)
        raise
    yield a, b
    stop_ark(a)
    stop_ark(b)


def new_key(pair: tuple[ArkProcess, ArkProcess], **body: Any) -> str:
    a, b = pair
    master = {"Authorization": f"Bearer {MASTER_KEY}"}
    key = str(httpx.post(a.url + "/key/generate", headers=master, json={"key_alias": "pair", **body}).json()["key"])
    # the other gateway looks a key it does not know up in the database: usable there at once
    assert httpx.get(b.api + "/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    return key


def storm(
    pair: tuple[ArkProcess, ArkProcess], key: str, count: int, answered: list[httpx.Response] | None = None
) -> list[httpx.Response]:
    """``count`` chats at once, alternating between the gateways; the answers in the order they came, each
    appended to ``answered`` as it arrives (for a test that watches from another thread)."""
    out = [] if answered is None else answered

    async def run() -> None:
        limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(timeout=60, limits=limits, headers=headers) as client:

            async def one(i: int) -> None:
                out.append(await client.post(pair[i % 2].api + "/chat/completions", json=CHAT))

            await asyncio.gather(*(one(i) for i in range(count)))

    asyncio.run(run())
    return out


def chat_logs(ark: ArkProcess, key: str) -> list[dict[str, Any]]:
    rows = httpx.get(
        ark.url + "/spend/logs",
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
        params={"api_key": key, "limit": "1000"},
    ).json()
    return [row for row in rows if row["call_type"] == "/v1/chat/completions"]


def test_two_gateways_never_double_spend_one_budget(pair: tuple[ArkProcess, ArkProcess]) -> None:
    key = new_key(pair, max_budget=20)
    # one request on each first: both have an allotment (with headroom) when the storm starts
    responses = storm(pair, key, 2) + storm(pair, key, 200)
    statuses = [r.status_code for r in responses]
    served = statuses.count(200)
    assert set(statuses) <= {200, 429} and 18 <= served <= 20, sorted(statuses)
    assert {r.json()["error"]["type"] for r in responses if r.status_code == 429} == {"insufficient_quota"}
    assert wait_until(lambda: len(chat_logs(pair[0], key)) == 202, timeout=10)
    rows = chat_logs(pair[1], key)
    assert len([row for row in rows if row["status"] == 200]) == served
    info = httpx.get(
        pair[1].url + "/key/info", headers={"Authorization": f"Bearer {MASTER_KEY}"}, params={"key": key}
    ).json()["info"]
    assert info["spend"] == pytest.approx(served * 1.0) and info["spend"] <= 20


def test_two_gateways_share_one_rate_limit(pair: tuple[ArkProcess, ArkProcess]) -> None:
    key = new_key(pair, rpm_limit=10)
    started = time.monotonic()
    responses = [
        httpx.post(pair[i % 2].api + "/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=CHAT)
        for i in range(30)
    ]
    refill = (time.monotonic() - started) * 10 / 60
    served = [r for r in responses if r.status_code == 200]
    assert 10 <= 1 + len(served) <= 10 + refill + 1  # new_key's one successful GET /v1/models counts too
    refused = [r for r in responses if r.status_code == 429]
    assert len(served) + len(refused) == 30
    assert {r.json()["error"]["code"] for r in refused} == {"rate_limit_exceeded"}
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
    assert {r.headers["x-ratelimit-limit-requests"] for r in responses} == {"10"}


def test_two_gateways_share_one_parallel_limit(pair: tuple[ArkProcess, ArkProcess], fake_ollama: FakeOllama) -> None:
    key = new_key(pair, max_parallel_requests=2)
    # The stand-in holds what reaches it until four answers are in: the two admitted requests cannot end
    # before the others are refused, however long this machine takes to send all six.
    fake_ollama.mode = "hold"
    answered: list[httpx.Response] = []
    stormer = threading.Thread(target=storm, args=(pair, key, 6, answered))
    stormer.start()
    try:
        assert wait_until(lambda: len(answered) >= 4, timeout=30)
    finally:
        fake_ollama.mode = "normal"
        stormer.join(60)
    statuses = [r.status_code for r in answered]
    assert sorted(statuses) == [200, 200, 429, 429, 429, 429]
    # once they are done, the slots are free again, on either gateway
    assert wait_until(lambda: storm(pair, key, 2)[0].status_code == 200, timeout=5)


def test_a_killed_gateways_spend_and_allotments_are_settled_at_its_restart(
    pair: tuple[ArkProcess, ArkProcess], store_url: str, tmp_path: Path
) -> None:
    key = new_key(pair, max_budget=20)
    served = [r.status_code for r in storm(pair, key, 10)].count(200)
    a, b = pair
    b.proc.kill()  # SIGKILL: its journal and its allotments stay behind
    b.proc.wait()
    dead = {path.name.split(".")[0] for path in (b.data_dir / "ledger").glob("*.jsonl")}
    assert len(dead) == 1
    engine = Store.open(load_settings(env={"ARK_DATA_DIR": str(tmp_path), "ARK_STORE_URL": store_url})).engine
    try:
        assert dead <= {row["holder"] for row in list_allotments(engine)}
        config = b.config.read_text().replace(b.url.rsplit(":", 1)[1], "{PORT}")
        again = start_ark(config, tmp_path / "b")  # replays the journal, then drops the allotments
        try:
            assert dead.isdisjoint(row["holder"] for row in list_allotments(engine))
            info = httpx.get(
                a.url + "/key/info", headers={"Authorization": f"Bearer {MASTER_KEY}"}, params={"key": key}
            ).json()["info"]
            assert info["spend"] == pytest.approx(served * 1.0)  # every served request, from both gateways
        finally:
            stop_ark(again)
    finally:
        engine.dispose()
