"""`ark status` and `ark models list`: ask the running gateway and every engine what they serve."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from rich.console import Console

from ark.cli.common import Table
from ark.config import Settings
from ark.engines import build_engines
from ark.gateway.router import ModelRouter
from ark.wire import ProtocolError, Upstream


async def gateway_status(settings: Settings) -> dict[str, Any]:
    """Whether the gateway of ``settings`` answers: {url, running, ready}."""
    listen = settings.gateway.listen
    host = "127.0.0.1" if listen.host in ("0.0.0.0", "::") else listen.host
    url = f"http://{host}:{listen.port}/health/ready"
    upstream = Upstream(f"http://{host}:{listen.port}", connect_timeout=2)
    try:
        async with asyncio.timeout(3):
            response = await upstream.request("GET", "/health/ready")
            await response.read()
        return {"url": url, "running": True, "ready": response.status == 200}
    except (OSError, TimeoutError, ProtocolError):
        return {"url": url, "running": False, "ready": False}
    finally:
        upstream.close()


async def _services(settings: Settings, running: bool) -> list[dict[str, Any]] | None:
    """What the running `ark up` supervises (GET /admin/services), or None when it cannot be asked."""
    if not running or not settings.master_key:
        return None
    listen = settings.gateway.listen
    host = "127.0.0.1" if listen.host in ("0.0.0.0", "::") else listen.host
    upstream = Upstream(
        f"http://{host}:{listen.port}",
        connect_timeout=2,
        headers={"authorization": f"Bearer {settings.master_key.value}"},
    )
    try:
        async with asyncio.timeout(3):
            response = await upstream.request("GET", "/admin/services")
            body = await response.read()
        if response.status != 200:
            return None
        services: list[dict[str, Any]] = orjson.loads(body)["services"]
        return services
    except (OSError, TimeoutError, ProtocolError, ValueError, KeyError):
        return None
    finally:
        upstream.close()


async def collect_status(settings: Settings) -> dict[str, Any]:
    engines = build_engines(settings)
    router = ModelRouter(engines, settings)
    try:
        for engine in engines:
            await engine.start()
        await router.refresh()
    finally:
        for engine in engines:
            await engine.close()
    gateway = await gateway_status(settings)
    return {
        "gateway": gateway,
        "services": await _services(settings, gateway["running"]),
        "data_dir": str(settings.data_dir),
        "config": str(settings.config_path) if settings.config_path else None,
        "engines": [
            {
                "name": e.name,
                "kind": e.kind,
                "up": router.state[e.name].up,
                "models": router.state[e.name].models,
                "error": router.state[e.name].error,
            }
            for e in engines
        ],
        "models": [{"id": m.id, "engine": m.engine, "details": _details(m.details)} for m in router.models],
        "aliases": dict(settings.aliases),
    }


def _details(details: dict[str, Any]) -> str:
    parts = [str(details[k]) for k in ("parameter_size", "quantization_level", "format") if details.get(k)]
    if isinstance(details.get("size"), int):
        parts.append(f"{details['size'] / 1e6:.1f} MB")
    return " ".join(parts)


def print_status(report: dict[str, Any], console: Console) -> None:
    gw = report["gateway"]
    state = "[green]ready[/]" if gw["ready"] else ("[yellow]starting[/]" if gw["running"] else "[red]not running[/]")
    console.print(f"gateway {gw['url'].removesuffix('/health/ready')}: {state}")
    console.print(f"data    {report['data_dir']}   config {report['config'] or 'none (defaults)'}")
    engines = Table("engine", "kind", "state", "models", title="Engines")
    for e in report["engines"]:
        engines.add_row(
            e["name"],
            e["kind"],
            "[green]up[/]" if e["up"] else f"[red]down[/] {e['error']}",
            str(e["models"]),
        )
    console.print(engines)
    models = Table("model", "engine", "details", title="Models")
    for m in report["models"]:
        models.add_row(m["id"], m["engine"], m["details"])
    for alias, target in report["aliases"].items():
        models.add_row(alias, "alias", f"-> {target}")
    console.print(models)
    if report.get("services"):
        services = Table("service", "state", "pid", "restarts", "note", title="Services run by ark up")
        for svc in report["services"]:
            state = {"running": "[green]running[/]", "absent": "[dim]absent[/]"}.get(
                svc["state"], f"[red]{svc['state']}[/]"
            )
            services.add_row(
                svc["name"], state, str(svc.get("pid") or ""), str(svc.get("restarts", "")), svc.get("why", "")
            )
        console.print(services)
