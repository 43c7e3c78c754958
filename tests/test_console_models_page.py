"""The console's admin pages for models and services, in a real headless Chromium against the shared `ark up`
(embedded engine, "tiny" and "tiny2" under a virtual 1 GB GPU): an admin loads and unloads a model and the
arbiter agrees; the services table is the gateway's; the log viewer shows a log as text; a plain user is
refused the pages and the API under them, server-side. Answers the shared ARK cannot give (no arbiter, a
supervised service's log) are played by routes in the browser, and the log API's checks by its handler."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest

from ark.errors import InvalidRequest, NotFound
from ark.gateway.health import HealthApi
from ark.supervisor.supervisor import ServiceSpec, Supervised, Supervisor
from ark.wire import Request
from tests.conftest import MASTER_KEY, ArkProcess
from tests.console_pages import PASSWORD, add_user, screenshot, signed_in
from tests.test_auth_console import Browser

MASTER = {"Authorization": f"Bearer {MASTER_KEY}"}
LOAD_MS = 60_000  # a load of the tiny model takes well under a second; a loaded CI machine, longer


def expect() -> Any:
    return pytest.importorskip("playwright.sync_api").expect


def resident(ark: ArkProcess, model: str) -> bool:
    status = httpx.get(ark.url + "/admin/gpu", headers=MASTER, timeout=10).json()
    return next(m["resident"] is True for m in status["models"] if m["model"] == model)


def gpu(ark: ArkProcess, action: str, model: str) -> dict[str, Any]:
    answer = httpx.post(ark.url + f"/admin/gpu/{action}", headers=MASTER, json={"model": model}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def unexpected(errors: list[str], *statuses: int) -> list[str]:
    """The page's errors but Chromium's own line for an answer with one of ``statuses`` (which a test sends)."""
    said = tuple(f"the server responded with a status of {status}" for status in statuses)
    return [e for e in errors if not any(s in e for s in said)]


def test_an_admin_loads_and_unloads_a_model(console_ark: ArkProcess, chromium: Any, tmp_path: Path) -> None:
    check = expect()
    add_user(console_ark, "mona", "admin")
    gpu(console_ark, "unload", "tiny2")  # the ARK is shared: start from "not loaded"
    with signed_in(chromium, console_ark, "mona", "/admin/models") as page:
        tiny, tiny2 = page.locator("tr[data-model=tiny]"), page.locator("tr[data-model=tiny2]")
        check(tiny.locator("td").first).to_have_text("text")  # the catalog's kind
        check(tiny2.locator("td").first).to_have_text("text")
        check(page.locator("#gpu-device")).to_contain_text("virtual GPU (1 GB)")
        state = tiny2.locator("[data-state]")
        check(state).to_have_attribute("data-state", "not loaded")
        load = tiny2.get_by_role("button", name="Load", exact=True)
        unload = tiny2.get_by_role("button", name="Unload", exact=True)
        check(unload).to_be_disabled()

        load.click()
        check(state).to_have_attribute("data-state", "resident", timeout=LOAD_MS)
        assert resident(console_ark, "tiny2")
        check(page.get_by_role("status")).to_have_text("tiny2 is loaded.")
        check(load).to_be_disabled()
        check(page.locator("#gpu-legend")).to_contain_text("tiny2 0.25 GB")  # 0.25 GB, one decimal
        check(tiny2).to_contain_text("25%")  # its share of the 1 GB
        screenshot(page, tmp_path, "console-models")

        unload.click()
        check(state).to_have_attribute("data-state", "not loaded", timeout=LOAD_MS)
        assert not resident(console_ark, "tiny2")
        check(page.get_by_role("status")).to_have_text("tiny2 is unloaded.")
        check(page.locator("#gpu-legend")).not_to_contain_text("tiny2")

        # redrawn in place: a button keeps the keyboard's focus across the page's polls
        drawn = int(page.locator("#gpu").get_attribute("data-updates") or "0")
        load.focus()
        check(page.locator("#gpu")).to_have_attribute("data-updates", str(drawn + 1))
        check(load).to_be_focused()

        # the page follows the arbiter without a reload: a load from elsewhere (the CLI, a request) shows
        gpu(console_ark, "load", "tiny2")
        check(state).to_have_attribute("data-state", "resident", timeout=10_000)
        gpu(console_ark, "unload", "tiny2")
        check(state).to_have_attribute("data-state", "not loaded", timeout=10_000)

        # and so does a memory hold (a render outside the engines); its holder's name is text, not markup
        body = {"holder": "<i>a render</i>", "memory_gb": 0.1, "max_seconds": 60}
        hold = httpx.post(console_ark.url + "/admin/gpu/holds", headers=MASTER, json=body, timeout=30).json()
        holds = page.locator("#gpu-holds")
        try:
            check(holds.locator("tbody tr")).to_contain_text("<i>a render</i>")
            check(holds.locator("i")).to_have_count(0)
            check(page.locator("#gpu-legend")).to_contain_text("holds 0.10 GB")
        finally:
            httpx.delete(console_ark.url + f"/admin/gpu/holds/{hold['id']}", headers=MASTER, timeout=10)
        check(holds).to_be_empty(timeout=10_000)
        assert not page.errors


def test_the_models_page_without_an_arbiter_and_a_refused_load(console_ark: ArkProcess, chromium: Any) -> None:
    check = expect()
    add_user(console_ark, "moritz", "admin")
    gone = {"error": {"message": "Unknown request URL", "type": "invalid_request_error", "param": None, "code": None}}
    with signed_in(chromium, console_ark, "moritz", "/admin/models") as page:
        page.route("**/console/api/admin/gpu", lambda route: route.fulfill(status=404, json=gone))
        page.reload()
        check(page.locator("#gpu")).to_contain_text("The GPU arbiter is off")
        check(page.locator("tr[data-model=tiny] [data-state]")).to_have_attribute("data-state", "no arbiter")
        check(page.locator("tr[data-model=tiny2]")).to_be_visible()  # the catalog is still shown
        check(page.get_by_role("button", name="Load", exact=True)).to_have_count(0)  # hidden: nothing to load with
        assert unexpected(page.errors, 404) == []

        busy = {
            "error": {
                "message": "The model tiny2 is pinned: it stays loaded.",
                "type": "invalid_request_error",
                "code": "model_busy",
            }
        }
        page.unroute("**/console/api/admin/gpu")
        page.route("**/console/api/admin/gpu/unload", lambda route: route.fulfill(status=409, json=busy))
        gpu(console_ark, "load", "tiny2")
        try:
            page.reload()
            row = page.locator("tr[data-model=tiny2]")
            check(row.locator("[data-state]")).to_have_attribute("data-state", "resident")
            row.get_by_role("button", name="Unload", exact=True).click()
            check(page.get_by_role("alert")).to_have_text("The model tiny2 is pinned: it stays loaded.")
            check(row.locator("[data-state]")).to_have_attribute("data-state", "resident")
            check(row.get_by_role("button", name="Unload", exact=True)).to_be_enabled()  # it may be tried again
            assert resident(console_ark, "tiny2")
        finally:
            gpu(console_ark, "unload", "tiny2")
        assert unexpected(page.errors, 404, 409) == []


def test_the_services_page_lists_the_gateways_services(console_ark: ArkProcess, chromium: Any, tmp_path: Path) -> None:
    check = expect()
    add_user(console_ark, "mira", "admin")
    listed = httpx.get(console_ark.url + "/admin/services", headers=MASTER, timeout=10).json()
    services = [*listed["core"], *listed["services"]]  # the gateway and engines first, then the services
    assert {s["name"] for s in listed["services"]} >= {"comfyui", "open-webui"}  # none supervised here
    assert [(s["name"], s["state"]) for s in listed["core"]] == [("gateway", "running"), ("engine embedded", "running")]
    with signed_in(chromium, console_ark, "mira", "/admin/services") as page:
        for service in services:
            row = page.locator(f'tr[data-service="{service["name"]}"]')
            check(row.locator("[data-state]")).to_have_attribute("data-state", service["state"])
            check(row).to_contain_text(service["why"])
        check(page.locator("tbody tr")).to_have_count(len(services))
        check(page.locator('tr[data-service="comfyui"] [data-state]')).to_have_class("dim")  # absent
        check(page.get_by_role("button", name="Log", exact=True)).to_have_count(0)  # no supervised service: no log
        screenshot(page, tmp_path, "console-services")
        assert not page.errors


def test_the_log_viewer_shows_a_supervised_services_log_as_text(console_ark: ArkProcess, chromium: Any) -> None:
    check = expect()
    add_user(console_ark, "mats", "admin")
    running = {
        "name": "demo",
        "state": "running",
        "why": "",
        "pid": 4242,
        "restarts": 3,
        "uptime_s": 3725.0,
        "last_exit": 1,
        "log": "/var/log/ark/demo.log",
    }
    failed = {"name": "broken", "state": "failed", "why": "exited with 2", "pid": None, "restarts": 5, "log": "/x"}
    lines = ["first line", "<b>not markup</b> & more", "last line"]
    asked: list[str] = []

    def log(route: Any) -> None:
        asked.append(route.request.url)
        route.fulfill(json={"name": "demo", "log": "/var/log/ark/demo.log", "lines": lines})

    with signed_in(chromium, console_ark, "mats", "/admin/services") as page:
        page.route("**/console/api/admin/services", lambda route: route.fulfill(json={"services": [running, failed]}))
        page.route("**/console/api/admin/services/log?*", log)
        page.reload()
        row = page.locator('tr[data-service="demo"]')
        check(row).to_contain_text("1 h 2 min")  # uptime
        check(row).to_contain_text("4242")
        check(row.locator("[data-state]")).to_have_class("ok")
        check(page.locator('tr[data-service="broken"] [data-state]')).to_have_class("bad")
        check(page.locator("#log-view")).to_be_hidden()
        row.get_by_role("button", name="Log", exact=True).click()
        check(page.locator("pre#log")).to_have_text("\n".join(lines))
        check(page.locator("pre#log b")).to_have_count(0)  # a log's text is never markup
        check(page.locator("#log-view h2")).to_have_text("Log: demo")
        assert re.search(r"/console/api/admin/services/log\?name=demo&lines=200$", asked[0]), asked
        page.get_by_role("button", name="Close", exact=True).click()
        check(page.locator("#log-view")).to_be_hidden()
        assert not page.errors


class Sent:
    """A Responder stand-in: what the handler sent."""

    status, body = 0, b""

    async def send(self, status: int, body: bytes, headers: Any = None) -> None:
        self.status, self.body = status, body


def ask_log(tmp_path: Path, query: str) -> Sent:
    """GET /admin/services/log?QUERY from the gateway's handler, with one supervised service, "demo", whose
    log has 300 lines (no `ark up`: this ARK runs no supervised service)."""
    log = tmp_path / "demo.log"
    log.write_text("".join(f"line {n}\n" for n in range(1, 301)))
    supervisor = Supervisor(tmp_path)
    supervisor.services["demo"] = Supervised(ServiceSpec("demo", ["true"]), log)
    health = HealthApi()
    health.rt = SimpleNamespace(supervisor=supervisor)  # type: ignore[assignment]
    sent = Sent()
    request = Request("GET", "/admin/services/log", query, {}, b"", "127.0.0.1")
    # a thread of its own: the session's Chromium (playwright's sync API) keeps an event loop running in this one
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, health.service_log(request, sent)).result(timeout=10)  # type: ignore[arg-type]
    return sent


def test_the_log_api_answers_the_end_of_a_supervised_services_log(tmp_path: Path) -> None:
    sent = ask_log(tmp_path, "name=demo&lines=3")
    assert sent.status == 200
    assert orjson.loads(sent.body) == {
        "name": "demo",
        "log": str(tmp_path / "demo.log"),
        "lines": ["line 298", "line 299", "line 300"],
    }
    default = orjson.loads(ask_log(tmp_path, "name=demo").body)["lines"]
    assert len(default) == 200 and default[-1] == "line 300"
    for lines in ("0", "abc", "2001", "-1", "1.5", "٣"):  # the last: an Arabic-Indic digit, a digit to isdigit()
        with pytest.raises(InvalidRequest, match="'lines' must be a whole number from 1 to 2000"):
            ask_log(tmp_path, f"name=demo&lines={lines}")
    for name in ("", "../demo", "demo.log", "Demo"):
        with pytest.raises(NotFound, match="No supervised service"):
            ask_log(tmp_path, f"name={name}&lines=3")


def test_the_log_api_refuses_an_unknown_service_in_openais_shape(console_ark: ArkProcess) -> None:
    answer = httpx.get(console_ark.url + "/admin/services/log", params={"name": "nope"}, headers=MASTER, timeout=10)
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert error["code"] == "not_found" and error["param"] == "name" and error["type"] == "invalid_request_error"
    assert "No supervised service 'nope'" in error["message"]
    refused = httpx.get(console_ark.url + "/admin/services/log", params={"name": "nope"}, timeout=10)
    assert refused.status_code == 401  # the master key only


def test_a_plain_user_is_refused_the_admin_pages_and_their_api(console_ark: ArkProcess) -> None:
    add_user(console_ark, "milo")
    add_user(console_ark, "mina", "admin")
    gpu(console_ark, "unload", "tiny2")  # so that a load that got through would show
    admin = Browser(console_ark, "10.77.0.1")
    assert admin.login("mina", PASSWORD).status_code == 303
    user = Browser(console_ark, "10.77.0.2")
    assert user.login("milo", PASSWORD).status_code == 303
    for path, script in (("/admin/models", "admin-models.js"), ("/admin/services", "admin-services.js")):
        opened = admin.send("GET", path)
        assert opened.status_code == 200 and f'src="/static/{script}"' in opened.text
        refused = user.send("GET", path)
        assert refused.status_code == 403 and script not in refused.text
    home = user.send("GET", "/")
    found = re.search(r'name=ark-csrf content="([^"]+)"', home.text)
    assert home.status_code == 200 and found
    csrf = {"x-csrf-token": found.group(1)}
    for method, path in (("GET", "/admin/gpu"), ("POST", "/admin/gpu/load"), ("GET", "/admin/services")):
        body = {"model": "tiny2"} if method == "POST" else None
        answer = user.send(method, "/console/api" + path, json=body, headers=csrf)
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "admin_only", (path, answer.text)
    assert not resident(console_ark, "tiny2")


def test_the_log_api_answers_whole_lines_only(tmp_path: Path) -> None:
    """Long lines: the window read (512 bytes a line asked for) begins inside one, which is left out."""
    log = tmp_path / "demo.log"
    log.write_text("".join(f"{n:04d}" + "x" * 996 + "\n" for n in range(1, 11)))  # 1,001 bytes a line
    supervisor = Supervisor(tmp_path)
    supervisor.services["demo"] = Supervised(ServiceSpec("demo", ["true"]), log)
    health = HealthApi()
    health.rt = SimpleNamespace(supervisor=supervisor)  # type: ignore[assignment]
    sent = Sent()
    request = Request("GET", "/admin/services/log", "name=demo&lines=3", {}, b"", "127.0.0.1")
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, health.service_log(request, sent)).result(timeout=10)  # type: ignore[arg-type]
    lines = orjson.loads(sent.body)["lines"]
    assert lines == ["0010" + "x" * 996]  # 1,536 bytes hold one whole line; the cut one before it is not shown
