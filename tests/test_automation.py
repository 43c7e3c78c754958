"""n8n run by `ark up`: its environment written by ARK, its workflows imported and switched on at start, and
for real (installed from npm by scripts/install --test, cached per version): an ARK event reaches n8n's
webhook, and the workflow's chat request reaches the gateway with n8n's own key and lands in the ledger."""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from ark.automation import install
from ark.automation.component import command, n8n_env, workflows
from ark.config import load_settings
from ark.events import signing
from ark.supervisor.installs import InstallError
from tests.conftest import MASTER_KEY, ArkProcess, free_port, start_ark, stop_ark, wait_until
from tests.console_pages import screenshot
from tests.fakes.ollama import FakeOllama

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "src" / "ark" / "automation" / "workflows" / "ark-event-reply.json"
CACHE = Path(os.environ.get("ARK_TEST_SERVICES_DIR", Path.home() / ".cache" / "ark" / "services"))
_INSTALLED = install.installed(load_settings(env={"ARK_CHAT_SERVICES_DIR": str(CACHE)}))
MASTER = {"Authorization": f"Bearer {MASTER_KEY}"}


def test_n8n_takes_its_whole_configuration_from_ark(tmp_path: Path) -> None:
    settings = load_settings(env={"ARK_DATA_DIR": str(tmp_path), "ARK_AUTOMATION_N8N_LISTEN": "127.0.0.1:5999"})
    env = n8n_env(settings, "sk-ark-n8n", tmp_path / "n8n" / "encryption.key")
    assert (env["N8N_LISTEN_ADDRESS"], env["N8N_PORT"], env["N8N_USER_FOLDER"]) == (
        "127.0.0.1",
        "5999",
        str(tmp_path / "n8n"),
    )
    off = ("N8N_DIAGNOSTICS_ENABLED", "N8N_VERSION_NOTIFICATIONS_ENABLED", "N8N_TEMPLATES_ENABLED")
    assert all(env[name] == "false" for name in off)
    assert env["ARK_API_URL"] == "http://127.0.0.1:4000/v1" and env["ARK_API_KEY"] == "sk-ark-n8n"
    assert "N8N_ENCRYPTION_KEY" not in env  # workflows read $env: the key is a file they cannot name
    assert env["N8N_ENCRYPTION_KEY_FILE"] == str(tmp_path / "n8n" / "encryption.key")
    assert env["N8N_SECURE_COOKIE"] == "false" and env["N8N_RUNNERS_ENABLED"] == "false"
    assert env["N8N_DYNAMIC_BANNERS_ENABLED"] == "false"
    behind = load_settings(env={"ARK_DATA_DIR": str(tmp_path), "ARK_EDGE_DOMAIN": "ark.example.org"})
    proxied = n8n_env(behind, "k", tmp_path / "key")
    assert proxied["WEBHOOK_URL"] == "https://n8n.ark.example.org/" and proxied["N8N_SECURE_COOKIE"] == "true"


def test_workflows_are_imported_then_switched_on_before_n8n_starts(tmp_path: Path) -> None:
    shutil.copy(SHIPPED, tmp_path / "reply.json")
    (tmp_path / "off.json").write_text('{"id": "offFlow000000001", "nodes": [], "connections": {}}')
    found = workflows(tmp_path)
    assert found == [(tmp_path / "off.json", None), (tmp_path / "reply.json", "arkEventReply001")]
    argv = command("/usr/bin/node", Path("/n8n/bin/n8n"), tmp_path, found)
    assert argv[:2] == ["/bin/sh", "-c"]
    steps = argv[2].split(" && ")
    assert steps[0] == f"/usr/bin/node /n8n/bin/n8n import:workflow --separate --input={tmp_path}"
    assert steps[1:] == [
        "/usr/bin/node /n8n/bin/n8n update:workflow --id=arkEventReply001 --active=true",
        "exec /usr/bin/node /n8n/bin/n8n start",
    ]
    assert command("node", Path("n8n"), tmp_path / "none", [])[2] == "exec node n8n start"
    (tmp_path / "nameless.json").write_text('{"nodes": [], "connections": {}}')  # a new copy at every import
    with pytest.raises(ValueError, match=r"nameless\.json: a workflow file needs its"):
        workflows(tmp_path)
    (tmp_path / "nameless.json").unlink()
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match=r"broken\.json"):
        workflows(tmp_path)


def test_the_workflow_in_the_docs_is_the_one_ark_ships() -> None:
    text = (ROOT / "docs" / "automation.md").read_text()
    block = re.search(r"<!-- workflow: ark-event-reply.json -->\n```json\n(.*?)\n```", text, re.S)
    assert block is not None and orjson.loads(block[1]) == orjson.loads(SHIPPED.read_bytes())


