"""The console's playground and My keys pages in a real headless Chromium against a real `ark up` (embedded
engine, priced model), and the self-service API under them (/me, through the console), with the checks a
browser cannot make: who may call it, CSRF, a person's limits, and a disabled person's keys."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import MASTER_KEY, ArkProcess, wait_until
from tests.console_pages import PASSWORD, add_user, by_hand, screenshot, signed_in
from tests.test_auth_console import Browser

MASTER = {"Authorization": f"Bearer {MASTER_KEY}"}


def ledger(ark: ArkProcess, person: str, count: int = 1) -> list[dict[str, Any]]:
    """The person's ledger rows once there are ``count`` (the ledger is fed off the request path)."""
    rows: list[dict[str, Any]] = []

    def logged() -> bool:
        nonlocal rows
        rows = httpx.get(ark.url + "/spend/logs", headers=MASTER, params={"user": person}, timeout=5).json()
        return len(rows) >= count

    assert wait_until(logged, 15), rows
    return rows


def chat_row(ark: ArkProcess, person: str, request_id: str | None = None) -> dict[str, Any]:
    """The person's newest chat completion in the ledger (or the one with ``request_id``), once it is there."""
    found: list[dict[str, Any]] = []

    def logged() -> bool:
        found[:] = [
            row
            for row in ledger(ark, person)
            if row["call_type"] == "/v1/chat/completions" and request_id in (None, row["request_id"])
        ]
        return bool(found)

    assert wait_until(logged, 15)
    return found[0]


def run_snippet(kind: str, code: str, ark: ArkProcess) -> str:
    env = {**os.environ, "ARK_API_KEY": MASTER_KEY}
    argv = ["bash", "-c", code] if kind == "curl" else [sys.executable, "-c", code]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_playground_streams_a_chat_and_inspects_it(console_ark: ArkProcess, chromium: Any, tmp_path: Any) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    expect = playwright.expect
    add_user(console_ark, "pia")
    with signed_in(chromium, console_ark, "pia", "/playground") as page:
        expect(page.locator("#pg-model option[value=tiny]")).to_have_count(1)
        page.select_option("#pg-model", "tiny")
        page.fill("#pg-system", "You are terse.")
        page.fill("#pg-max-tokens", "8")
        page.fill("#pg-prompt", "Say hello")
        page.click("#pg-send")
        expect(page.locator("#pg-numbers")).to_have_attribute("data-ready", "yes", timeout=30000)
        assert page.locator("#pg-chat .msg.assistant").inner_text().strip()
        assert page.locator("#pg-chat .msg.error").count() == 0
        tokens_in = int(page.get_attribute("#pg-tokens-in", "data-value") or 0)
        tokens_out = int(page.get_attribute("#pg-tokens-out", "data-value") or 0)
        assert tokens_in > 0 and 0 < tokens_out <= 8
        assert page.get_attribute("#pg-ttft", "data-value", timeout=1000).endswith(" ms")
        assert page.get_attribute("#pg-tps", "data-value")  # tokens per second, once tokens came
        cost = float(page.get_attribute("#pg-cost", "data-value") or 0)
        assert cost == pytest.approx(tokens_in * 0.001 + tokens_out * 0.002, rel=1e-6)  # the model's prices
        request_id = page.get_attribute("#pg-request-id", "data-value")
        assert '"system"' in page.inner_text("#pg-request") and '"max_tokens": 8' in page.inner_text("#pg-request")
        # charged to pia, the one signed in, with the inspector's numbers
        row = chat_row(console_ark, "pia", request_id)
        assert (row["prompt_tokens"], row["completion_tokens"]) == (tokens_in, tokens_out)
        assert row["spend"] == pytest.approx(cost) and row["end_user"] == "pia"
        screenshot(page, tmp_path, "console-playground")
        # "copy as code": each snippet runs as it is, with a key in ARK_API_KEY, and gets an answer
        outputs = {}
        for kind in ("curl", "openai", "ollama"):
            page.click(f"#pg-inspector button[data-kind={kind}]")
            expect(page.locator("#pg-code")).to_have_attribute("data-kind", kind)
            outputs[kind] = run_snippet(kind, page.inner_text("#pg-code"), console_ark)
        assert '"object":"chat.completion.chunk"' in outputs["curl"] and "data: [DONE]" in outputs["curl"]
        assert outputs["openai"].strip() and outputs["ollama"].strip()
        # a second turn carries the first
        page.fill("#pg-prompt", "Again")
        page.click("#pg-send")
        expect(page.locator("#pg-chat .msg.assistant")).to_have_count(2, timeout=30000)
        expect(page.locator("#pg-numbers")).to_have_attribute("data-ready", "yes", timeout=30000)
        assert page.inner_text("#pg-request").count('"role": "user"') == 2
        assert not page.errors, page.errors


