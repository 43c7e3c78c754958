"""The console's admin pages in a real headless Chromium on a real `ark up` (tests/console_pages.py): Users
(add, disable and enable, roles, second factor, budgets, passwords; the last enabled admin is kept), Keys and
teams (a key made on the page works with the official OpenAI client until it is blocked or deleted) and
Usage (a chart and a table grouped by model or day, the same rows as CSV); and a plain user refused all three.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from playwright.sync_api import expect

from ark.auth import totp
from ark.auth.users import UserStore
from ark.store.migrate import database_url, open_engine
from tests.conftest import MASTER_KEY, ArkProcess, wait_until
from tests.console_pages import PASSWORD, add_user, by_hand, screenshot, signed_in
from tests.test_auth_console import Browser

MASTER = {"Authorization": f"Bearer {MASTER_KEY}"}
ADMIN = "uma"


@pytest.fixture(scope="module")
def admin(console_ark: ArkProcess) -> str:
    """This module's admin (the ARK is shared: its own names)."""
    add_user(console_ark, ADMIN, "admin")
    return ADMIN


def script_errors(page: Any) -> list[str]:
    """The page's errors but Chromium's line for each refused request (the tests ask for some refusals)."""
    return [e for e in page.errors if "Failed to load resource" not in e]


def accounts(ark: ArkProcess) -> dict[str, dict[str, Any]]:
    return {a["user"]: a for a in httpx.get(ark.url + "/user/accounts", headers=MASTER, timeout=5).json()}


def test_an_admin_adds_disables_enables_and_changes_users(
    console_ark: ArkProcess, chromium: Any, admin: str, tmp_path: Path
) -> None:
    add_user(console_ark, "ulf")
    ulf, _ = by_hand(console_ark, "ulf", "10.20.0.1")
    assert ulf.send("GET", "/console/api/v1/models").status_code == 200
    with signed_in(chromium, console_ark, admin, "/admin/users") as page:
        page.on("dialog", lambda dialog: dialog.accept())
        row = page.locator('tr[data-user="ulf"]')
        expect(row).to_contain_text("enabled")

        # a new user, through the form; they can sign in with the password given
        page.fill("#new-name", "una")
        page.fill("#new-email", "una@example.com")
        page.fill("#new-display", "Una Example")
        page.select_option("#new-role", "user")
        page.fill("#new-password", PASSWORD)
        page.get_by_role("button", name="Add user").click()
        expect(page.locator('tr[data-user="una"]')).to_contain_text("Una Example · una@example.com")
        expect(page.locator("#app > .notice")).to_contain_text("una is added")
        assert accounts(console_ark)["una"]["role"] == "user"
        assert Browser(console_ark, "10.20.0.2").login("una", PASSWORD).status_code == 303

        # disabled: ulf's session ends at once, their next call is refused; enabled: they may sign in again
        row.get_by_role("button", name="Disable").click()
        expect(row).to_contain_text("disabled")
        refused = ulf.send("GET", "/console/api/v1/models")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "not_signed_in"
        assert Browser(console_ark, "10.20.0.3").login("ulf", PASSWORD).status_code == 401
        row.get_by_role("button", name="Enable").click()
        expect(row).to_contain_text("enabled")
        again, _ = by_hand(console_ark, "ulf", "10.20.0.4")
        assert again.send("GET", "/console/api/v1/models").status_code == 200

        # the role, both ways
        role = row.locator("td").nth(1)
        row.get_by_role("button", name="Make admin").click()
        expect(role).to_have_text("admin")
        assert accounts(console_ark)["ulf"]["role"] == "admin"
        row.get_by_role("button", name="Make user").click()
        expect(role).to_have_text("user")
        assert accounts(console_ark)["ulf"]["role"] == "user"

        # a second factor (set up in the database, as `ark users totp` would), then removed on the page
        engine = open_engine(database_url("", console_ark.data_dir))
        try:
            UserStore(engine).set_totp("ulf", totp.new_secret(), 1)
            second = row.locator("td").nth(3)
            page.reload()
            expect(second).to_have_text("on")
            row.get_by_role("button", name="Reset TOTP").click()
            expect(second).to_have_text("off")
            expect(row.get_by_role("button", name="Reset TOTP")).to_have_count(0)
            assert UserStore(engine).require("ulf").totp_secret is None
        finally:
            engine.dispose()

        # a budget: only what changed is sent (the period is kept, and so is when it resets)
        row.get_by_role("button", name="Budget").click()
        page.fill("#budget-max", "3")
        page.fill("#budget-duration", "7d")
        page.get_by_role("button", name="Save budget").click()
        expect(row).to_contain_text("3.0000 per 7d")
        info = httpx.get(console_ark.url + "/user/info", headers=MASTER, params={"user": "ulf"}, timeout=5).json()
        assert info["max_budget"] == 3 and info["budget_duration"] == "7d" and info["budget_reset_at"]
        row.get_by_role("button", name="Budget").click()
        expect(page.locator("#budget-duration")).to_have_value("7d")
        page.fill("#budget-rpm", "20")
        page.get_by_role("button", name="Save budget").click()
        expect(row).to_contain_text("20 requests/min")
        after = httpx.get(console_ark.url + "/user/info", headers=MASTER, params={"user": "ulf"}, timeout=5).json()
        assert after["rpm_limit"] == 20 and after["budget_reset_at"] == info["budget_reset_at"]

        # a password: their sessions end, the new one signs them in
        row.get_by_role("button", name="Password").click()
        page.fill("#password-new", "another long password 43")
        page.get_by_role("button", name="Set password").click()
        expect(page.locator("#app > .notice")).to_contain_text("ulf's password is changed")
        assert again.send("GET", "/console/api/v1/models").status_code == 401
        assert Browser(console_ark, "10.20.0.5").login("ulf", "another long password 43").status_code == 303
        screenshot(page, tmp_path, "console-users")

        # the API's refusals are shown: a name taken
        page.fill("#new-name", "ulf")
        page.fill("#new-password", PASSWORD)
        page.get_by_role("button", name="Add user").click()
        expect(page.locator("#add-user .notice.error")).to_contain_text("exists already")
        assert script_errors(page) == []


