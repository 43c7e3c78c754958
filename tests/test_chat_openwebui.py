"""Open WebUI for real, run by `ark up` with ChromaDB, every chat through the gateway and charged to its person.

Open WebUI's environment is large (about 1.9 GB): `scripts/install --test` installs it once into
~/.cache/ark/services (keyed by its pinned version) and this suite reuses it. ARK_TEST_OPEN_WEBUI=no
switches the suite off for a quick local run; .ci/run always runs it.

People sign in as Nginx signs them in (the trusted headers it sets from ARK's session), then use Open WebUI's
own HTTP API, as its pages do: the models are the gateway's, a chat (whole and streamed) reaches the embedded
engine through the gateway and lands in the ledger under that person, a document is embedded through the
gateway into ARK's ChromaDB and answers a question about it, a person's image is made by ComfyUI (its
stand-in) through the gateway and charged to them, and a person over their budget gets the gateway's refusal.
A headless Chromium signed in the same way shows the page (screenshots for docs/chat.md).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from click.testing import CliRunner

from ark.chat import install
from ark.cli.main import main
from ark.config import load_settings
from tests.conftest import MASTER_KEY, ArkProcess, LoopThread, free_port, start_ark, stop_ark, wait_until
from tests.fakes.comfyui import FakeComfyUI

CACHE = Path(os.environ.get("ARK_TEST_SERVICES_DIR", Path.home() / ".cache" / "ark" / "services"))
_INSTALLED = install.installed(load_settings(env={"ARK_CHAT_SERVICES_DIR": str(CACHE)}))
pytestmark = [
    pytest.mark.timeout(600),  # Open WebUI's first start migrates its database: a minute on two cores
    pytest.mark.skipif(
        os.environ.get("ARK_TEST_OPEN_WEBUI", "").lower() in ("no", "0", "false"),
        reason="ARK_TEST_OPEN_WEBUI=no: the Open WebUI suite is switched off for this run",
    ),
    pytest.mark.skipif(
        _INSTALLED is None,
        reason=f"Open WebUI {install.OPEN_WEBUI_VERSION} is not in {CACHE}: scripts/install --test installs it there",
    ),
]
ADMIN = {"Authorization": f"Bearer {MASTER_KEY}"}
SCREENSHOTS = os.environ.get("ARK_SCREENSHOTS")  # read before the suite hides ARK_* (docs/chat.md's pictures)
CHROMA: list[str] = []
CHAT: list[str] = []  # Open WebUI's address  # ChromaDB's address, once the module's ARK runs
DOCUMENT = "The ARK project's codename is BLUE-HERON-42. It runs a whole AI platform on one machine.\n"

CONFIG = """
master_key = "{KEY}"

[gateway]
listen = "127.0.0.1:{PORT}"

[engines.embedded]
kind = "embedded"
n_threads = 1
n_ctx = 16384
bundled_model = false

[models.tiny]
output_cost_per_token = 0.125
max_output_tokens = 64  # the page's chats set no max_tokens: the tiny model would write on to its context's end

[chat]
open_webui = "yes"
embedding_model = "tiny"

[images]
comfyui_url = "{COMFY}"

