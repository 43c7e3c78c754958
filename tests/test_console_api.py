"""The console's way to ARK's API (/console/api/PATH): the gateway's own routes for the signed-in person,
with the role each needs checked server-side and a CSRF value on every change, whatever a page shows.
A real `ark up`, people made with `ark users`, a browser played by httpx."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import orjson
import pytest
from click.testing import CliRunner

from ark.cli.main import main
from tests.conftest import MASTER_KEY, ArkProcess, start_ark, stop_ark, wait_until
from tests.console_pages import add_user, by_hand
from tests.fakes.ollama import FakeOllama
from tests.test_auth_console import Browser

PASSWORD = "correct-horse-1"
CONFIG = f"""
master_key = "{MASTER_KEY}"
[gateway]
listen = "127.0.0.1:{{PORT}}"
[engines.ollama]
kind = "ollama"
url = "{{OLLAMA}}"
gpu_managed = "no"
"""
MASTER = {"Authorization": f"Bearer {MASTER_KEY}"}


@pytest.fixture(scope="module")
def ark(tmp_path_factory: pytest.TempPathFactory, fake_ollama_server: FakeOllama) -> Iterator[ArkProcess]:
    process = start_ark(CONFIG.replace("{OLLAMA}", fake_ollama_server.url), tmp_path_factory.mktemp("console-api"))
    try:
        for name, role in (("ada", "admin"), ("bea", "user")):
            add_user(process, name, role, PASSWORD)
        yield process
    finally:
        stop_ark(process)


def signed_in(ark: ArkProcess, name: str, ip: str) -> tuple[Browser, str]:
    """A browser signed in as ``name``, and the session's CSRF value (the one its pages carry)."""
    return by_hand(ark, name, ip, PASSWORD)  # type: ignore[no-any-return]


def test_a_person_chats_through_the_console_on_their_own_budget(ark: ArkProcess) -> None:
    bea, csrf = signed_in(ark, "bea", "10.9.0.1")
    models = bea.send("GET", "/console/api/v1/models")
    assert models.status_code == 200 and "llama3.2:1b" in {m["id"] for m in models.json()["data"]}
    body = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 4}
    streamed = bea.send("POST", "/console/api/v1/chat/completions", json=body, headers={"x-csrf-token": csrf})
    assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
    rows: list[dict[str, object]] = []

    def logged() -> bool:  # (the listing of models above is a request of hers too, logged on its own)
        nonlocal rows
        found = httpx.get(ark.url + "/spend/logs", headers=MASTER, params={"user": "bea"}, timeout=5).json()
        rows = [row for row in found if row["call_type"] == "/v1/chat/completions"]
        return bool(rows)

    assert wait_until(logged, 10)
    assert rows[0]["end_user"] == "bea"


def test_a_plain_user_cannot_reach_the_management_api(ark: ArkProcess) -> None:
    bea, csrf = signed_in(ark, "bea", "10.9.0.2")
    for method, path in (("GET", "/console/api/key/list"), ("POST", "/console/api/key/generate")):
        refused = bea.send(method, path, json={}, headers={"x-csrf-token": csrf})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "admin_only", path
    keys = httpx.get(ark.url + "/key/list", headers=MASTER, timeout=5).json()["keys"]
    assert keys == []  # nothing was made


def test_an_admin_manages_keys_through_the_same_api_with_a_csrf_value(ark: ArkProcess) -> None:
    ada, csrf = signed_in(ark, "ada", "10.9.0.3")
    body = {"key_alias": "from-the-console"}
    without = ada.send("POST", "/console/api/key/generate", json=body)
    assert without.status_code == 403 and without.json()["error"]["code"] == "csrf"
    forged = ada.send("POST", "/console/api/key/generate", json=body, headers={"x-csrf-token": csrf[:-2] + "xx"})
    assert forged.status_code == 403
    elsewhere = ada.send(
        "POST", "/console/api/key/generate", json=body, headers={"x-csrf-token": csrf, "origin": "https://evil.test"}
    )
    assert elsewhere.status_code == 403
    made = ada.send("POST", "/console/api/key/generate", json=body, headers={"x-csrf-token": csrf})
    assert made.status_code == 200 and made.json()["key"].startswith("sk-ark-")
    listed = CliRunner().invoke(main, ["keys", "list", "--config", str(ark.config)], env={"COLUMNS": "200"})
    assert "from-the-console" in listed.output  # the CLI sees what the page made: one API
    with httpx.Client(base_url=ark.api, headers={"Authorization": f"Bearer {made.json()['key']}"}) as client:
        assert client.get("/models").status_code == 200


def test_without_a_session_or_outside_the_api_nothing_is_served(ark: ArkProcess) -> None:
    stranger = Browser(ark, "10.9.0.4")
    anonymous = stranger.send("GET", "/console/api/v1/models")
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "not_signed_in"
    ada, _ = signed_in(ark, "ada", "10.9.0.5")
    for path in ("/console/api/health/ready", "/console/api/", "/console/api/../key/list"):
        assert ada.send("GET", path).status_code == 404, path
    forged = stranger.send("GET", "/console/api/v1/models", headers={"authorization": f"Bearer {MASTER_KEY}"})
    assert forged.status_code == 401  # a key is no session: the console's API is for signed-in people
    assert orjson.loads(forged.content)["error"]["type"] == "console_error"
