"""ARK's events as webhooks: signatures a Standard Webhooks library accepts, the outbox, the watchers, and a
real `ark up` delivering to a receiver that fails, recovers, and outlives a restart of ARK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from click.testing import CliRunner
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from ark.cli.main import main
from ark.config import load_settings
from ark.config.events import WebhookSettings
from ark.config.types import Secret
from ark.errors import ConfigError
from ark.events import signing, watch
from ark.events.delivery import backoff
from ark.events.outbox import Outbox
from ark.gateway.budgets import Account
from ark.store import Store
from tests.conftest import MASTER_KEY, ArkProcess, LoopThread, start_ark, stop_ark, wait_until
from tests.fakes.ollama import FakeOllama

SECRET = signing.new_secret()
MASTER = {"Authorization": f"Bearer {MASTER_KEY}"}


# -- without a server ---------------------------------------------------------------------------------
def test_a_delivery_is_signed_as_standard_webhooks_libraries_check() -> None:
    body = b'{"type":"key.created","timestamp":"2026-12-07T00:00:00Z","data":{}}'
    stamp = int(datetime.now(UTC).timestamp())
    headers = signing.headers(SECRET, "msg_1", stamp, body, "key.created")
    assert Webhook(SECRET).verify(body, headers) == json.loads(body)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace(b"key", b"kez"), headers)  # a changed body
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(body, headers)  # another secret
    assert signing.new_secret() != SECRET and SECRET.startswith("whsec_")


def test_retries_wait_twice_as_long_each_time_up_to_the_cap_half_of_it_random() -> None:
    assert [backoff(n, 10, 3600, rand=lambda: 1.0) for n in (1, 2, 3, 4)] == [10, 20, 40, 80]
    assert [backoff(n, 10, 3600, rand=lambda: 0.0) for n in (1, 2)] == [5, 10]
    assert backoff(30, 10, 3600, rand=lambda: 1.0) == 3600


def test_webhook_settings_check_the_secret_and_the_event_patterns(tmp_path: Path) -> None:
    def load(table: str) -> Any:
        (tmp_path / "ark.toml").write_text(f'[webhooks.hook]\nurl = "http://127.0.0.1:9/x"\n{table}\n')
        return load_settings(config_path=tmp_path / "ark.toml", data_dir=tmp_path / "d", env={})

    assert load(f'secret = "{SECRET}"').webhooks[0].events == "*"
    with pytest.raises(ConfigError, match="whsec_"):
        load('secret = "not-a-standard-webhooks-secret"')
    with pytest.raises(ConfigError, match="events"):
        load(f'secret = "{SECRET}"\nevents = "budget.*.x*"')
    hook = WebhookSettings(name="h", url="http://x", secret=Secret(SECRET), events="budget.*, key.revoked")
    assert [hook.wants(t) for t in ("budget.threshold", "key.revoked", "key.created")] == [True, True, False]


def test_budget_thresholds_are_reported_once_per_level_and_period() -> None:
    seen = watch.Seen()
    period = datetime(2027, 1, 1, tzinfo=UTC)
    account = Account("key sk-ark-ab…", "research", 10.0, None, 4.9, 0, period, timedelta(days=30))
    accounts = {"key:abc": account}
    assert watch.budgets(accounts, (50, 80, 100), seen) == []
    account.spend = 8.5
    found = watch.budgets(accounts, (50, 80, 100), seen)
    assert [(e[0], e[1]["threshold"], e[1]["account"], e[1]["name"]) for e in found] == [
        ("budget.threshold", 50, "key", "research"),
        ("budget.threshold", 80, "key", "research"),
    ]
    assert watch.budgets(accounts, (50, 80, 100), seen) == []  # once
    account.reset_at, account.spend = period + timedelta(days=30), 5.0  # a new period: they count again
    assert [e[1]["threshold"] for e in watch.budgets(accounts, (50, 80, 100), seen)] == [50]
    account.refused = (account.reset_at,)  # a request refused for the budget: spent, as far as anyone can use it
    found = watch.budgets(accounts, (50, 80, 100), seen)
    assert [(e[1]["threshold"], e[1]["refused"]) for e in found] == [(80, True), (100, True)]
    tokens = Account("team t", "t", None, 1000, 0.0, 800, None, None)  # a token budget, for life
    assert [e[1]["threshold"] for e in watch.budgets({"team:t": tokens}, (50, 80, 100), seen)] == [50, 80]


def test_restarts_and_failed_loads_are_news_only_when_their_counters_move() -> None:
    seen = watch.Seen()
    assert watch.restarts([("engine.restarted", "ollama", 2, "stopped answering")], seen) == []  # the baseline
    assert watch.restarts([("engine.restarted", "ollama", 2, "stopped answering")], seen) == []
    found = watch.restarts(
        [("engine.restarted", "ollama", 3, "stopped answering"), ("service.restarted", "comfyui", 0, "it exited")],
        seen,
    )
    assert found == [("engine.restarted", {"engine": "ollama", "restarts": 3, "reason": "stopped answering"}, None)]
    assert watch.restarts([("service.restarted", "comfyui", 1, "it exited")], seen)[0][1]["service"] == "comfyui"
    assert watch.load_failures(1, [("a", "x")], seen) == []  # the baseline
    found = watch.load_failures(3, [("a", "x"), ("b", "no memory"), ("c", "gone")], seen)
    assert [(e[0], e[1]["model"]) for e in found] == [("model.load_failed", "b"), ("model.load_failed", "c")]


def test_outbox_leases_retries_dead_letters_and_dedupes(tmp_path: Path) -> None:
    store = Store.open(load_settings(env={"ARK_DATA_DIR": str(tmp_path)}))
    try:
        outbox = Outbox(store.engine)
        now = datetime(2026, 12, 7, tzinfo=UTC)
        row = {"webhook": "h", "type": "t", "body": "{}", "created_at": now, "state": "pending", "attempts": 0}
        assert outbox.add([{**row, "id": "msg_a", "dedupe": "once", "next_at": now}]) == 1
        assert outbox.add([{**row, "id": "msg_b", "dedupe": "once", "next_at": now}]) == 0  # the same event
        assert outbox.add([{**row, "id": "msg_c", "dedupe": None, "next_at": now + timedelta(seconds=60)}]) == 1
        taken = outbox.claim("h", now, now + timedelta(seconds=120), 10)
        assert [d.id for d in taken] == ["msg_a"]  # msg_c is not due yet
        assert outbox.claim("h", now, now + timedelta(seconds=120), 10) == []  # leased to the first taker
        assert outbox.claim("other", now + timedelta(hours=1), now + timedelta(hours=2), 10) == []  # not its own
        outbox.failed("msg_a", 500, "HTTP 500", now + timedelta(seconds=5))
        assert outbox.claim("h", now + timedelta(seconds=5), now + timedelta(seconds=125), 10)[0].attempts == 1
        outbox.failed("msg_a", None, "refused", None)
        summary = outbox.summary()
        assert summary["webhooks"]["h"] == {"pending": 1, "delivered": 0, "dead": 1}
        assert summary["dead"][0]["id"] == "msg_a" and summary["dead"][0]["attempts"] == 2
        assert outbox.redeliver("msg_a", now) and outbox.get("msg_a")["state"] == "pending"  # type: ignore[index]
    finally:
        store.close()


# -- a real ARK and a receiver --------------------------------------------------------------------------
class Receiver:
    """A webhook receiver: answers each delivery with the next of ``answers`` (then 200), records them."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, str], bytes, int]] = []
        self.answers: list[int] = []
        self.always: int | None = None
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _hook(self, request: web.Request) -> web.Response:
        status = self.always or (self.answers.pop(0) if self.answers else 200)
        self.got.append((dict(request.headers), await request.read(), status))
        return web.Response(status=status)

    def events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        """The deliveries answered 2xx, verified as a receiver must, of ``event_type``."""
        out = []
        for headers, body, status in self.got:
            if 200 <= status < 300:
                event = Webhook(SECRET).verify(body, {k.lower(): v for k, v in headers.items()})
                if event_type is None or event["type"] == event_type:
                    out.append(event)
        return out


