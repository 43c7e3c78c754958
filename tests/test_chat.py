"""The chat component's parts that need no Open WebUI: its install plan, the environment ARK writes for it,
its service key, and what `ark up` says when it is not installed (tests/test_chat_openwebui.py runs it)."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx
import pytest

from ark.chat import install, webui
from ark.chat.component import SERVICE_KEY_FILE, service_key
from ark.config import load_settings
from ark.store import Store, key_id
from tests.conftest import MASTER_KEY, start_ark, stop_ark


def test_the_install_leaves_out_what_pulls_pytorch_and_every_extra() -> None:
    requires = [
        "fastapi==0.118.0",
        "sentence-transformers==5.5.1",
        "sentence_transformers==5.5.1",
        "accelerate==1.13.0",
        "chromadb==1.5.9",
        "psycopg[binary]==3.2.9",
        'pytest~=8.3; extra == "dev"',
        'uvloop; sys_platform != "win32"',
    ]
    assert install.requirements(requires) == [
        "fastapi==0.118.0",
        "chromadb==1.5.9",
        "psycopg[binary]==3.2.9",
        'uvloop; sys_platform != "win32"',
    ]


def test_not_installed_until_the_marker_is_written(tmp_path: Path) -> None:
    settings = load_settings(env={"ARK_DATA_DIR": str(tmp_path)})
    place = install.location(settings)
    assert place.root == tmp_path / "services" / f"open-webui-{install.OPEN_WEBUI_VERSION}"
    place.open_webui.parent.mkdir(parents=True)
    place.open_webui.write_text("#!/bin/sh\n")
    assert install.installed(settings) is None  # an interrupted install: the marker comes last
    (place.root / ".ark-installed").write_text(install.OPEN_WEBUI_VERSION)
    assert install.installed(settings) == place
    elsewhere = load_settings(env={"ARK_DATA_DIR": str(tmp_path), "ARK_CHAT_SERVICES_DIR": str(tmp_path / "cache")})
    assert install.location(elsewhere).root.parent == tmp_path / "cache"


def test_open_webui_takes_its_whole_configuration_from_ark(tmp_path: Path) -> None:
    settings = load_settings(
        env={
            "ARK_DATA_DIR": str(tmp_path),
            "ARK_GATEWAY_LISTEN": "0.0.0.0:4100",
            "ARK_CHAT_CHROMA_LISTEN": "127.0.0.1:8111",
            "ARK_CHAT_EMBEDDING_MODEL": "nomic-embed-text",
        }
    )
    env = webui.open_webui_env(settings, "sk-ark-service", "session-secret")
    assert env["ENABLE_PERSISTENT_CONFIG"] == "false"  # else values in its database win over ark.toml
    assert env["OPENAI_API_BASE_URLS"] == "http://127.0.0.1:4100/v1" == env["RAG_OPENAI_API_BASE_URL"]
    assert env["OPENAI_API_KEYS"] == "sk-ark-service" == env["RAG_OPENAI_API_KEY"]
    assert env["ENABLE_OLLAMA_API"] == "false" and env["ENABLE_FORWARD_USER_INFO_HEADERS"] == "true"
    assert env["WEBUI_AUTH_TRUSTED_EMAIL_HEADER"] == "X-Trusted-Email"  # what Nginx sets (ark/edge/sites.py)
    assert env["WEBUI_AUTH_TRUSTED_ROLE_HEADER"] == "X-Ark-Role"
    assert (env["VECTOR_DB"], env["CHROMA_HTTP_HOST"], env["CHROMA_HTTP_PORT"]) == ("chroma", "127.0.0.1", "8111")
    assert env["RAG_EMBEDDING_ENGINE"] == "openai" and env["RAG_EMBEDDING_MODEL"] == "nomic-embed-text"
    assert env["WEBUI_SECRET_KEY"] == "session-secret" and env["DATA_DIR"] == str(tmp_path / "open-webui")
    assert env["OFFLINE_MODE"] == "true" and env["ANONYMIZED_TELEMETRY"] == "false"
    assert all(isinstance(value, str) for value in env.values())
    assert env["ENABLE_IMAGE_GENERATION"] == "false"  # no ComfyUI: no image button that can only fail


def test_open_webui_makes_images_through_the_gateway_when_ark_has_a_comfyui(tmp_path: Path) -> None:
    settings = load_settings(env={"ARK_DATA_DIR": str(tmp_path), "ARK_IMAGES_COMFYUI_URL": "http://127.0.0.1:8188"})
    env = webui.open_webui_env(settings, "sk-ark-service", "session-secret")
    assert (env["ENABLE_IMAGE_GENERATION"], env["IMAGE_GENERATION_ENGINE"]) == ("true", "openai")
    assert (
        env["IMAGES_OPENAI_API_BASE_URL"] == "http://127.0.0.1:4000/v1"
        and env["IMAGES_OPENAI_API_KEY"] == "sk-ark-service"
    )
    assert (env["IMAGE_GENERATION_MODEL"], env["IMAGE_SIZE"]) == ("sdxl", "1024x1024")
    assert env["ENABLE_IMAGE_PROMPT_GENERATION"] == "false" and env["ENABLE_IMAGE_EDIT"] == "false"


def test_the_service_key_is_made_once_kept_private_and_replaced_when_revoked(tmp_path: Path) -> None:
    store = Store.open(load_settings(env={"ARK_DATA_DIR": str(tmp_path)}))
    try:
        first = service_key(store, tmp_path)
        kept = tmp_path / SERVICE_KEY_FILE
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600 and kept.read_text().strip() == first
        key = store.keys.get_key(key_id(first))
        assert key is not None and key.trust_user_headers and key.key_alias == "open-webui"
        assert service_key(store, tmp_path) == first
        store.keys.delete_keys([key_id(first)])
        second = service_key(store, tmp_path)
        assert second != first and kept.read_text().strip() == second
        store.keys.update_key(key_id(second), {"trust_user_headers": False})  # no longer a service key
        third = service_key(store, tmp_path)
        assert third not in (first, second) and stat.S_IMODE(kept.stat().st_mode) == 0o600
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".open-webui-key")] == []
    finally:
        store.close()


@pytest.mark.parametrize(("mode", "state"), [("auto", "absent"), ("yes", "failed")])
def test_ark_up_says_open_webui_is_not_installed(tmp_path: Path, mode: str, state: str) -> None:
    config = f'master_key = "{MASTER_KEY}"\n[gateway]\nlisten = "127.0.0.1:{{PORT}}"\n'
    env = {
        "ARK_CHAT_OPEN_WEBUI": mode,
        "ARK_CHAT_SERVICES_DIR": str(tmp_path / "nothing-here"),
        "ARK_ENGINES_EMBEDDED_BUNDLED_MODEL": "false",
    }
    ark = start_ark(config, tmp_path, env=env)
    try:
        parts = httpx.get(ark.url + "/health/ready", timeout=10).json()["components"]
        assert parts["open-webui"]["state"] == state == parts["chromadb"]["state"]
        assert "ark services install open-webui" in parts["open-webui"]["why"]
    finally:
        stop_ark(ark)
