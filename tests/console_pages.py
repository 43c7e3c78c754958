"""What the console's page tests share: one `ark up` for the session (embedded engine on two copies of the
tiny GGUF under a virtual 1 GB GPU, prices, self-service key limits), people made with `ark users`, and
Debian's Chromium driven by PyPI playwright (launched once).

Import the fixtures into a test module (``from tests.console_pages import console_ark, chromium``); each
module makes its own people (distinct names), since the ARK is shared.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ark.cli.main import main
from tests.conftest import ArkProcess, embedded_ark, stop_ark

PASSWORD = "a long enough password 42"
DOCS = Path(__file__).resolve().parents[1] / "docs"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"]
EXTRA = (
    '[gpu]\ndevice = "virtual"\nmemory_gb = 1\nreserve_gb = 0\n'
    '[models."tiny"]\nmemory_gb = 0.25\ninput_cost_per_token = 0.001\noutput_cost_per_token = 0.002\n'
    '[models."tiny2"]\nmemory_gb = 0.25\n'
    "[console]\noverview_sample_s = 0.5\nkeys_per_person = 2\nkey_max_budget = 5\n"
)


def by_hand(ark: ArkProcess, name: str, ip: str, password: str = PASSWORD) -> tuple[Any, str]:
    """``name`` signed in to the console by httpx (a browser played by hand, from ``ip``), and the session's
    CSRF value (what its pages send in X-CSRF-Token)."""
    from tests.test_auth_console import Browser

    browser = Browser(ark, ip)
    assert browser.login(name, password).status_code == 303
    home = browser.send("GET", "/")
    found = re.search(r'name=ark-csrf content="([^"]+)"', home.text)
    assert home.status_code == 200 and found
    return browser, found.group(1)


def add_user(ark: ArkProcess, name: str, role: str = "user", password: str = PASSWORD) -> None:
    made = CliRunner().invoke(
        main,
        ["users", "add", name, "--email", f"{name}@example.com", "--role", role, "--password-stdin"],
        input=password,
        env={"ARK_CONFIG": str(ark.config), "ARK_DATA_DIR": str(ark.data_dir)},
    )
    assert made.exit_code == 0, made.output


@pytest.fixture(scope="session")
def console_ark(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[ArkProcess]:
    process = embedded_ark(tmp_path_factory.mktemp("console-pages"), tiny_gguf, models=("tiny", "tiny2"), extra=EXTRA)
    try:
        yield process
    finally:
        stop_ark(process)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """A headless Chromium (a playwright Browser); skipped, saying why, where either is missing. One per
    module: playwright's sync API keeps an event loop running on this thread until it stops, and a later
    test's asyncio.run() would find it."""
    if CHROMIUM is None:
        pytest.skip("chromium (Debian package) is not installed")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright (PyPI, test extra) is not installed")
    driver = playwright.sync_playwright().start()
    browser = driver.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    try:
        yield browser
    finally:
        browser.close()
        driver.stop()


class Errors(list[str]):
    """The page's script errors and console errors (a page must have none)."""


@contextmanager
def signed_in(chromium: Any, ark: ArkProcess, name: str, path: str = "/", password: str = PASSWORD) -> Iterator[Any]:
    """A fresh browser context signed in as ``name``, on ``path``; its page has ``.errors``. Closed after."""
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        errors = Errors()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(f"{msg.text} {msg.location}") if msg.type == "error" else None)
        page.errors = errors
        page.goto(ark.console + path)
        assert "/auth/login" in page.url
        page.fill("#username", name)
        page.fill("#password", password)
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(re.escape(ark.console + path) + r"$"))
        yield page
    finally:
        context.close()


def screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    """A full-page screenshot; copied to docs/NAME.png when UPDATE_DOCS_SCREENSHOTS=1 (how the docs' are made)."""
    shot = tmp_path / f"{name}.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("UPDATE_DOCS_SCREENSHOTS") == "1":
        shutil.copy(shot, DOCS / f"{name}.png")
    return shot