def test_n8n_needs_a_recent_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = tmp_path / "node"
    old.write_text("#!/bin/sh\necho v18.19.0\n")
    old.chmod(old.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(InstallError, match=r"20\.19 to 24, not v18\.19\.0"):
        install.node()
    old.unlink()
    with pytest.raises(InstallError, match=r"needs Node\.js"):
        install.node()


# -- n8n for real ---------------------------------------------------------------------------------------------
CONFIG = """master_key = "{key}"
[gateway]
listen = "127.0.0.1:{{PORT}}"
[engines.ollama]
kind = "ollama"
url = "{ollama}"
[automation]
n8n = "yes"
model = "llama3.2:1b"
[webhooks.n8n]
url = "http://127.0.0.1:{n8n}/webhook/ark-events"
secret = "{secret}"
events = "key.created"
"""


@pytest.fixture
def ark(tmp_path: Path, fake_ollama: FakeOllama) -> Iterator[ArkProcess]:
    if _INSTALLED is None:
        pytest.skip(
            f"n8n {install.N8N_VERSION} is not in {CACHE}: scripts/install --test installs it there when this "
            "machine has Node.js 20.19 or newer"
        )
    port = free_port()
    (tmp_path / "data" / "n8n-workflows").mkdir(parents=True)
    shutil.copy(SHIPPED, tmp_path / "data" / "n8n-workflows" / "ark-event-reply.json")
    text = CONFIG.format(key=MASTER_KEY, ollama=fake_ollama.url, n8n=port, secret=signing.new_secret())
    env = {"ARK_CHAT_SERVICES_DIR": str(CACHE), "ARK_AUTOMATION_N8N_LISTEN": f"127.0.0.1:{port}"}
    process = start_ark(text, tmp_path, env=env)
    process.n8n = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]

    def running() -> bool:
        listed = httpx.get(process.url + "/admin/services", headers=MASTER, timeout=5).json()["services"]
        state = next((s["state"] for s in listed if s["name"] == "n8n"), "missing")
        assert state not in ("failed", "absent"), listed
        return state == "running"

    try:
        assert wait_until(running, timeout=300, interval=1.0), (tmp_path / "data" / "logs" / "n8n.log").read_text()
        yield process
    finally:
        stop_ark(process)


@pytest.mark.timeout(600)
def test_an_ark_event_runs_an_n8n_workflow_that_asks_the_gateway_with_n8ns_key(
    ark: ArkProcess, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    made = httpx.post(ark.url + "/key/generate", headers=MASTER, json={"key_alias": "trigger"}, timeout=10)
    assert made.status_code == 200
    rows: list[dict[str, object]] = []

    def asked() -> bool:
        nonlocal rows
        rows = httpx.get(ark.url + "/spend/logs", headers=MASTER, params={"limit": "100"}, timeout=10).json()
        rows = [r for r in rows if r["key_alias"] == "n8n" and r["call_type"] == "/v1/chat/completions"]
        return bool(rows)

    assert wait_until(asked, timeout=120, interval=1.0), (ark.data_dir / "logs" / "n8n.log").read_text()[-3000:]
    assert rows[0]["status"] == 200 and rows[0]["model"] == "llama3.2:1b"
    delivered = httpx.get(ark.url + "/admin/webhooks", headers=MASTER, timeout=5).json()["webhooks"]["n8n"]
    assert delivered["delivered"] >= 1 and delivered["dead"] == 0

    # the editor, as an operator sees it behind n8n.D: its owner made once, then the workflow ARK imported
    try:
        chromium = request.getfixturevalue("chromium")
    except pytest.skip.Exception:
        return  # no browser here: the flow above is the test; the docs' screenshots are made where one is
    editor(chromium, ark.n8n, tmp_path)  # type: ignore[attr-defined]


def editor(chromium: Any, n8n: str, tmp_path: Path) -> None:
    """Sign in to n8n's editor (its owner made first) and open the imported workflow and its runs."""
    expect = pytest.importorskip("playwright.sync_api").expect
    owner = {"email": "ops@example.com", "firstName": "Ops", "lastName": "ARK", "password": "Owner-password-1"}
    made = httpx.post(n8n + "/rest/owner/setup", json=owner, timeout=30)
    assert made.status_code == 200, made.text
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    try:
        signed = context.request.post(
            n8n + "/rest/login", data={"emailOrLdapLoginId": owner["email"], "password": owner["password"]}
        )
        assert signed.status == 200, signed.text()
        page = context.new_page()
        page.goto(n8n + "/home/workflows")
        page.get_by_text("ARK event", exact=False).first.click()
        expect(page.locator("[data-test-id=canvas-node]").first).to_be_visible(timeout=60000)
        screenshot(page, tmp_path, "automation-n8n-workflow")
        page.goto(n8n + "/home/executions")
        expect(page.get_by_text("Success", exact=True).first).to_be_visible(timeout=30000)
        screenshot(page, tmp_path, "automation-n8n-executions")
    finally:
        context.close()
