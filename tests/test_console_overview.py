"""The console's live overview: the last hour from ARK's own samples (unit), its JSON for signed-in users only,
and the page in a real headless Chromium (Debian's, driven by PyPI playwright) whose charts update without a
reload as traffic comes in."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from ark.cli.main import main
from ark.monitor.recent import Recent, Sample, overview, p95
from tests.conftest import MASTER_KEY, ArkProcess, embedded_ark, stop_ark, wait_until

PASSWORD = "a long enough password 42"
DOCS = Path(__file__).resolve().parents[1] / "docs"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def sample(t: float, requests: int = 0, *, latency: tuple[int, ...] = (0, 0, 0), spend: float = 0.0) -> Sample:
    return Sample(t, requests, 0, 10 * requests, 0, latency, spend)


def test_p95_interpolates_inside_its_bucket_like_prometheus() -> None:
    bounds = (0.1, 1.0, 10.0)
    assert p95([0, 0, 0, 0], bounds) is None
    assert p95([100, 0, 0, 0], bounds) == pytest.approx(0.095)  # 95th of 100 in [0, 0.1]
    assert p95([50, 50, 0, 0], bounds) == pytest.approx(0.1 + 0.9 * 45 / 50)
    assert p95([0, 0, 0, 7], bounds) == 10.0  # +Inf answers its lower bound


def test_rates_between_samples_and_spend_since_midnight() -> None:
    midnight = time.mktime(time.strptime("2026-11-27 00:00:00", "%Y-%m-%d %H:%M:%S"))
    recent = Recent(5.0, (0.1, 1.0))
    recent.add(sample(midnight - 10, 0, spend=2.0))
    recent.add(sample(midnight - 5, 10, latency=(10, 0, 0), spend=3.0))
    recent.add(sample(midnight + 5, 30, latency=(10, 20, 0), spend=3.5))  # a new day: spend counts from 3.0
    view = recent.overview()
    assert [p["requests_per_s"] for p in view["series"]] == [2.0, 2.0]
    assert [p["tokens_per_s"] for p in view["series"]] == [20.0, 20.0]
    assert view["series"][1]["p95_s"] == pytest.approx(0.1 + 0.9 * 19 / 20)  # only the 20 in that interval
    assert view["totals"]["spend_today"] == pytest.approx(0.5) and view["totals"]["requests"] == 30
    ring = Recent(1.0, ())
    for t in range(5000):
        ring.add(sample(float(t)))
    assert len(ring.samples) == 3601  # an hour, not more
    assert overview([], (), 0.0, 5.0)["series"] == []


@pytest.fixture
def ark(tmp_path: Path, tiny_gguf: Path) -> Iterator[ArkProcess]:
    extra = (
        '[gpu]\ndevice = "virtual"\nmemory_gb = 1\nreserve_gb = 0\n'
        '[models."tiny"]\nmemory_gb = 0.25\ninput_cost_per_token = 0.001\n'
        "[console]\noverview_sample_s = 0.5\n"
    )
    process = embedded_ark(tmp_path, tiny_gguf, extra=extra)
    try:
        result = CliRunner().invoke(
            main,
            [
                "users",
                "add",
                "alice",
                "--config",
                str(process.config),
                "--data-dir",
                str(process.data_dir),
                "--password-stdin",
            ],
            input=PASSWORD,
        )
        assert result.exit_code == 0, result.output
        yield process
    finally:  # also when adding the user failed: no `ark up` outlives its test
        stop_ark(process)


def chat(ark: ArkProcess, n: int = 1) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    for _ in range(n):
        answer = httpx.post(
            ark.api + "/chat/completions", headers={"Authorization": f"Bearer {MASTER_KEY}"}, json=body, timeout=60
        )
        assert answer.status_code == 200


def test_the_overview_json_is_for_signed_in_users(ark: ArkProcess) -> None:
    refused = httpx.get(ark.console + "/api/overview", timeout=5)
    assert refused.status_code == 401 and refused.json() == {"error": "sign in first"}
    page = httpx.get(ark.console + "/", timeout=5)
    assert page.status_code == 303  # to the sign-in page
    chat(ark, 2)
    # cookies by hand: httpx sends no Secure cookie over plain http (a browser on 127.0.0.1 does)
    form = httpx.get(ark.console + "/auth/login?rd=/", timeout=5)
    csrf = form.text.split('name=csrf value="')[1].split('"')[0]
    signed = httpx.post(
        ark.console + "/auth/login",
        data={"username": "alice", "password": PASSWORD, "csrf": csrf, "rd": "/"},
        headers={"cookie": f"ark_csrf={form.cookies.get('ark_csrf') or csrf}"},
        timeout=10,
    )
    assert signed.status_code == 303, signed.text
    session = signed.headers["set-cookie"].split("ark_session=")[1].split(";")[0]

    def overview() -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(ark.console + "/api/overview", cookies={"ark_session": session}).json()
        return answer

    # the next samples (every 0.5 s) see the two requests, and the totals count both once both are recorded
    # (the ledger is fed off the request path)
    assert wait_until(lambda: any(p["requests_per_s"] > 0 for p in overview()["series"]), 10)
    assert wait_until(lambda: overview()["totals"]["requests"] == 2, 10)
    data = overview()
    assert data["totals"]["requests"] == 2 and data["totals"]["spend_today"] > 0
    assert data["gpu"]["models"].keys() == {"tiny"} and data["gpu"]["capacity_bytes"] == 1024**3
    assert {"name": "gateway", "state": "running", "why": ""} in data["health"]
    assert any(p["requests_per_s"] > 0 for p in data["series"])
    home = httpx.get(ark.console + "/", cookies={"ark_session": session}, timeout=5)
    assert '<script src="/static/overview.js" defer></script>' in home.text
    assert "script-src 'self'" in home.headers["content-security-policy"]
    assert "'unsafe-inline'" not in home.headers["content-security-policy"].split("script-src")[1].split(";")[0]
    script = httpx.get(ark.console + "/static/overview.js", timeout=5)
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium (Debian package) is not installed")
def test_the_overview_page_updates_in_a_real_browser(ark: ArkProcess, tmp_path: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright (PyPI, test extra) is not installed")
    expect = playwright.expect
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 1250})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(f"{msg.text} {msg.location}") if msg.type == "error" else None)
            page.goto(ark.console + "/")  # not signed in: to the sign-in page
            assert "/auth/login" in page.url
            page.fill("#username", "alice")
            page.fill("#password", PASSWORD)
            page.click("button[type=submit]")
            # (locators and expect, not wait_for_function: the page's CSP forbids eval, as it should)
            expect(page.locator("#overview")).to_have_attribute("data-updates", re.compile(r"[1-9]"))
            expect(page.locator("#requests-total")).to_have_text("0")
            chat(ark, 3)  # traffic while the page is open: it must show without a reload
            expect(page.locator("#requests-total")).to_have_text("3", timeout=15000)
            expect(page.locator("#chart-requests")).to_have_attribute("data-points", re.compile(r"^([2-9]|\d\d+)$"))
            assert float(page.get_attribute("#chart-tokens", "data-points") or 0) >= 2
            assert "tiny" in (page.text_content("#gpu-legend") or "")  # the resident model in the memory bar
            assert page.locator("#gpu-bar span").count() >= 1
            assert "running" in (page.text_content("#health") or "")
            assert not errors, errors
            shot = tmp_path / "console-overview.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("UPDATE_DOCS_SCREENSHOTS") == "1":  # the screenshot in docs/monitoring.md
                shutil.copy(shot, DOCS / "console-overview.png")
        finally:
            browser.close()