CONFIG = """master_key = "{key}"
[gateway]
listen = "127.0.0.1:{{PORT}}"
[gpu]
device = "virtual"
memory_gb = 16
reserve_gb = 0
[engines.ollama]
kind = "ollama"
url = "{ollama}"
[models."llama3.2:1b"]
output_cost_per_token = 0.25
[events]
retry_base_s = 0.05
retry_max_s = {retry_max}
max_attempts = {attempts}
[webhooks.hook]
url = "{url}"
secret = "{secret}"
"""


@pytest.fixture
def receiver(loop_thread: LoopThread) -> Iterator[Receiver]:
    found = Receiver()
    loop_thread.run(found.start())
    yield found
    loop_thread.run(found.stop())


def start(
    tmp_path: Path, receiver: Receiver, ollama: FakeOllama, attempts: int = 3, retry_max: float = 0.2
) -> ArkProcess:
    text = CONFIG.format(
        key=MASTER_KEY, ollama=ollama.url, url=receiver.url, secret=SECRET, attempts=attempts, retry_max=retry_max
    )
    return start_ark(text, tmp_path)


def new_key(ark: ArkProcess, **fields: Any) -> dict[str, Any]:
    made = httpx.post(ark.url + "/key/generate", headers=MASTER, json=fields, timeout=10)
    assert made.status_code == 200, made.text
    return made.json()  # type: ignore[no-any-return]