def test_the_last_enabled_admin_is_kept(console_ark: ArkProcess, chromium: Any, admin: str) -> None:
    # the ARK is shared: every other enabled admin is disabled for a moment, and enabled again after
    others = [n for n, a in accounts(console_ark).items() if a["role"] == "admin" and not a["disabled"] and n != admin]
    try:
        for name in others:
            assert httpx.post(console_ark.url + "/user/disable", headers=MASTER, json={"user": name}).status_code == 200
        with signed_in(chromium, console_ark, admin, "/admin/users") as page:
            page.on("dialog", lambda dialog: dialog.accept())
            row = page.locator(f'tr[data-user="{admin}"]')
            row.get_by_role("button", name="Disable").click()
            expect(page.locator("#app > .notice.error")).to_contain_text("only enabled admin")
            row.get_by_role("button", name="Make user").click()
            expect(page.locator("#app > .notice.error")).to_contain_text("only enabled admin")
            assert accounts(console_ark)[admin]["role"] == "admin" and not accounts(console_ark)[admin]["disabled"]
            expect(row).to_contain_text("enabled")
        refused = httpx.post(console_ark.url + "/user/disable", headers=MASTER, json={"user": admin}, timeout=5)
        assert refused.status_code == 400 and "only enabled admin" in refused.json()["error"]["message"]
    finally:
        for name in others:
            httpx.post(console_ark.url + "/user/enable", headers=MASTER, json={"user": name}, timeout=5)


def key_info(ark: ArkProcess, token: str) -> dict[str, Any]:
    answer: dict[str, dict[str, Any]] = httpx.get(ark.url + "/key/info", headers=MASTER, params={"key": token}).json()
    return answer["info"]