[image_models."sdxl"]
cost_per_image = 2.0
"""


@pytest.fixture(scope="module")
def comfy(loop_thread: LoopThread) -> Iterator[FakeComfyUI]:
    fake = FakeComfyUI(models=0)
    loop_thread.run(fake.start())
    fake.step_delay = 0.001
    yield fake
    loop_thread.run(fake.stop())


@pytest.fixture(scope="module")
def ark(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path, comfy: FakeComfyUI) -> Iterator[ArkProcess]:
    tmp = tmp_path_factory.mktemp("chat")
    (tmp / "data" / "models").mkdir(parents=True)
    shutil.copy(tiny_gguf, tmp / "data" / "models" / "tiny.gguf")
    web, chroma = free_port(), free_port()
    env = {
        "ARK_CHAT_SERVICES_DIR": str(CACHE),
        "ARK_CHAT_OPEN_WEBUI_LISTEN": f"127.0.0.1:{web}",
        "ARK_CHAT_CHROMA_LISTEN": f"127.0.0.1:{chroma}",
    }
    process = start_ark(CONFIG.replace("{KEY}", MASTER_KEY).replace("{COMFY}", comfy.url), tmp, env=env)
    process.console = f"http://127.0.0.1:{web}"  # Open WebUI's address, for the tests below
    CHROMA.append(f"http://127.0.0.1:{chroma}")
    CHAT.append(process.console)
    try:
        for name, role in (("alice", "admin"), ("bob", "user")):
            added = CliRunner().invoke(
                main,
                ["users", "add", name, "--email", f"{name}@example.com", "--role", role, "--password-stdin"],
                input="correct-horse-battery",
                env={"ARK_DATA_DIR": str(process.data_dir), "ARK_CONFIG": str(process.config)},
            )
            assert added.exit_code == 0, added.output
        limit(process, "bob", max_budget=1000.0)  # the gateway reloads people now
        limit(process, "alice", max_budget=100_000.0)  # a budget: her page's chats stop at max_output_tokens

        def services_up() -> bool:
            listed = httpx.get(process.url + "/admin/services", headers=ADMIN, timeout=5).json()["services"]
            states = {s["name"]: s["state"] for s in listed}
            assert states.get("open-webui") not in ("failed", "absent"), listed
            return states.get("open-webui") == "running" and states.get("chromadb") == "running"

        assert wait_until(services_up, timeout=400, interval=1.0), (tmp / "data" / "logs").iterdir()
        yield process
    finally:
        stop_ark(process)


def limit(ark: ArkProcess, user: str, **fields: object) -> None:
    reply = httpx.post(ark.url + "/user/update", headers=ADMIN, json={"user": user, **fields}, timeout=10)
    assert reply.status_code == 200, reply.text


def sign_in(ark: ArkProcess, name: str, role: str) -> dict[str, str]:
    """What Nginx does for chat.DOMAIN: the identity headers from ARK's session, on Open WebUI's sign-in."""
    headers = {"X-Trusted-Email": f"{name}@example.com", "X-Trusted-Name": name.title(), "X-Ark-Role": role}
    reply = httpx.post(ark.console + "/api/v1/auths/signin", headers=headers, json={"email": "", "password": ""})
    assert reply.status_code == 200, reply.text
    assert reply.json()["role"] == role
    return {"Authorization": f"Bearer {reply.json()['token']}"}


def ledger(ark: ArkProcess, count: int, path: str | None = None, **query: str) -> list[dict[str, object]]:
    """The ledger's rows (of ``path``, when given), once ``count`` are there: it writes in batches."""
    found: list[dict[str, object]] = []

    def written() -> bool:
        nonlocal found
        found = httpx.get(ark.url + "/spend/logs", headers=ADMIN, params={"limit": "1000", **query}, timeout=10).json()
        found = [row for row in found if path is None or row["call_type"] == path]
        return len(found) >= count

    assert wait_until(written, timeout=30), found
    return found


def test_people_sign_in_and_see_the_gateways_models(ark: ArkProcess) -> None:
    for name, role in (("alice", "admin"), ("bob", "user")):
        models = httpx.get(ark.console + "/api/models", headers=sign_in(ark, name, role), timeout=30)
        assert models.status_code == 200, models.text
        assert "tiny" in {m["id"] for m in models.json()["data"]}


