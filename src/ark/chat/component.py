"""Chat as a component: Open WebUI and ChromaDB under ARK's supervisor, wired through the gateway.

When Open WebUI is installed (`ark services install open-webui`; ``[chat] open_webui``), `ark up` runs
ChromaDB (``chroma run``, from the same environment) and Open WebUI on loopback, restarts them with
backoff and keeps their logs (DATA/logs). Open WebUI's gateway key is a service key ARK makes for it
(``trust_user_headers``: each request is charged to the person it names), kept in DATA/open-webui.key
(mode 0600); revoking it (`ark keys revoke`) makes a new one at the next start.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from ark.auth.signing import b64, derive
from ark.chat import install, webui
from ark.config import Settings
from ark.runtime import Runtime, ServicesComponent, Status
from ark.store import Store, service_keys
from ark.supervisor import Health, ServiceSpec

log = logging.getLogger("ark.chat")
SERVICE_KEY_ALIAS = "open-webui"
SERVICE_KEY_FILE = f"{SERVICE_KEY_ALIAS}.key"  # as ark.store.service_keys names it


class Chat(ServicesComponent):
    name = "chat"

    async def start(self, rt: Runtime) -> None:
        settings = rt.settings
        mode = settings.chat.open_webui
        if mode == "no":
            return
        place = install.installed(settings)
        if place is None:
            command = f"`ark services install open-webui` (Open WebUI {install.OPEN_WEBUI_VERSION})"
            self.not_installed(mode, ["open-webui", "chromadb"], command)
            return
        if rt.store is None or rt.secret is None:
            self.report = [Status("open-webui", "failed", "needs ARK's database and auth secret")]
            return
        key = await asyncio.to_thread(service_key, rt.store, settings.data_dir)
        await rt.front.reload_keys()  # a key made just now serves at once
        secret = b64(derive(rt.secret, "open-webui session"))
        self.specs = services(settings, place, key, secret)
        self.report = [Status(spec.name, "starting") for spec in self.specs]


def services(settings: Settings, place: install.Installed, key: str, secret: str) -> list[ServiceSpec]:
    """ChromaDB, then Open WebUI (which connects to it), as the supervisor runs them."""
    chroma, web = settings.chat.chroma_listen, settings.chat.open_webui_listen
    data = settings.data_dir / "open-webui"
    data.mkdir(parents=True, exist_ok=True)
    webui.chroma_path(settings).mkdir(parents=True, exist_ok=True)
    chroma_argv = [str(place.chroma), "run", "--path", str(webui.chroma_path(settings))]
    chroma_argv += ["--host", chroma.host, "--port", str(chroma.port)]
    return [
        ServiceSpec(
            "chromadb",
            chroma_argv,
            Health(url=f"http://{webui.local(chroma)}/api/v2/heartbeat", timeout_s=120),
            env=webui.chroma_env(),
            cwd=webui.chroma_path(settings),
            inherit_env=False,
        ),
        ServiceSpec(
            "open-webui",
            [str(place.open_webui), "serve", "--host", web.host, "--port", str(web.port)],
            # the first start migrates its database: tens of seconds on two cores (docs/chat.md)
            Health(url=f"http://{webui.local(web)}/health", timeout_s=300),
            env=webui.open_webui_env(settings, key, secret),
            cwd=data,
            grace_s=15,
            inherit_env=False,  # ark.toml is its only source: no ARK_* secret, no stray setting of ARK's shell
        ),
    ]


def service_key(store: Store, data_dir: Path) -> str:
    """Open WebUI's gateway key (DATA/open-webui.key), trusted to name the person each request is for."""
    return service_keys.service_key(store, data_dir, SERVICE_KEY_ALIAS, trust_user_headers=True)
