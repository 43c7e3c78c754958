"""Usage and budgets per person: a UI's service key names whom each request is for, and that person is
charged and limited like a key (`ark up` as a real process, the embedded engine, SQLite)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from ark.cli.main import main
from tests.conftest import MASTER_KEY, ArkProcess, embedded_ark, stop_ark, wait_until

ADMIN = {"Authorization": f"Bearer {MASTER_KEY}"}
PERSON = "X-OpenWebUI-User-Email"
BODY = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}  # 0.5 credits


@pytest.fixture(scope="module")
def ark(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[ArkProcess]:
    tmp = tmp_path_factory.mktemp("people")
    process = embedded_ark(tmp, tiny_gguf, extra="[models.tiny]\noutput_cost_per_token = 0.125\n")
    for name in ("alice", "bob", "carol", "dave"):
        email = f"{name}@example.com"
        added = cli(process, "users", "add", name, "--email", email, "--password-stdin", input="pw-" * 6)
        assert added.exit_code == 0, added.output
    yield process
    stop_ark(process)


def cli(ark: ArkProcess, *args: str, input: str | None = None) -> Result:
    runner = CliRunner()
    return runner.invoke(main, [*args, "--config", str(ark.config), "--data-dir", str(ark.data_dir)], input=input)


def key(ark: ArkProcess, **fields: object) -> str:
    created = httpx.post(ark.url + "/key/generate", headers=ADMIN, json=fields, timeout=10)
    assert created.status_code == 200, created.text
    return str(created.json()["key"])


def limits(ark: ArkProcess, user: str, **fields: object) -> dict[str, object]:
    reply = httpx.post(ark.url + "/user/update", headers=ADMIN, json={"user": user, **fields}, timeout=10)
    assert reply.status_code == 200, reply.text
    return reply.json()  # type: ignore[no-any-return]


def chat(ark: ArkProcess, secret: str, person: str | bytes | None = None) -> httpx.Response:
    headers: dict[str, str | bytes] = {"Authorization": f"Bearer {secret}"}
    if person is not None:
        headers[PERSON] = person
    return httpx.post(ark.api + "/chat/completions", headers=headers, json=BODY, timeout=60)


def rows(ark: ArkProcess, count: int, **query: str) -> list[dict[str, object]]:
    found: list[dict[str, object]] = []

    def written() -> bool:
        nonlocal found
        found = httpx.get(ark.url + "/spend/logs", headers=ADMIN, params={"limit": "1000", **query}, timeout=10).json()
        return len(found) >= count

    assert wait_until(written), found
    return found


def test_a_trusted_key_charges_the_person_it_names(ark: ArkProcess) -> None:
    service = key(ark, key_alias="open-webui", trust_user_headers=True)
    limits(ark, "alice", max_budget=1.0)  # two requests' worth
    served = [chat(ark, service, "Alice@Example.com").status_code for _ in range(3)]
    assert served == [200, 200, 429]
    refused = chat(ark, service, "alice@example.com").json()["error"]
    assert refused["type"] == "insufficient_quota" and "user alice" in refused["message"]
    # bob has no limits of his own: the same key still serves him; a person ARK does not know is refused
    assert chat(ark, service, "bob@example.com").status_code == 200
    stranger = chat(ark, service, "stranger@example.org")
    assert stranger.status_code == 403 and "ark users add" in stranger.json()["error"]["message"]
    alice = rows(ark, 4, user="alice@example.com")
    assert len(alice) == 4 and {r["end_user"] for r in alice} == {"alice"}
    assert sum(r["status"] == 200 for r in alice) == 2  # type: ignore[misc]
    assert [r["end_user"] for r in rows(ark, 1, user="bob")] == ["bob"]
    info = httpx.get(ark.url + "/user/info", headers=ADMIN, params={"user": "alice"}, timeout=10).json()
    assert info["max_budget"] == 1.0 and 0 < info["spend"] <= 1.0
    assert ark.metric("ark_user_requests_total", user="alice") == 4
    assert ark.metric("ark_user_spend_total", user="bob") > 0


def test_the_header_from_any_other_key_is_ignored_and_counted(ark: ArkProcess) -> None:
    ordinary = key(ark, key_alias="plain")
    limits(ark, "carol", max_budget=0.0001)  # carol could not afford one request
    assert chat(ark, ordinary, "carol@example.com").status_code == 200  # not charged to carol
    assert chat(ark, MASTER_KEY, "carol@example.com").status_code == 200
    made = rows(ark, 1, api_key=ordinary)
    assert made[0]["end_user"] is None
    assert ark.metric("ark_untrusted_user_header_total", key_alias="plain") == 1
    assert ark.metric("ark_untrusted_user_header_total", key_alias="master") == 1
    assert rows(ark, 0, user="carol") == []


def test_a_persons_budget_holds_under_concurrency(ark: ArkProcess) -> None:
    service = key(ark, key_alias="race", trust_user_headers=True)
    limits(ark, "dave", max_budget=2.5)  # five requests of 0.5 credits

    async def storm() -> list[int]:
        headers = {"Authorization": f"Bearer {service}", PERSON: "dave@example.com"}
        async with httpx.AsyncClient(timeout=60, headers=headers) as client:
            replies = await asyncio.gather(*(client.post(ark.api + "/chat/completions", json=BODY) for _ in range(20)))
        return [r.status_code for r in replies]

    statuses = asyncio.run(storm())
    assert statuses.count(200) == 5 and statuses.count(429) == 15, statuses


def test_rpm_models_block_and_disable_apply_to_a_person(ark: ArkProcess) -> None:
    service = key(ark, key_alias="ui", trust_user_headers=True)
    limits(ark, "carol", max_budget=None, rpm_limit=1)
    assert chat(ark, service, "carol@example.com").status_code == 200
    limited = chat(ark, service, "carol@example.com")
    assert limited.status_code == 429 and "user carol" in limited.json()["error"]["message"]
    limits(ark, "carol", rpm_limit=None, models=["other"])
    assert chat(ark, service, "carol@example.com").status_code == 403
    listed = httpx.get(ark.api + "/models", headers={"Authorization": f"Bearer {service}", PERSON: "carol@example.com"})
    assert listed.json()["data"] == []
    limits(ark, "carol", models=[], blocked=True)
    blocked = chat(ark, service, "carol@example.com")
    assert blocked.status_code == 403 and "blocked" in blocked.json()["error"]["message"]
    limits(ark, "carol", blocked=False)
    assert chat(ark, service, "carol@example.com").status_code == 200
    disabled = cli(ark, "users", "disable", "carol")
    assert disabled.exit_code == 0, disabled.output
    limits(ark, "carol")  # the gateway reloads people now (else within seconds)
    refused = chat(ark, service, "carol@example.com")
    assert refused.status_code == 403 and "disabled" in refused.json()["error"]["message"]


def test_usage_by_user_and_hostile_input(ark: ArkProcess) -> None:
    service = key(ark, key_alias="usage", trust_user_headers=True)
    shown = cli(ark, "usage", "--by", "user", "--json")
    assert shown.exit_code == 0, shown.output
    users = {row["user"]: row for row in json.loads(shown.output)}
    assert {"alice", "bob"} <= set(users) and users["alice"]["requests"] >= 4
    # a header value that is long or odd is a person ARK does not know; an empty one names nobody
    for odd in ("x" * 5000, "a@b\tc", "ü@ex.de".encode()):
        assert chat(ark, service, odd).status_code == 403
    assert chat(ark, service, "").status_code == 200
    assert httpx.post(ark.url + "/user/update", headers=ADMIN, json={"user": "nobody"}).status_code == 404
    wrong = {"user": "alice", "max_budget": "lots"}
    assert httpx.post(ark.url + "/user/update", headers=ADMIN, json=wrong).status_code == 400
    assert httpx.post(ark.url + "/user/update", headers=ADMIN, json={"user": 5}).status_code == 400
    assert httpx.post(ark.url + "/user/update", json={"user": "alice", "max_budget": 100}).status_code == 401


def test_a_person_added_a_moment_ago_is_known_at_once(ark: ArkProcess) -> None:
    service = key(ark, key_alias="newcomer", trust_user_headers=True)
    added = cli(ark, "users", "add", "erin", "--email", "Erin@Example.com", "--password-stdin", input="pw-" * 6)
    assert added.exit_code == 0, added.output
    # no reload of the gateway's people has happened since: it looks the address up (kept lower case)
    assert chat(ark, service, "erin@example.com").status_code == 200
    assert [r["end_user"] for r in rows(ark, 1, user="erin@example.com")] == ["erin"]
