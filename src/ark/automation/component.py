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
import os
import shlex
from collections.abc import Sequence
from pathlib import Path

import orjson

from ark.auth.signing import b64, derive
from ark.automation import install
from ark.config import Settings
from ark.runtime import Runtime, ServicesComponent, Status
from ark.store import service_keys
from ark.supervisor import Health, ServiceSpec
from ark.supervisor.installs import InstallError

log = logging.getLogger("ark.automation")
SERVICE = "n8n"


class Automation(ServicesComponent):
    name = "automation"

    async def start(self, rt: Runtime) -> None:
        settings = rt.settings
        mode = settings.automation.n8n
        if mode == "no":
            return
        place = install.installed(settings)
        if place is None:
            self.not_installed(mode, [SERVICE], f"`ark services install n8n` (n8n {install.N8N_VERSION})")
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


def n8n_env(settings: Settings, key: str, encryption_key_file: Path) -> dict[str, str]:
    """n8n's whole configuration, from ark.toml. Workflows read the environment (``$env``): the encryption
    key is given as a file, not a variable, so that they cannot; the gateway key they are meant to read."""
    listen, domain = settings.automation.n8n_listen, settings.edge.domain
    data = settings.data_dir / "n8n"
    env = {
        "N8N_USER_FOLDER": str(data),
        "N8N_LISTEN_ADDRESS": listen.host,
        "N8N_PORT": str(listen.port),
        "N8N_PROTOCOL": "http",
        # the credentials it stores: a key stable across restarts and reinstalls (derived from DATA/auth.key)
        "N8N_ENCRYPTION_KEY_FILE": str(encryption_key_file),
        "N8N_ENFORCE_SETTINGS_FILE_PERMISSIONS": "true",
        "N8N_GRACEFUL_SHUTDOWN_TIMEOUT": "10",  # within the supervisor's grace (15 s) before it kills
        # nothing reported or fetched
        "N8N_DIAGNOSTICS_ENABLED": "false",
        "N8N_VERSION_NOTIFICATIONS_ENABLED": "false",
        "N8N_TEMPLATES_ENABLED": "false",
        "N8N_PERSONALIZATION_ENABLED": "false",
        "N8N_HIRING_BANNER_ENABLED": "false",
        "N8N_DYNAMIC_BANNERS_ENABLED": "false",
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
        # Code nodes in n8n's own process: task runners would listen on a second fixed port (5679), which two
        # ARKs on one machine (or a test beside a running ARK) would fight over
        "N8N_RUNNERS_ENABLED": "false",
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
    # absolute: n8n runs in DATA/n8n, and would find nothing at a path relative to ARK's own folder
    return Path(configured).expanduser().resolve() if configured else settings.data_dir / "n8n-workflows"


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
        ident = flow.get("id")
        if not isinstance(ident, str) or not 0 < len(ident) <= 36 or not isinstance(flow.get("connections"), dict):
            # without an id n8n makes a new one at each import: a new copy of the workflow at every start
            raise ValueError(f'{path}: a workflow file needs its "id" (up to 36 characters) and "connections"')
        found.append((path, ident if flow.get("active") is True else None))
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
    key_file = data / "encryption.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(encryption_key)
    return ServiceSpec(
        SERVICE,
        command(node, place.n8n, workflows_dir(settings), flows),
        # ready once its database is migrated (/healthz answers as soon as it listens): a minute on two cores
        Health(url=f"http://{settings.automation.n8n_listen.local()}/healthz/readiness", timeout_s=300),
        env=n8n_env(settings, key, key_file),
        cwd=data,
        grace_s=15,
        inherit_env=False,  # no ARK_* secret of ARK's shell, no stray N8N_* setting
    )