def test_keys_created_and_revoked_reach_the_receiver_signed(
    tmp_path: Path, receiver: Receiver, fake_ollama: FakeOllama
) -> None:
    ark = start(tmp_path, receiver, fake_ollama)
    try:
        key = new_key(ark, key_alias="ci")
        assert wait_until(lambda: receiver.events("key.created"), 10)
        created = receiver.events("key.created")[0]
        assert created["data"]["key_alias"] == "ci" and created["data"]["key"] == key["key_name"]
        assert key["key"] not in json.dumps(receiver.events())  # the secret key itself is never sent
        httpx.post(ark.url + "/key/delete", headers=MASTER, json={"keys": [key["key"]]}, timeout=10)
        assert wait_until(lambda: receiver.events("key.revoked"), 10)
        assert receiver.events("key.revoked")[0]["data"]["reason"] == "deleted"
        headers = receiver.got[0][0]
        assert headers["x-ark-event"] == "key.created" and headers["webhook-id"].startswith("msg_")
    finally:
        stop_ark(ark)


def test_failed_deliveries_are_retried_then_dead_and_can_be_sent_again(
    tmp_path: Path, receiver: Receiver, fake_ollama: FakeOllama
) -> None:
    ark = start(tmp_path, receiver, fake_ollama)
    try:
        receiver.answers = [500, 503]
        new_key(ark, key_alias="retried")
        assert wait_until(lambda: receiver.events("key.created"), 10)
        ids = {h["webhook-id"] for h, _, _ in receiver.got}
        assert [s for _, _, s in receiver.got] == [500, 503, 200] and len(ids) == 1  # the same delivery, thrice
        receiver.always = 500
        new_key(ark, key_alias="doomed")
        dead_log = ark.data_dir / "logs" / "webhooks-dead.jsonl"
        assert wait_until(lambda: dead_log.exists() and dead_log.read_text().endswith("\n"), 10)
        line = json.loads(dead_log.read_text().splitlines()[0])
        assert (line["type"], line["attempts"], line["error"], line["event"]["data"]["key_alias"]) == (
            "key.created",
            3,
            "HTTP 500",
            "doomed",
        )
        status = httpx.get(ark.url + "/admin/webhooks", headers=MASTER, timeout=5).json()
        assert status["webhooks"]["hook"]["dead"] == 1 and status["dead"][0]["id"] == line["id"]
        assert wait_until(lambda: ark.metric("ark_webhook_deliveries_total", webhook="hook", outcome="dead") == 1, 5)
        receiver.always = None
        env = {"ARK_DATA_DIR": str(ark.data_dir)}
        again = CliRunner().invoke(main, ["events", "redeliver", line["id"], "--config", str(ark.config)], env=env)
        assert again.exit_code == 0, again.output
        assert wait_until(lambda: len(receiver.events("key.created")) == 2, 10)
    finally:
        stop_ark(ark)


