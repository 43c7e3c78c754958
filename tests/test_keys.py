"""Virtual keys and teams through the LiteLLM-compatible management API, on SQLite and on PostgreSQL.

A real `ark up` per backend; requests through the official openai client and httpx.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import MASTER_KEY, ArkProcess, embedded_ark, stop_ark, wait_until

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def ark(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path
) -> Iterator[ArkProcess]:
    store = request.getfixturevalue("postgres").create_database() if request.param == "postgresql" else ""
    aliases = '[aliases]\n"gpt-4" = "tiny"\n"other" = "tiny2"\n'
    process = embedded_ark(
        tmp_path_factory.mktemp(f"keys-{request.param}"),
        tiny_gguf,
        models=("tiny", "tiny2"),
        store=store,
        extra=aliases,
    )
    yield process
    stop_ark(process)


def admin(ark: ArkProcess, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(
        method, ark.url + path, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=10, **kwargs
    )


_CLIENTS: list[openai.OpenAI] = []


def client(ark: ArkProcess, key: str) -> openai.OpenAI:
    made = openai.OpenAI(base_url=ark.api, api_key=key, max_retries=0, timeout=30)
    _CLIENTS.append(made)
    return made


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()


def generate(ark: ArkProcess, **body: Any) -> dict[str, Any]:
    response = admin(ark, "POST", "/key/generate", json=body)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_generate_with_litellm_fields_and_read_them_back(ark: ArkProcess) -> None:
    team = admin(
        ark,
        "POST",
        "/team/new",
        json={
            "team_alias": "research",
            "models": ["gpt-4"],
            "max_budget": 50,
            "budget_duration": "30d",
            "tpm_limit": 10_000,
            "rpm_limit": 100,
        },
    )
    assert team.status_code == 200, team.text
    team_id = team.json()["team_id"]
    body = {
        "key_alias": "alice-laptop",
        "models": ["gpt-4", "tiny"],
        "max_budget": 10.5,
        "budget_duration": "7d",
        "tpm_limit": 1000,
        "rpm_limit": 60,
        "max_parallel_requests": 2,
        "duration": "30d",
        "metadata": {"project": "x"},
        "team_id": team_id,
        "user_id": "alice@example.com",
        "max_tokens_budget": 100_000,
    }
    created = generate(ark, **body)
    assert created["key"].startswith("sk-ark-") and len(created["key"]) >= 39
    info = admin(ark, "GET", "/key/info", params={"key": created["key"]})
    assert info.status_code == 200
    assert info.json()["key"] == created["token"]
    fields = info.json()["info"]
    for name in (
        "key_alias",
        "models",
        "max_budget",
        "budget_duration",
        "tpm_limit",
        "rpm_limit",
        "max_parallel_requests",
        "metadata",
        "team_id",
        "user_id",
        "max_tokens_budget",
    ):
        assert fields[name] == body[name], name
    assert fields["expires"] is not None and fields["spend"] == 0.0
    assert fields["budget_reset_at"] is not None
    assert created["key"] not in info.text  # the key itself is never shown again
    assert fields["key_name"] == created["key"][:11] + "…"
    by_token = admin(ark, "GET", "/key/info", params={"key": created["token"]})
    assert by_token.json()["info"]["key_alias"] == "alice-laptop"
    team_info = admin(ark, "GET", "/team/info", params={"team_id": team_id}).json()
    assert team_info["team_info"]["team_alias"] == "research"
    assert [k["key_alias"] for k in team_info["keys"]] == ["alice-laptop"]
    listed = admin(ark, "GET", "/key/list", params={"team_id": team_id}).json()
    assert listed["keys"] == [created["token"]] and listed["total_count"] == 1


def test_virtual_key_serves_allowed_models_only(ark: ArkProcess) -> None:
    key = generate(ark, key_alias="only-gpt4", models=["gpt-4"])["key"]
    assert [m.id for m in client(ark, key).models.list().data] == ["gpt-4"]
    reply = client(ark, key).chat.completions.create(model="gpt-4", messages=HELLO, max_tokens=2)
    assert reply.model == "gpt-4"
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client(ark, key).chat.completions.create(model="other", messages=HELLO, max_tokens=2)
    error = caught.value.response.json()["error"]
    assert error["code"] == "model_not_allowed" and error["param"] == "model" and "'other'" in error["message"]
    unrestricted = generate(ark)["key"]
    assert client(ark, unrestricted).chat.completions.create(model="other", messages=HELLO, max_tokens=1)


def test_team_models_restrict_its_keys(ark: ArkProcess) -> None:
    team = admin(ark, "POST", "/team/new", json={"team_alias": "t", "models": ["tiny2", "other"]}).json()
    key = generate(ark, team_id=team["team_id"])["key"]  # the key itself allows everything
    assert client(ark, key).chat.completions.create(model="other", messages=HELLO, max_tokens=1)
    with pytest.raises(openai.PermissionDeniedError):
        client(ark, key).chat.completions.create(model="gpt-4", messages=HELLO, max_tokens=1)


def test_block_update_expire_and_delete(ark: ArkProcess) -> None:
    created = generate(ark, key_alias="temp")
    key = created["key"]
    assert client(ark, key).models.list()
    assert admin(ark, "POST", "/key/update", json={"key": key, "blocked": True}).status_code == 200
    with pytest.raises(openai.AuthenticationError, match="blocked"):
        client(ark, key).models.list()
    assert admin(ark, "POST", "/key/update", json={"key": created["token"], "blocked": False}).status_code == 200
    assert client(ark, key).models.list()
    # expiry itself, on a clock the test moves: tests/test_runtime_clock.py
    deleted = admin(ark, "POST", "/key/delete", json={"keys": [key]}).json()
    assert deleted == {"deleted_keys": [created["token"]]}
    with pytest.raises(openai.AuthenticationError):
        client(ark, key).models.list()
    assert admin(ark, "GET", "/key/info", params={"key": key}).status_code == 404


def test_blocked_team_blocks_its_keys(ark: ArkProcess) -> None:
    team = admin(ark, "POST", "/team/new", json={"team_alias": "b"}).json()
    key = generate(ark, team_id=team["team_id"])["key"]
    assert client(ark, key).models.list()
    admin(ark, "POST", "/team/update", json={"team_id": team["team_id"], "blocked": True})
    with pytest.raises(openai.AuthenticationError, match="team"):
        client(ark, key).models.list()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_budget": -1}, "max_budget"),
        ({"max_budget": "lots"}, "max_budget"),
        ({"models": "gpt-4"}, "models"),
        ({"budget_duration": "forever"}, "budget_duration"),
        ({"duration": "soon"}, "duration"),
        ({"rpm_limit": 1.5}, "rpm_limit"),
        ({"metadata": [1]}, "metadata"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_management_bodies_are_400(ark: ArkProcess, body: dict[str, Any], param: str) -> None:
    response = admin(ark, "POST", "/key/generate", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_durations_past_100_years_are_400_naming_the_field(ark: ArkProcess) -> None:
    key = generate(ark)["token"]
    team = admin(ark, "POST", "/team/new", json={}).json()["team_id"]
    for too_long in ("99999999999999d", "36501d", "5215w", "1" * 5000 + "d"):
        for path, body in [
            ("/key/generate", {"duration": too_long}),
            ("/key/generate", {"budget_duration": too_long}),
            ("/key/update", {"key": key, "duration": too_long}),
            ("/key/update", {"key": key, "budget_duration": too_long}),
            ("/team/new", {"budget_duration": too_long}),
            ("/team/update", {"team_id": team, "budget_duration": too_long}),
        ]:
            response = admin(ark, "POST", path, json=body)
            assert response.status_code == 400, (path, body, response.text)
            error = response.json()["error"]
            field = "duration" if "duration" in body else "budget_duration"
            assert error["type"] == "invalid_request_error" and error["param"] == field, error
    longest = generate(ark, duration="36500d", budget_duration="36500d")  # the bound itself: 100 years
    assert longest["budget_duration"] == "36500d" and longest["expires"] > "2120"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"rpm_limit": 2**31}, "rpm_limit"),  # an INTEGER column: PostgreSQL refuses it, SQLite stores it
        ({"tpm_limit": 2**40}, "tpm_limit"),
        ({"max_parallel_requests": 2**31}, "max_parallel_requests"),
        ({"max_tokens_budget": 2**64 - 1}, "max_tokens_budget"),  # past BIGINT: both databases refuse it
    ],
)
def test_counts_past_their_column_are_400(ark: ArkProcess, body: dict[str, Any], param: str) -> None:
    for path in ("/key/generate", "/team/new"):
        response = admin(ark, "POST", path, json=body)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param
    assert admin(ark, "POST", "/key/generate", json={param: 2**31 - 1}).status_code == 200  # the largest


@pytest.mark.parametrize("limit", ["-1", "-0", "abc", "1.5", "1e3", "+5", " 5", "0x10", "\u0665"])
def test_spend_logs_limit_must_be_a_whole_number(ark: ArkProcess, limit: str) -> None:
    response = admin(ark, "GET", "/spend/logs", params={"limit": limit})
    assert response.status_code == 400, response.text  # -1 was SQLite's LIMIT -1: every row
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "limit"


def test_spend_logs_limit_is_lowered_to_its_maximum_and_end_dates_have_no_overflow(ark: ArkProcess) -> None:
    key = generate(ark)["key"]
    client(ark, key).chat.completions.create(model="gpt-4", messages=HELLO, max_tokens=1)
    assert admin(ark, "GET", "/spend/logs", params={"limit": "0"}).json() == []
    for huge in ("100001", "1" + "0" * 40, "0" * 50 + "1"):
        assert admin(ark, "GET", "/spend/logs", params={"limit": huge}).status_code == 200
    for path in ("/spend/logs", "/usage/daily"):  # the day after 9999-12-31 is past datetime's range
        response = admin(ark, "GET", path, params={"start_date": "0001-01-01", "end_date": "9999-12-31"})
        assert response.status_code == 200, response.text


def test_unknown_team_is_404(ark: ArkProcess) -> None:
    response = admin(ark, "POST", "/key/generate", json={"team_id": "team-nope"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


# -- the auth matrix ------------------------------------------------------------------------------

ROUTES = [
    ("GET", "/v1/models", None),
    ("POST", "/v1/chat/completions", {"model": "gpt-4", "messages": HELLO, "max_tokens": 1}),
    ("POST", "/v1/completions", {"model": "gpt-4", "prompt": "x", "max_tokens": 1}),
    ("POST", "/v1/embeddings", {"model": "gpt-4", "input": "x"}),
    ("GET", "/v1/models/gpt-4", None),
    ("POST", "/key/generate", {}),
    ("GET", "/key/list", None),
    ("POST", "/team/new", {}),
    ("GET", "/team/list", None),
]
ADMIN = {"/key/generate", "/key/list", "/team/new", "/team/list"}


@pytest.fixture(scope="module")
def principals(ark: ArkProcess) -> dict[str, str | None]:
    other_team = admin(ark, "POST", "/team/new", json={"team_alias": "other", "models": ["other"]}).json()
    revoked = generate(ark)["key"]
    admin(ark, "POST", "/key/delete", json={"keys": [revoked]})
    expired = generate(ark, duration="1s")["key"]
    blocked = generate(ark, blocked=True)["key"]

    def has_expired() -> bool:  # a condition waited for, not a sleep: however slow this machine is
        answer = httpx.get(ark.api + "/models", headers={"Authorization": f"Bearer {expired}"}, timeout=10)
        return answer.status_code == 401

    assert wait_until(has_expired, 30)
    return {
        "none": None,
        "malformed": "Token abc",
        "wrong": "Bearer sk-ark-not-a-key-000000000000000",
        "revoked": f"Bearer {revoked}",
        "expired": f"Bearer {expired}",
        "blocked": f"Bearer {blocked}",
        "other-team": f"Bearer {generate(ark, team_id=other_team['team_id'])['key']}",
        "virtual": f"Bearer {generate(ark)['key']}",
        "master": f"Bearer {MASTER_KEY}",
    }


@pytest.mark.parametrize(
    "who", ["none", "malformed", "wrong", "revoked", "expired", "blocked", "other-team", "virtual", "master"]
)
def test_auth_matrix(ark: ArkProcess, principals: dict[str, str | None], who: str) -> None:
    header = principals[who]
    for method, path, body in ROUTES:
        headers = {"Authorization": header} if header else {}
        response = httpx.request(method, ark.url + path, headers=headers, json=body, timeout=30)
        if who in ("none", "malformed", "wrong", "revoked", "expired", "blocked"):
            expected = 401
        elif who == "master":
            expected = 200
        elif path in ADMIN:
            expected = 403
        elif who == "other-team" and path == "/v1/models/gpt-4":
            expected = 404  # as OpenAI: a model you may not use "does not exist"
        elif who == "other-team" and path != "/v1/models":
            expected = 403  # its team may use "other" only
        else:
            expected = 200
        assert response.status_code == expected, (who, method, path, response.text)
        if expected != 200:
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            codes = {
                401: "invalid_api_key",
                403: "admin_only" if path in ADMIN else "model_not_allowed",
                404: "model_not_found",
            }
            assert error["code"] == codes[expected]


# -- the database itself ----------------------------------------------------------------------------


def test_a_database_from_a_newer_ark_is_refused(tmp_path: Path) -> None:
    from sqlalchemy import text

    from ark.config import load_settings
    from ark.store import Store

    settings = load_settings(env={"ARK_DATA_DIR": str(tmp_path)})
    Store.open(settings).close()  # created and migrated
    store = Store.open(settings)  # and opened again: nothing to do
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    store.close()
    config = tmp_path / "ark.toml"
    config.write_text(f'master_key = "{MASTER_KEY}"\n[engines.e]\nkind = "embedded"\n')
    result = subprocess.run(
        [sys.executable, "-m", "ark", "up", "--config", str(config), "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "revision 9999" in result.stderr and "newer ARK" in result.stderr


def test_the_head_constant_is_alembics_head() -> None:
    from ark.store.migrate import HEAD, head

    assert head() == HEAD