def test_a_person_makes_uses_rotates_and_revokes_their_own_key(
    console_ark: ArkProcess, chromium: Any, tmp_path: Any
) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    expect = playwright.expect
    add_user(console_ark, "kit")
    with signed_in(chromium, console_ark, "kit", "/keys") as page:
        page.on("dialog", lambda dialog: dialog.accept())
        expect(page.locator("#my-policy")).to_contain_text("You may hold 2 keys (you hold 0).")
        page.fill("#my-alias", "laptop")
        page.click("#my-create")
        expect(page.locator("#my-secret")).to_have_text(re.compile(r"^sk-"))
        secret = page.inner_text("#my-secret")
        row = page.locator("#my-keys tbody tr")
        expect(row).to_have_count(1)
        assert secret not in page.inner_text("#my-keys")  # the list shows the prefix only
        assert (secret[:11] + "…") in page.inner_text("#my-keys")
        # the key works with the official client, and what it spends is kit's (ledger, person)
        client = openai.OpenAI(base_url=console_ark.url + "/v1", api_key=secret, max_retries=0)
        answer = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert answer.usage is not None and answer.usage.completion_tokens > 0
        charged = chat_row(console_ark, "kit")
        assert charged["key_alias"] == "laptop" and charged["end_user"] == "kit" and charged["spend"] > 0
        # each key's budget is capped at 5 ([console] key_max_budget): it got 5 without asking
        token = row.get_attribute("data-token")
        info = httpx.get(console_ark.url + "/key/info", headers=MASTER, params={"key": token}).json()["info"]
        assert info["max_budget"] == 5 and info["user_id"] and info["key_alias"] == "laptop"
        # the usage chart shows the key's day, once the daily rollup has it
        page.reload()
        expect(page.locator("#my-usage")).to_have_attribute("data-rows", re.compile(r"^[1-9]"), timeout=15000)
        expect(page.locator("#my-budget")).to_contain_text(f"you made 1 request for {charged['spend']:.4f}")
        assert page.locator("#my-usage svg rect").count() >= 1
        # a second key: the most allowed (2), so the button goes off
        page.fill("#my-alias", "script")
        page.click("#my-create")
        expect(page.locator("#my-keys tbody tr")).to_have_count(2)
        expect(page.locator("#my-create")).to_be_disabled()
        screenshot(page, tmp_path, "console-keys-mine")
        # rotate the first: a new secret; the old one is refused at once, the new one works
        page.locator(f'#my-keys tr[data-token="{token}"] button', has_text="Rotate").click()
        expect(page.locator("#my-secret-box")).to_contain_text("The new secret of laptop.")
        rotated = page.inner_text("#my-secret")
        assert rotated != secret
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
        client = openai.OpenAI(base_url=console_ark.url + "/v1", api_key=rotated, max_retries=0)
        assert "tiny" in {m.id for m in client.models.list()}
        spent = httpx.get(console_ark.url + "/key/info", headers=MASTER, params={"key": rotated}).json()["info"]
        assert spent["spend"] == pytest.approx(info["spend"]) and spent["key_alias"] == "laptop"  # kept
        # revoke it: refused from the next request
        page.locator("#my-keys tbody tr", has_text="laptop").get_by_role("button", name="Revoke").click()
        expect(page.locator("#my-keys tbody tr")).to_have_count(1)
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
        assert not page.errors, page.errors


