"""Automation as a component: n8n under ARK's supervisor, on loopback, with a gateway key of its own.

When n8n is installed (`ark services install n8n`; ``[automation] n8n``), `ark up` runs it with its data
under DATA/n8n and an environment written whole by ARK: no telemetry, no version checks, no templates
fetched, the workflows' encryption key derived from DATA/auth.key, and the gateway (``ARK_API_URL``,
``ARK_API_KEY``: a service key ARK makes, kept in DATA/n8n.key, 0600; ``ARK_MODEL``) for workflows to call.
Nginx signs people in at n8n.DOMAIN as for the other sites. The workflows in ``[automation] workflows_dir``
are imported at each start, and switched on when their file says so.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
from collections.abc import Sequence
from pathlib import Path

import orjson

from ark.auth.signing import b64, derive
from ark.automation import install
from ark.config import Settings
from ark.runtime import Component, Runtime, Status
from ark.store import service_keys
from ark.supervisor import Health, ServiceSpec
from ark.supervisor.installs import InstallError

log = logging.getLogger("ark.automation")
SERVICE = "n8n"


class Automation(Component):
    name = "automation"

    def __init__(self) -> None:
        self.report: list[Status] = []
        self.specs: list[ServiceSpec] = []

    async def start(self, rt: Runtime) -> None:
        settings = rt.settings
        mode = settings.automation.n8n
        if mode == "no":
            return
        place = install.installed(settings)
        if place is None:
            why = f"not installed: run `ark services install n8n` (n8n {install.N8N_VERSION})"
            self.report = [Status(SERVICE, "failed" if mode == "yes" else "absent", why)]
            return
        if rt.store is None or rt.secret is None:
            self.report = [Status(SERVICE, "failed", "needs ARK's database and auth secret")]
            return
        try:
            node = install.node()
        except InstallError as exc:
            self.report = [Status(SERVICE, "failed", str(exc))]
            return
        try:
            flows = workflows(workflows_dir(settings))
        except ValueError as exc:
            self.report = [Status(SERVICE, "failed", str(exc))]
            return
        key = await asyncio.to_thread(service_keys.service_key, rt.store, settings.data_dir, SERVICE)
        await rt.front.reload_keys()  # a key made just now serves at once
        secret = b64(derive(rt.secret, "n8n encryption"))
        self.specs = [service(settings, place, node, key, secret, flows)]
        self.report = [Status(SERVICE, "starting")]

    def services(self, rt: Runtime) -> Sequence[ServiceSpec]:
        return self.specs

    def status(self) -> list[Status]:
        return list(self.report)


def n8n_env(settings: Settings, key: str, encryption_key: str) -> dict[str, str]:
    """n8n's whole configuration, from ark.toml."""
    listen, domain = settings.automation.n8n_listen, settings.edge.domain
    data = settings.data_dir / "n8n"
    env = {
        "N8N_USER_FOLDER": str(data),
        "N8N_LISTEN_ADDRESS": listen.host,
        "N8N_PORT": str(listen.port),
        "N8N_PROTOCOL": "http",
        "N8N_ENCRYPTION_KEY": encryption_key,  # the credentials it stores: stable across restarts and reinstalls
        "N8N_ENFORCE_SETTINGS_FILE_PERMISSIONS": "true",
        # nothing reported or fetched
        "N8N_DIAGNOSTICS_ENABLED": "false",
        "N8N_VERSION_NOTIFICATIONS_ENABLED": "false",
        "N8N_TEMPLATES_ENABLED": "false",
        "N8N_PERSONALIZATION_ENABLED": "false",
        "N8N_HIRING_BANNER_ENABLED": "false",
        "EXTERNAL_FRONTEND_HOOKS_URLS": "",
        "N8N_DIAGNOSTICS_CONFIG_FRONTEND": "",
        "N8N_DIAGNOSTICS_CONFIG_BACKEND": "",
        # the gateway, for workflows: {{ $env.ARK_API_URL }}, {{ $env.ARK_API_KEY }}
        "N8N_BLOCK_ENV_ACCESS_IN_NODE": "false",
        "ARK_API_URL": f"http://{settings.gateway.listen.local()}/v1",
        "ARK_API_KEY": key,
        "ARK_MODEL": settings.automation.model,
        "EXECUTIONS_DATA_PRUNE": "true",
        "EXECUTIONS_DATA_MAX_AGE": "336",  # hours: two weeks of runs
        "GENERIC_TIMEZONE": "UTC",
        "N8N_RUNNERS_ENABLED": "true",
    }
    if domain:  # behind Nginx at n8n.DOMAIN, over TLS
        env |= {
            "WEBHOOK_URL": f"https://n8n.{domain}/",
            "N8N_EDITOR_BASE_URL": f"https://n8n.{domain}/",
            "N8N_PROXY_HOPS": "1",
            "N8N_SECURE_COOKIE": "true",
        }
    else:
        env["N8N_SECURE_COOKIE"] = "false"  # plain http on loopback: a secure cookie would never be sent back
    return env


def workflows_dir(settings: Settings) -> Path:
    configured = settings.automation.workflows_dir
    return Path(configured).expanduser() if configured else settings.data_dir / "n8n-workflows"


def workflows(folder: Path) -> list[tuple[Path, str | None]]:
    """The workflow files of ``folder`` and, for each that says "active": true, its id; ValueError naming a
    file that n8n could not import."""
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            flow = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a workflow n8n can import ({exc})") from None
        if not isinstance(flow, dict) or not isinstance(flow.get("nodes"), list):
            raise ValueError(f"{path}: not a workflow n8n can import (an object with nodes, as n8n exports)")
        active = flow.get("active") is True and isinstance(flow.get("id"), str)
        found.append((path, flow["id"] if active else None))
    return found


def command(node: str, n8n: Path, folder: Path, flows: Sequence[tuple[Path, str | None]]) -> list[str]:
    """n8n's start, after importing ``folder``'s workflows (n8n imports them inactive: those whose file says
    active are switched on, before the server starts and registers their webhooks)."""
    run = f"{shlex.quote(node)} {shlex.quote(str(n8n))}"
    steps = []
    if flows:
        steps.append(f"{run} import:workflow --separate --input={shlex.quote(str(folder))}")
        steps += [f"{run} update:workflow --id={shlex.quote(i)} --active=true" for _, i in flows if i is not None]
    steps.append(f"exec {run} start")
    return ["/bin/sh", "-c", " && ".join(steps)]


def service(
    settings: Settings,
    place: install.Installed,
    node: str,
    key: str,
    encryption_key: str,
    flows: Sequence[tuple[Path, str | None]] = (),
) -> ServiceSpec:
    data = settings.data_dir / "n8n"
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    return ServiceSpec(
        SERVICE,
        command(node, place.n8n, workflows_dir(settings), flows),
        # the first start migrates its database: a minute or more on two cores
        Health(url=f"http://{settings.automation.n8n_listen.local()}/healthz", timeout_s=300),
        env=n8n_env(settings, key, encryption_key),
        cwd=data,
        grace_s=15,
        inherit_env=False,  # no ARK_* secret of ARK's shell, no stray N8N_* setting
    )