def test_chats_reach_the_engine_through_the_gateway_charged_to_each_person(ark: ArkProcess) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    for name, role in (("alice", "admin"), ("bob", "user")):
        headers = sign_in(ark, name, role)
        whole = httpx.post(ark.console + "/api/chat/completions", headers=headers, json=body, timeout=120)
        assert whole.status_code == 200, whole.text
        assert whole.json()["choices"][0]["message"]["role"] == "assistant"
        with httpx.stream(
            "POST", ark.console + "/api/chat/completions", headers=headers, json={**body, "stream": True}, timeout=120
        ) as streamed:
            assert streamed.status_code == 200
            events = [line for line in streamed.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and len(events) >= 2
        rows = ledger(ark, 2, "/v1/chat/completions", user=f"{name}@example.com")
        assert len(rows) == 2 and {r["end_user"] for r in rows} == {name}
        assert {r["key_alias"] for r in rows} == {"open-webui"}  # the service key ARK made for it
        assert all(r["status"] == 200 and r["completion_tokens"] for r in rows)


def test_a_persons_image_is_made_through_the_gateway_and_charged_to_them(ark: ArkProcess, comfy: FakeComfyUI) -> None:
    bob = sign_in(ark, "bob", "user")
    jobs = len(comfy.jobs)
    made = httpx.post(
        ark.console + "/api/v1/images/generations", headers=bob, json={"prompt": "a blue heron"}, timeout=60
    )
    assert made.status_code == 200, made.text
    assert len(comfy.jobs) == jobs + 1
    texts = [node["inputs"].get("text") for node in comfy.jobs[-1].values() if node["class_type"] == "CLIPTextEncode"]
    assert "a blue heron" in texts
    stored = httpx.get(ark.console + made.json()[0]["url"], headers=bob, timeout=10)  # Open WebUI kept the PNG
    assert stored.status_code == 200 and stored.content.startswith(b"\x89PNG")
    rows = ledger(ark, 1, "/v1/images/generations", user="bob@example.com")
    assert [(r["end_user"], r["key_alias"], r["kind"], r["images"], r["status"]) for r in rows] == [
        ("bob", "open-webui", "image", 1, 200)
    ]
    assert rows[0]["spend"] == 2.0  # Open WebUI asks the model's own size (IMAGE_SIZE): 1024x1024
    assert rows[0]["model"] == "sdxl"


def test_a_document_is_embedded_through_the_gateway_into_arks_chromadb(ark: ArkProcess) -> None:
    headers = sign_in(ark, "bob", "user")
    uploaded = httpx.post(
        ark.console + "/api/v1/files/",
        headers=headers,
        files={"file": ("heron.txt", DOCUMENT.encode(), "text/plain")},
        timeout=60,
    )
    assert uploaded.status_code == 200, uploaded.text
    file_id = uploaded.json()["id"]

    def processed() -> bool:
        status = httpx.get(ark.console + f"/api/v1/files/{file_id}/process/status", headers=headers, timeout=10)
        state = status.json().get("status")
        assert state != "failed", httpx.get(ark.console + f"/api/v1/files/{file_id}", headers=headers).text
        return state == "completed"

    assert wait_until(processed, timeout=120, interval=0.5)
    embedded = ledger(ark, 1, "/v1/embeddings", user="bob")
    assert {r["end_user"] for r in embedded} == {"bob"} and embedded[0]["model"] == "tiny"
    collections = httpx.get(
        CHROMA[-1] + "/api/v2/tenants/default_tenant/databases/default_database/collections", timeout=10
    )
    assert collections.status_code == 200, collections.text
    assert f"file-{file_id}" in {c["name"] for c in collections.json()}
    question = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "What is the project's codename?"}],
        "max_tokens": 4,
        "files": [{"type": "file", "id": file_id}],
    }
    answer = httpx.post(ark.console + "/api/chat/completions", headers=headers, json=question, timeout=120)
    assert answer.status_code == 200, answer.text
    sources = answer.json().get("sources") or []
    assert any("BLUE-HERON-42" in chunk for source in sources for chunk in source.get("document", []))


def test_a_person_over_budget_gets_the_gateways_refusal(ark: ArkProcess) -> None:
    headers = sign_in(ark, "bob", "user")
    spent = float(httpx.get(ark.url + "/user/info", headers=ADMIN, params={"user": "bob"}).json()["spend"])
    limit(ark, "bob", max_budget=spent + 0.1)  # not enough for 4 tokens at 0.125
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    refused = httpx.post(ark.console + "/api/chat/completions", headers=headers, json=body, timeout=60)
    assert refused.status_code == 429, refused.text
    error = orjson.loads(refused.content)["error"]
    assert error["type"] == "insufficient_quota" and "user bob" in error["message"]
    # alice's budget is her own: the same service key still serves her
    other = httpx.post(ark.console + "/api/chat/completions", headers=sign_in(ark, "alice", "admin"), json=body)
    assert other.status_code == 200, other.text
    limit(ark, "bob", max_budget=None)


