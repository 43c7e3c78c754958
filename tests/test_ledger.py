"""The usage ledger: a row per request, /spend/logs, daily rollups, journal replay, and SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from ark.config import load_settings
from ark.store import Store
from ark.store.ledger import Ledger, UsageRow, ingest, read_journal, usage_count
from ark.store.tables import usage_daily
from tests.conftest import MASTER_KEY, ArkProcess, embedded_ark, stop_ark, wait_until

ALIAS = '[aliases]\n"gpt-4" = "tiny"\n'
HELLO = [{"role": "user", "content": "hello"}]


def master(ark: ArkProcess, method: str, path: str, **kwargs: object) -> httpx.Response:
    return httpx.request(
        method, ark.url + path, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=30, **kwargs
    )  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return ""
    return str(request.getfixturevalue("postgres").create_database())


def test_every_request_is_in_the_ledger_with_its_numbers(tmp_path: Path, tiny_gguf: Path, store_url: str) -> None:
    data = tmp_path / "data"
    ark = embedded_ark(tmp_path, tiny_gguf, store=store_url, extra=ALIAS)
    try:
        created = master(ark, "POST", "/key/generate", json={"key_alias": "ledger", "user_id": "u@example.com"}).json()
        headers = {"Authorization": f"Bearer {created['key']}"}
        ok = httpx.post(
            ark.api + "/chat/completions",
            headers=headers,
            timeout=30,
            json={"model": "gpt-4", "messages": HELLO, "max_tokens": 3},
        )
        assert ok.status_code == 200 and len(ok.headers["x-request-id"]) == 24
        missing = httpx.post(
            ark.api + "/chat/completions", headers=headers, timeout=30, json={"model": "nope", "messages": HELLO}
        )
        assert missing.status_code == 404

        def logs() -> list[dict[str, object]]:
            response = master(ark, "GET", "/spend/logs", params={"api_key": created["key"]})
            assert response.status_code == 200
            return response.json()  # type: ignore[no-any-return]

        assert wait_until(lambda: len(logs()) == 2, timeout=5)
        newest, oldest = logs()
        assert oldest["status"] == 200 and oldest["model"] == "tiny" and oldest["model_group"] == "gpt-4"
        assert oldest["completion_tokens"] == 3 and oldest["prompt_tokens"] > 0
        assert oldest["key_alias"] == "ledger" and oldest["user"] == "u@example.com"
        assert oldest["request_id"] == ok.headers["x-request-id"]  # a client can quote it to the operator
        assert oldest["api_key"] == created["token"] and oldest["request_duration_ms"] > 0
        assert newest["status"] == 404 and newest["model"] is None
        today = datetime.now(UTC).strftime("%Y-%m-%d")
        dated = master(
            ark, "GET", "/spend/logs", params={"api_key": created["key"], "start_date": today, "end_date": today}
        )
        assert len(dated.json()) == 2
        assert master(ark, "GET", "/spend/logs", params={"start_date": "yesterday"}).status_code == 400
    finally:
        stop_ark(ark)
    # after a clean stop the journal is empty and removed: everything is in the database
    assert not list((data / "ledger").glob("*.jsonl"))


def test_journal_replay_counts_each_request_once(tmp_path: Path, store_url: str) -> None:
    settings = load_settings(env={"ARK_DATA_DIR": str(tmp_path), "ARK_STORE_URL": store_url})
    store = Store.open(settings)
    try:
        ledger = Ledger(store.engine, tmp_path / "ledger")

        async def write_some() -> None:
            ledger.open()
            for i in range(5):
                ledger.record(
                    UsageRow(
                        request_id=f"r{i}",
                        time=datetime.now(UTC).isoformat(),
                        path="/v1/x",
                        status=200,
                        latency_ms=1.0,
                        key_id="k",
                        model_served="m",
                        prompt_tokens=2,
                        completion_tokens=3,
                    )
                )
            await ledger.flush()

        asyncio.run(write_some())
        journal = next((tmp_path / "ledger").glob("*.jsonl"))
        os.close(ledger._fd)  # as if the process died: the journal stays, unlocked
        rows = read_journal(journal)
        assert len(rows) == 5
        assert ingest(store.engine, rows).rows == 0  # already in the database: nothing new
        replay = Ledger(store.engine, tmp_path / "ledger")
        assert replay.open() == 0 and not journal.exists()
        assert usage_count(store.engine) == 5
        with store.engine.connect() as connection:
            daily = connection.execute(select(usage_daily)).mappings().all()
        assert [(d["requests"], d["prompt_tokens"], d["completion_tokens"]) for d in daily] == [(5, 10, 15)]
    finally:
        store.close()


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    journal = tmp_path / "j.jsonl"
    journal.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c": ')
    assert read_journal(journal) == [{"a": 1}, {"b": 2}]


def test_sigkill_loses_no_completed_request(tmp_path: Path, tiny_gguf: Path) -> None:
    data = tmp_path / "data"
    ark = embedded_ark(tmp_path, tiny_gguf, extra=ALIAS)
    created = master(ark, "POST", "/key/generate", json={"key_alias": "kill"}).json()
    completed = 0
    lock = threading.Lock()
    stop = threading.Event()

    def load() -> None:
        nonlocal completed
        with httpx.Client(timeout=10, headers={"Authorization": f"Bearer {created['key']}"}) as client:
            while not stop.is_set():
                try:
                    response = client.post(
                        ark.api + "/chat/completions", json={"model": "gpt-4", "messages": HELLO, "max_tokens": 1}
                    )
                except httpx.HTTPError:
                    return  # the server died under us: this response never completed
                if response.status_code == 200:
                    with lock:
                        completed += 1

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        assert wait_until(lambda: completed >= 40, timeout=60)
        os.kill(ark.proc.pid, signal.SIGKILL)
        ark.proc.wait(10)
    finally:  # when the load never got going too: no thread or process outlives the test
        stop.set()
        for thread in threads:
            thread.join(10)
        if ark.proc.poll() is None:
            stop_ark(ark)
    assert list((data / "ledger").glob("*.jsonl")), "the dead process left its journal"

    restarted = embedded_ark(tmp_path, tiny_gguf, extra=ALIAS)
    try:
        logs = master(restarted, "GET", "/spend/logs", params={"api_key": created["key"], "limit": "100000"}).json()
        ok = [row for row in logs if row["status"] == 200]
        assert len(ok) >= completed > 0, (len(ok), completed)
        assert len({row["request_id"] for row in logs}) == len(logs)  # replay counted nothing twice
    finally:
        stop_ark(restarted)


def test_retention_prunes_old_rows_keeps_rollups_and_gives_space_back(tmp_path: Path) -> None:
    from sqlalchemy import text

    from ark.store.ledger import prune

    settings = load_settings(env={"ARK_DATA_DIR": str(tmp_path)})
    store = Store.open(settings)
    try:
        now = datetime(2026, 11, 27, tzinfo=UTC)
        old = [
            {
                "request_id": f"old{i}",
                "time": "2026-08-01T12:00:00+00:00",
                "path": "/v1/chat/completions",
                "status": 200,
                "latency_ms": 1.0,
                "ttft_ms": None,
                "key_id": None,
                "key_alias": None,
                "team_id": None,
                "user_id": None,
                "model_requested": "m",
                "model_served": "m",
                "prompt_tokens": 1,
                "completion_tokens": 1,
                "cost": 0.0,
            }
            for i in range(3000)
        ]
        recent = [{**old[0], "request_id": "new", "time": "2026-11-26T12:00:00+00:00"}]
        ingest(store.engine, old + recent)

        def pages() -> int:
            with store.engine.connect() as connection:
                return int(connection.execute(text("PRAGMA page_count")).scalar_one())

        before = pages()
        assert prune(store.engine, retention_days=90, now=now) == 3000
        assert usage_count(store.engine) == 1
        assert pages() < before  # the file shrank: no manual VACUUM needed
        with store.engine.connect() as connection:
            days = connection.execute(select(usage_daily.c.day, usage_daily.c.requests)).all()
        assert sorted(str(d) for d, _ in days) == ["2026-08-01", "2026-11-26"]  # rollups stay
        assert prune(store.engine, retention_days=90, now=now) == 0
    finally:
        store.close()


def test_journal_times_and_request_ids_are_cheap_and_exact() -> None:
    from ark.gateway.exchange import request_id, utc_iso

    for stamp in (0.0, 1795775058.0, 1795775058.25, 1795775058.5):  # exactly representable
        assert utc_iso(stamp) == datetime.fromtimestamp(stamp, UTC).isoformat(timespec="microseconds")
    ids = [request_id() for _ in range(1000)]
    assert len(set(ids)) == 1000 and {len(i) for i in ids} == {24} and len({i[:12] for i in ids}) == 1