def test_an_admin_makes_a_key_that_works_until_blocked_or_deleted_and_a_team(
    console_ark: ArkProcess, chromium: Any, admin: str, tmp_path: Path
) -> None:
    with signed_in(chromium, console_ark, admin, "/admin/keys") as page:
        page.on("dialog", lambda dialog: dialog.accept())
        # a team first: a key may join it
        page.fill("#team-alias", "uma-team")
        page.fill("#team-budget", "10")
        page.get_by_role("button", name="Create team").click()
        team = next(
            t for t in httpx.get(console_ark.url + "/team/list", headers=MASTER).json() if t["team_alias"] == "uma-team"
        )
        assert team["max_budget"] == 10
        team_row = page.locator(f'tr[data-team="{team["team_id"]}"]')
        expect(team_row).to_contain_text("uma-team")

        # a key, its secret shown once
        page.fill("#key-alias", "uma-laptop")
        page.fill("#key-user", "ulf-nobody@example.com")
        page.select_option("#key-team", team["team_id"])
        page.fill("#key-budget", "2")
        page.fill("#key-period", "30d")
        page.get_by_role("button", name="Create key").click()
        secret_box = page.locator("#new-secret")
        expect(secret_box).to_contain_text("shown once")
        secret = secret_box.locator("code.key").inner_text()
        assert secret.startswith("sk-")
        listed = httpx.get(console_ark.url + "/key/list", headers=MASTER, params={"return_full_object": "true"})
        key = next(k for k in listed.json()["keys"] if k["key_alias"] == "uma-laptop")
        assert key["team_id"] == team["team_id"] and key["max_budget"] == 2 and key["budget_duration"] == "30d"
        assert key["user_id"] == "ulf-nobody@example.com"
        row = page.locator(f'tr[data-token="{key["token"]}"]')
        expect(row).to_contain_text("uma-laptop")
        expect(row).to_contain_text(key["key_name"])
        expect(row).to_contain_text("uma-team")
        expect(row).not_to_contain_text(secret)

        client = openai.OpenAI(base_url=console_ark.url + "/v1", api_key=secret, max_retries=0)
        assert "tiny" in {m.id for m in client.models.list()}

        # its limits: only what changed is sent (the budget's period, and when it resets, are kept)
        row.get_by_role("button", name="Edit").click()
        expect(page.locator("#edit-period")).to_have_value("30d")
        page.fill("#edit-rpm", "5")
        page.get_by_role("button", name="Save key").click()
        expect(row).to_contain_text("5 requests/min")
        edited = key_info(console_ark, key["token"])
        assert edited["rpm_limit"] == 5 and edited["budget_reset_at"] == key["budget_reset_at"]

        # blocked: refused; unblocked: works again
        row.get_by_role("button", name="Block").click()
        expect(row).to_contain_text("blocked")
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
        row.get_by_role("button", name="Unblock").click()
        expect(row).to_contain_text("active")
        assert client.models.list().data

        # the team, blocked on the page: its keys are refused; then accepted again
        team_row.get_by_role("button", name="Block").click()
        expect(team_row).to_contain_text("blocked")
        expect(row).to_contain_text("team blocked")
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
        team_row.get_by_role("button", name="Unblock").click()
        expect(team_row).to_contain_text("active")
        expect(row).to_contain_text("active")
        assert client.models.list().data

        # the secret is not shown again
        page.reload()
        expect(row).to_contain_text("uma-laptop")
        expect(page.locator("#new-secret")).to_have_count(0)
        assert secret not in page.content()
        screenshot(page, tmp_path, "console-keys")

        # a refusal is shown, naming the field
        page.fill("#key-alias", "bad-period")
        page.fill("#key-period", "soon")
        page.get_by_role("button", name="Create key").click()
        expect(page.locator("#create-key .notice.error")).to_contain_text("budget_duration")

        # deleted: gone, and refused
        row.get_by_role("button", name="Delete").click()
        expect(row).to_have_count(0)
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
        tokens = httpx.get(console_ark.url + "/key/list", headers=MASTER, timeout=5).json()["keys"]
        assert key["token"] not in tokens
        assert script_errors(page) == []


def summary(ark: ArkProcess, by: str, **query: str) -> list[dict[str, Any]]:
    answer = httpx.get(ark.url + "/usage/summary", headers=MASTER, params={"by": by, **query}, timeout=5)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def requests_of(rows: list[dict[str, Any]], by: str, value: str) -> int:
    return sum(r["requests"] for r in rows if r[by] == value)


def chat(ark: ArkProcess, key: str = MASTER_KEY) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    answer = httpx.post(
        ark.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=body, timeout=60
    )
    assert answer.status_code == 200, answer.text