def test_a_client_sent_person_header_on_an_ordinary_key_is_ignored(ark: ArkProcess) -> None:
    made = httpx.post(ark.url + "/key/generate", headers=ADMIN, json={"key_alias": "someone"}, timeout=10).json()
    forged = {"Authorization": f"Bearer {made['key']}", "X-OpenWebUI-User-Email": "alice@example.com"}
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert httpx.post(ark.api + "/chat/completions", headers=forged, json=body, timeout=60).status_code == 200
    rows = ledger(ark, 1, api_key=made["key"])
    assert rows[0]["end_user"] is None
    assert ark.metric("ark_untrusted_user_header_total", key_alias="someone") == 1


def test_the_page_signed_in_through_ark_in_headless_chromium(ark: ArkProcess, tmp_path: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed: scripts/install --test installs it")
    shots = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        try:
            page = _signed_in_page(browser, "alice", "admin")
            page.screenshot(path=str(shots / "chat-signed-in.png"))
            message = _send(page, ark, "alice", "admin", "Say hello")
            assert message.get("content") and not message.get("error")
            page.screenshot(path=str(shots / "chat-answer.png"))
            spent = float(httpx.get(ark.url + "/user/info", headers=ADMIN, params={"user": "bob"}).json()["spend"])
            limit(ark, "bob", max_budget=spent + 0.01)
            try:
                page = _signed_in_page(browser, "bob", "user")
                refused = _send(page, ark, "bob", "user", "Tell me a story")
            finally:
                limit(ark, "bob", max_budget=None)
            error = refused.get("error") or {}
            assert "The user bob has spent" in str(error.get("content")), refused  # the gateway's words, shown
            page.screenshot(path=str(shots / "chat-over-budget.png"))
        finally:
            browser.close()
    assert (shots / "chat-signed-in.png").stat().st_size > 10_000


def _signed_in_page(browser: Any, name: str, role: str) -> Any:
    """A page of Open WebUI as Nginx serves it to a person signed in to ARK (the identity headers it sets)."""
    headers = {"X-Trusted-Email": f"{name}@example.com", "X-Trusted-Name": name.title(), "X-Ark-Role": role}
    context = browser.new_context(viewport={"width": 1280, "height": 800}, extra_http_headers=headers)
    page = context.new_page()
    page.goto(CHAT[-1] + "/", wait_until="domcontentloaded", timeout=120_000)
    page.wait_for_selector("#chat-input", timeout=120_000)  # signed in: the chat box, no sign-in form
    dialog = page.get_by_role("button", name="Okay, Let's Go!")  # "What's new", at a first sign-in
    if dialog.count():
        dialog.click()
        page.locator("div[role=dialog]").wait_for(state="detached", timeout=30_000)
    return page


def _send(page: Any, ark: ArkProcess, name: str, role: str, text: str) -> dict[str, Any]:
    """Type ``text`` into the chat box and send it; the assistant's saved message once it is done."""
    api = sign_in(ark, name, role)
    before = {c["id"] for c in httpx.get(ark.console + "/api/v1/chats/?page=1", headers=api, timeout=10).json()}
    page.locator("#chat-input").click()
    page.keyboard.type(text)
    page.keyboard.press("Enter")
    found: dict[str, Any] = {}

    def done() -> bool:
        for chat in httpx.get(ark.console + "/api/v1/chats/?page=1", headers=api, timeout=10).json():
            if chat["id"] in before:
                continue
            full = httpx.get(ark.console + f"/api/v1/chats/{chat['id']}", headers=api, timeout=10).json()
            for message in full["chat"].get("history", {}).get("messages", {}).values():
                if message.get("role") == "assistant" and (message.get("done") or message.get("error")):
                    found.update(message)
                    return True
        return False

    assert wait_until(done, timeout=120, interval=0.5)
    page.wait_for_timeout(500)  # the page draws what the server saved; the picture is not asserted on
    return found