def test_the_self_service_api_is_for_the_signed_in_person_within_limits(console_ark: ArkProcess) -> None:
    add_user(console_ark, "sol")
    base = console_ark.url
    # not through the console: the master key alone names nobody; a virtual key cannot make keys
    alone = httpx.get(base + "/me", headers=MASTER, timeout=5)
    assert alone.status_code == 401 and alone.json()["error"]["type"] == "invalid_request_error"
    made = httpx.post(base + "/key/generate", headers=MASTER, json={"key_alias": "plain"}, timeout=5).json()
    keyed = httpx.post(base + "/me/key/generate", headers={"Authorization": f"Bearer {made['key']}"}, json={})
    assert keyed.status_code == 403
    # through the console: a session, and the CSRF value on every change
    sol, token = by_hand(console_ark, "sol", "10.7.0.1")
    csrf = {"x-csrf-token": token}
    assert Browser(console_ark, "10.7.0.9").send("GET", "/console/api/me").status_code == 401  # no session
    refused = sol.send("POST", "/console/api/me/key/generate", json={"key_alias": "x"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf"
    mine = sol.send("GET", "/console/api/me/keys").json()
    assert mine["keys"] == [] and mine["policy"] == {"keys_per_person": 2, "key_models": [], "key_max_budget": 5}

    def generate(body: dict[str, Any]) -> httpx.Response:
        return sol.send("POST", "/console/api/me/key/generate", json=body, headers=csrf)

    over = generate({"key_alias": "big", "max_budget": 6})
    assert over.status_code == 403 and over.json()["error"]["param"] == "max_budget"
    odd = generate({"key_alias": "odd", "team_id": "team-x"})  # only a person's own fields
    assert odd.status_code == 400 and odd.json()["error"]["param"] == "team_id"
    first = generate({"key_alias": "one", "max_budget": 1, "models": ["tiny"]})
    assert first.status_code == 200 and first.json()["models"] == ["tiny"]
    assert generate({"key_alias": "two"}).status_code == 200
    third = generate({"key_alias": "three"})
    assert third.status_code == 403 and third.json()["error"]["code"] == "limit_reached"
    # another person's key is not one's own
    other = httpx.post(base + "/key/generate", headers=MASTER, json={"key_alias": "theirs"}).json()
    gone = sol.send("POST", "/console/api/me/key/delete", json={"key": other["token"]}, headers=csrf)
    assert gone.status_code == 404
    assert httpx.get(base + "/key/info", headers=MASTER, params={"key": other["token"]}).status_code == 200
    daily = generate({"key_alias": "fast", "max_budget": 1, "budget_duration": "1s"})  # a cap renewed every second
    assert daily.status_code == 403 and daily.json()["error"]["param"] == "budget_duration"
    # rotating keeps what an admin set on the key (its team, its block) and refuses a blocked key
    team = httpx.post(base + "/team/new", headers=MASTER, json={"team_alias": "sols"}).json()["team_id"]
    second = next(k for k in sol.send("GET", "/console/api/me/keys").json()["keys"] if k["key_alias"] == "two")
    httpx.post(base + "/key/update", headers=MASTER, json={"key": second["token"], "team_id": team, "rpm_limit": 7})
    turned = sol.send("POST", "/console/api/me/key/rotate", json={"key": second["token"]}, headers=csrf).json()
    assert (turned["team_id"], turned["rpm_limit"], turned["key_alias"]) == (team, 7, "two")
    httpx.post(base + "/key/update", headers=MASTER, json={"key": turned["token"], "blocked": True})
    blocked = sol.send("POST", "/console/api/me/key/rotate", json={"key": turned["token"]}, headers=csrf)
    assert blocked.status_code == 403
    assert httpx.get(base + "/key/info", headers=MASTER, params={"key": turned["token"]}).json()["info"]["blocked"]
    # the key is limited to tiny, as asked
    key = {"Authorization": f"Bearer {first.json()['key']}"}
    body = {"model": "tiny2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert httpx.post(base + "/v1/chat/completions", headers=key, json=body, timeout=30).status_code == 403
    # a person's key is theirs whatever identity comes with it: another person's token charges nobody else
    add_user(console_ark, "tam")
    tam = Browser(console_ark, "10.7.0.2")
    assert tam.login("tam", PASSWORD).status_code == 303
    identity = tam.verify("chat").headers["x-ark-identity"]
    body["model"] = "tiny"
    assert httpx.post(base + "/v1/chat/completions", headers=key, json=body, timeout=30).status_code == 200
    # disabled: sol's keys stop working at once, with or without someone's identity (and sol's session is over)
    assert httpx.post(base + "/user/disable", headers=MASTER, json={"user": "sol"}).status_code == 200
    stopped = httpx.post(base + "/v1/chat/completions", headers=key, json=body, timeout=30)
    assert stopped.status_code == 403 and "disabled" in stopped.json()["error"]["message"]
    disguised = httpx.post(
        base + "/v1/chat/completions", headers={**key, "x-ark-identity": identity}, json=body, timeout=30
    )
    assert disguised.status_code == 403 and "sol is disabled" in disguised.json()["error"]["message"]
    assert sol.send("GET", "/console/api/me").status_code == 401
    assert httpx.post(base + "/user/enable", headers=MASTER, json={"user": "sol"}).status_code == 200
    assert httpx.post(base + "/v1/chat/completions", headers=key, json=body, timeout=30).status_code == 200