def test_the_usage_page_charts_tables_and_downloads_the_ledger(
    console_ark: ArkProcess, chromium: Any, admin: str, tmp_path: Path
) -> None:
    today = datetime.now(UTC).date()
    days = {"start_date": (today - timedelta(days=29)).isoformat(), "end_date": today.isoformat()}
    before = requests_of(summary(console_ark, "model", **days), "model", "tiny")
    for _ in range(2):
        chat(console_ark)
    assert wait_until(lambda: requests_of(summary(console_ark, "model", **days), "model", "tiny") == before + 2)
    rows = summary(console_ark, "model", **days)
    with signed_in(chromium, console_ark, admin, "/admin/usage") as page:
        expect(page.locator("#usage-start")).to_have_value(days["start_date"])
        expect(page.locator("#usage-end")).to_have_value(days["end_date"])
        page.select_option("#usage-by", "model")
        table = page.locator('#usage-table[data-by="model"]')
        tiny = table.locator("tbody tr").filter(has=page.get_by_role("cell", name="tiny", exact=True))
        expect(tiny.locator("td").nth(1)).to_have_text(f"{before + 2:,}")
        expect(page.locator("#usage-result svg.chart")).to_have_attribute("data-bars", str(len(rows)))
        csv_link = page.locator("a#usage-csv")
        expect(csv_link).to_have_attribute("href", re.compile(r"by=model.*format=csv"))
        with page.expect_download() as download:
            csv_link.click()
        text = Path(download.value.path()).read_text()
        lines = list(csv.reader(io.StringIO(text)))
        assert lines[0] == ["model", "requests", "prompt_tokens", "completion_tokens", "cost"]
        assert ["tiny", str(before + 2)] == next(line for line in lines if line[0] == "tiny")[:2]
        screenshot(page, tmp_path, "console-usage")

        # by day: a bar for each of the 30 days, today's row counts today's requests
        page.select_option("#usage-by", "day")
        by_day = page.locator('#usage-table[data-by="day"]')
        expect(by_day.locator("th").first).to_have_text("Day")
        expect(page.locator("#usage-result svg.chart")).to_have_attribute("data-bars", "30")
        today_requests = requests_of(summary(console_ark, "day", **days), "day", today.isoformat())
        row = by_day.locator("tbody tr").filter(has=page.get_by_role("cell", name=today.isoformat(), exact=True))
        expect(row.locator("td").nth(1)).to_have_text(f"{today_requests:,}")
        expect(csv_link).to_have_attribute("href", re.compile(r"by=day"))

        # a range with nothing in it, and one the wrong way round
        page.fill("#usage-start", "2001-01-01")
        page.fill("#usage-end", "2001-01-31")
        page.locator("#usage-end").dispatch_event("change")
        expect(page.locator("#usage-empty")).to_contain_text("No requests")
        page.fill("#usage-start", "2001-02-01")
        page.locator("#usage-start").dispatch_event("change")
        expect(page.locator("#app > .notice.error")).to_contain_text("on or before")
        page.fill("#usage-start", days["start_date"])
        page.fill("#usage-end", days["end_date"])
        page.locator("#usage-end").dispatch_event("change")
        expect(page.locator("#usage-table")).to_be_visible()
        expect(page.locator("#app > .notice")).to_have_count(0)
        assert script_errors(page) == []


def test_usage_summary_refuses_a_bad_group_and_neutralises_formulas_in_csv(console_ark: ArkProcess) -> None:
    bad = httpx.get(console_ark.url + "/usage/summary", headers=MASTER, params={"by": "colour"}, timeout=5)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "by"
    made = httpx.post(console_ark.url + "/key/generate", headers=MASTER, json={"key_alias": "=1+2"}, timeout=5).json()
    chat(console_ark, made["key"])
    assert wait_until(lambda: requests_of(summary(console_ark, "key"), "key", "=1+2") == 1)  # JSON: as it is
    answer = httpx.get(
        console_ark.url + "/usage/summary", headers=MASTER, params={"by": "key", "format": "csv"}, timeout=5
    )
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    lines = list(csv.reader(io.StringIO(answer.text)))
    assert lines[0] == ["key", "key_id", "requests", "prompt_tokens", "completion_tokens", "cost"]
    row = next(line for line in lines if line[1] == made["token"])
    assert row[0] == "'=1+2" and row[2] == "1"
    assert not any(line[0].startswith("=") for line in lines)


def test_a_plain_user_is_refused_the_admin_pages_and_their_api(console_ark: ArkProcess) -> None:
    add_user(console_ark, "uli")
    uli, csrf = by_hand(console_ark, "uli", "10.20.0.9")
    for path in ("/admin/users", "/admin/keys", "/admin/usage"):
        assert uli.send("GET", path).status_code == 403, path
    body = {"name": "uli-made", "password": PASSWORD}
    refused = uli.send("POST", "/console/api/user/new", json=body, headers={"x-csrf-token": csrf})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "admin_only"
    assert "uli-made" not in accounts(console_ark)
    for path in ("/console/api/user/accounts", "/console/api/usage/summary?by=model&format=csv"):
        assert uli.send("GET", path).status_code == 403, path
    home = uli.send("GET", "/")
    assert home.status_code == 200 and "/admin/users" not in home.text  # no link to a page they cannot open