def test_no_event_is_lost_across_a_restart_of_ark(tmp_path: Path, receiver: Receiver, fake_ollama: FakeOllama) -> None:
    receiver.always = 503  # the receiver is down while the key is made
    ark = start(tmp_path, receiver, fake_ollama, attempts=100, retry_max=1.0)
    new_key(ark, key_alias="survivor")
    assert wait_until(lambda: len(receiver.got) >= 1, 10)
    stop_ark(ark)
    receiver.always = None
    ark = start(tmp_path, receiver, fake_ollama, attempts=100, retry_max=1.0)
    try:
        assert wait_until(lambda: receiver.events("key.created"), 15)
        assert receiver.events("key.created")[0]["data"]["key_alias"] == "survivor"
    finally:
        stop_ark(ark)


def test_an_event_emitted_just_before_ark_stops_is_sent_after_it_starts(
    tmp_path: Path, receiver: Receiver, fake_ollama: FakeOllama
) -> None:
    receiver.always = 503
    ark = start(tmp_path, receiver, fake_ollama, attempts=100, retry_max=1.0)
    new_key(ark, key_alias="last-words")
    stop_ark(ark)  # at once: the event may still be in memory
    receiver.always = None
    ark = start(tmp_path, receiver, fake_ollama, attempts=100, retry_max=1.0)
    try:
        assert wait_until(lambda: receiver.events("key.created"), 15)
        assert [e["data"]["key_alias"] for e in receiver.events("key.created")] == ["last-words"]
    finally:
        stop_ark(ark)


def test_budget_thresholds_and_failed_loads_become_events(
    tmp_path: Path, receiver: Receiver, fake_ollama: FakeOllama
) -> None:
    fake_ollama.reply_tokens = 4  # 4 completion tokens at 0.25: one credit a request
    ark = start(tmp_path, receiver, fake_ollama)
    try:
        key = new_key(ark, key_alias="spender", max_budget=4.0)
        body = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        headers = {"Authorization": f"Bearer {key['key']}"}

        def spend(requests: int) -> None:
            for _ in range(requests):
                assert (
                    httpx.post(ark.api + "/chat/completions", headers=headers, json=body, timeout=30).status_code == 200
                )

        spend(2)
        assert wait_until(lambda: len(receiver.events("budget.threshold")) == 1, 10)
        spend(2)
        assert wait_until(lambda: len(receiver.events("budget.threshold")) == 3, 10)
        thresholds = [(e["data"]["threshold"], e["data"]["name"]) for e in receiver.events("budget.threshold")]
        assert thresholds == [(50, "spender"), (80, "spender"), (100, "spender")]
        assert receiver.events("budget.threshold")[-1]["data"]["spend"] == 4.0
        fake_ollama.vram = fake_ollama.system_memory = 1024  # the next load cannot fit anywhere on Ollama's side
        question = {**body, "model": "nomic-embed-text:latest"}
        refused = httpx.post(ark.api + "/chat/completions", headers=MASTER, json=question, timeout=30)
        assert refused.status_code == 503
        assert wait_until(lambda: receiver.events("model.load_failed"), 10)
        failed = receiver.events("model.load_failed")[0]["data"]
        assert failed["model"] == "nomic-embed-text:latest" and "system memory" in failed["error"]
    finally:
        stop_ark(ark)


def test_ark_events_test_sends_a_signed_sample(tmp_path: Path, receiver: Receiver) -> None:
    sent = CliRunner().invoke(
        main, ["events", "test", receiver.url, "--secret", SECRET], env={"ARK_DATA_DIR": str(tmp_path)}
    )
    assert sent.exit_code == 0, sent.output
    assert "delivered" in sent.output and receiver.events("ark.test")
    receiver.always = 500
    failed = CliRunner().invoke(
        main, ["events", "test", receiver.url, "--secret", SECRET], env={"ARK_DATA_DIR": str(tmp_path)}
    )
    assert failed.exit_code == 1 and "500" in failed.output
    secret = CliRunner().invoke(main, ["events", "secret"])
    assert secret.output.strip().startswith("whsec_") and Webhook(secret.output.strip())
