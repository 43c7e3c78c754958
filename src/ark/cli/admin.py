"""`ark keys`, `ark teams`, `ark usage`: thin wrappers over the running gateway's management API."""

from __future__ import annotations

import asyncio
import functools
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson
from rich.console import Group, RenderableType
from rich.live import Live
from rich.text import Text

from ark.admin_client import AdminError, call
from ark.cli_common import Table, config_options, make_console, settings_or_exit

F = TypeVar("F", bound=Callable[..., Any])
console = make_console()


def _api(config_path: Path | None, data_dir: Path | None, method: str, path: str, **kwargs: Any) -> Any:
    try:
        return call(settings_or_exit(config_path, data_dir), method, path, **kwargs)
    except AdminError as exc:
        raise click.ClickException(str(exc)) from None


def _print_json(data: Any) -> None:
    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def limit_options(fn: F) -> F:
    """The fields keys and teams share, as options; only the ones given are sent."""

    @click.option("--models", help="Comma-separated models or aliases it may use (default: all).")
    @click.option("--max-budget", type=float, help="Credits it may spend per budget period.")
    @click.option("--budget-duration", help='Budget period, e.g. "1d", "7d", "30d" (default: never resets).')
    @click.option("--max-tokens-budget", type=int, help="Tokens it may use per budget period (free models too).")
    @click.option("--tpm", "tpm_limit", type=int, help="Tokens per minute.")
    @click.option("--rpm", "rpm_limit", type=int, help="Requests per minute.")
    @click.option("--max-parallel", "max_parallel_requests", type=int, help="Requests at once.")
    @click.option("--metadata", help="A JSON object kept with it.")
    @functools.wraps(fn)
    def wrapper(*args: Any, models: str | None, metadata: str | None, **kwargs: Any) -> Any:
        fields: dict[str, Any] = {}
        if models is not None:
            fields["models"] = [m.strip() for m in models.split(",") if m.strip()]
        if metadata is not None:
            try:
                fields["metadata"] = orjson.loads(metadata)
            except orjson.JSONDecodeError:
                raise click.BadParameter("not JSON", param_hint="--metadata") from None
        for name in (
            "max_budget",
            "budget_duration",
            "max_tokens_budget",
            "tpm_limit",
            "rpm_limit",
            "max_parallel_requests",
        ):
            if kwargs.get(name) is not None:
                fields[name] = kwargs[name]
            kwargs.pop(name, None)
        return fn(*args, fields=fields, **kwargs)

    return wrapper  # type: ignore[return-value]


def _keys_table(keys: list[dict[str, Any]]) -> Table:
    table = Table("alias", "key", "user", "team", "models", "spend", "budget", "tokens", "expires", "state")
    for k in keys:
        budget = "-" if k["max_budget"] is None else f"{k['max_budget']:g}/{k['budget_duration'] or 'ever'}"
        state = "[red]blocked[/]" if k["blocked"] else "[green]active[/]"
        table.add_row(
            k["key_alias"] or "",
            k["key_name"],
            k["user_id"] or "",
            k["team_id"] or "",
            ",".join(k["models"]) or "all",
            f"{k['spend']:g}",
            budget,
            str(k["tokens_used"]),
            (k["expires"] or "never")[:16],
            state,
        )
    return table


@click.group()
def keys() -> None:
    """Virtual keys: who may use which models, with which budgets and limits."""


@keys.command("create")
@config_options
@limit_options
@click.option("--alias", "key_alias", help="A name for the key.")
@click.option("--user", "user_id", help="Its owner (an e-mail address).")
@click.option("--team", "team_id", help="Its team (team-...).")
@click.option("--duration", help='Lifetime, e.g. "30d" (default: no expiry).')
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def keys_create(
    config_path: Path | None, data_dir: Path | None, fields: dict[str, Any], as_json: bool, **options: Any
) -> None:
    """Create a key; it is shown once."""
    body = {**fields, **{k: v for k, v in options.items() if v is not None}}
    created = _api(config_path, data_dir, "POST", "/key/generate", body=body)
    if as_json:
        _print_json(created)
        return
    console.print(f"[bold]{created['key']}[/]")
    console.print("Shown once: store it now. Its token (for info, update, revoke) is " + created["token"])


@keys.command("list")
@config_options
@click.option("--team", "team_id", help="Only this team's keys.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def keys_list(config_path: Path | None, data_dir: Path | None, team_id: str | None, as_json: bool) -> None:
    """Every key, with its spend and limits."""
    query = {"return_full_object": "true", **({"team_id": team_id} if team_id else {})}
    listed = _api(config_path, data_dir, "GET", "/key/list", query=query)["keys"]
    if as_json:
        _print_json(listed)
    else:
        console.print(_keys_table(listed))


@keys.command("info")
@config_options
@click.argument("key")
def keys_info(config_path: Path | None, data_dir: Path | None, key: str) -> None:
    """One key (by the key itself or its token), as JSON."""
    _print_json(_api(config_path, data_dir, "GET", "/key/info", query={"key": key})["info"])


@keys.command("update")
@config_options
@limit_options
@click.argument("key")
@click.option("--alias", "key_alias", help="A new name.")
@click.option("--block/--unblock", "blocked", default=None, help="Refuse (or accept again) its requests.")
def keys_update(
    config_path: Path | None, data_dir: Path | None, key: str, fields: dict[str, Any], **options: Any
) -> None:
    """Change a key's limits, name or state."""
    body = {"key": key, **fields, **{k: v for k, v in options.items() if v is not None}}
    updated = _api(config_path, data_dir, "POST", "/key/update", body=body)
    console.print(_keys_table([updated]))


@keys.command("revoke")
@config_options
@click.argument("key", nargs=-1, required=True)
def keys_revoke(config_path: Path | None, data_dir: Path | None, key: tuple[str, ...]) -> None:
    """Delete keys (by key or token): they stop working at once."""
    deleted = _api(config_path, data_dir, "POST", "/key/delete", body={"keys": list(key)})["deleted_keys"]
    console.print(f"revoked {len(deleted)} key(s)")
    if len(deleted) != len(key):
        raise click.ClickException(f"{len(key) - len(deleted)} key(s) did not exist")


@click.group()
def teams() -> None:
    """Teams: shared budgets and limits for a group of keys."""


@teams.command("create")
@config_options
@limit_options
@click.option("--alias", "team_alias", help="A name for the team.")
@click.option("--id", "team_id", help="Choose the team id (default: team-<random>).")
def teams_create(config_path: Path | None, data_dir: Path | None, fields: dict[str, Any], **options: Any) -> None:
    """Create a team."""
    team = _api(
        config_path,
        data_dir,
        "POST",
        "/team/new",
        body={**fields, **{k: v for k, v in options.items() if v is not None}},
    )
    console.print(f"created [bold]{team['team_id']}[/] ({team['team_alias'] or 'no alias'})")


@teams.command("list")
@config_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def teams_list(config_path: Path | None, data_dir: Path | None, as_json: bool) -> None:
    """Every team."""
    listed = _api(config_path, data_dir, "GET", "/team/list")
    if as_json:
        _print_json(listed)
        return
    table = Table("team", "alias", "models", "spend", "budget", "state")
    for t in listed:
        table.add_row(
            t["team_id"],
            t["team_alias"] or "",
            ",".join(t["models"]) or "all",
            f"{t['spend']:g}",
            "-" if t["max_budget"] is None else f"{t['max_budget']:g}",
            "[red]blocked[/]" if t["blocked"] else "[green]active[/]",
        )
    console.print(table)


@teams.command("info")
@config_options
@click.argument("team_id")
def teams_info(config_path: Path | None, data_dir: Path | None, team_id: str) -> None:
    """One team and its keys, as JSON."""
    _print_json(_api(config_path, data_dir, "GET", "/team/info", query={"team_id": team_id}))


@click.command()
@config_options
@click.option("--since", help="First day, YYYY-MM-DD.")
@click.option("--until", help="Last day, YYYY-MM-DD.")
@click.option(
    "--by",
    type=click.Choice(["key", "team", "model", "day"]),
    default="key",
    show_default=True,
    help="How to group the rows.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the daily rows as JSON.")
def usage(
    config_path: Path | None, data_dir: Path | None, since: str | None, until: str | None, by: str, as_json: bool
) -> None:
    """Requests, tokens and spend from the ledger's daily rollups."""
    query = {k: v for k, v in (("start_date", since), ("end_date", until)) if v}
    rows = _api(config_path, data_dir, "GET", "/usage/daily", query=query)
    if as_json:
        _print_json(rows)
        return
    field = {"key": "key", "team": "team_id", "model": "model", "day": "day"}[by]
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0, 0.0])
    for row in rows:
        total = totals[row[field] or "-"]
        total[0] += row["requests"]
        total[1] += row["prompt_tokens"]
        total[2] += row["completion_tokens"]
        total[3] += row["cost"]
    table = Table(by, "requests", "prompt tokens", "completion tokens", "spend")
    for name, (requests, prompt, completion, cost) in sorted(totals.items()):
        table.add_row(name, f"{requests:.0f}", f"{prompt:.0f}", f"{completion:.0f}", f"{cost:.4f}")
    console.print(table)


@click.group()
def gpu() -> None:
    """The GPU arbiter: what is loaded, what waits."""


@gpu.command("status")
@config_options
@click.option("--json", "as_json", is_flag=True, help="Print the arbiter's state as JSON.")
@click.option("--watch", is_flag=True, help="Keep the view up to date (Ctrl-C to leave).")
@click.option("--interval", type=float, default=1.0, show_default=True, help="Seconds between updates with --watch.")
@click.option("--count", type=int, default=0, help="With --watch: stop after this many updates (default: never).")
def gpu_status(
    config_path: Path | None, data_dir: Path | None, as_json: bool, watch: bool, interval: float, count: int
) -> None:
    """Resident models with their memory, leases and queues (from the running gateway)."""
    if as_json:
        _print_json(_api(config_path, data_dir, "GET", "/admin/gpu"))
        return
    if not watch:
        console.print(_gpu_view(_api(config_path, data_dir, "GET", "/admin/gpu")))
        return
    shown = 0
    with Live(console=console, auto_refresh=False) as live:
        try:
            while True:
                live.update(_gpu_view(_api(config_path, data_dir, "GET", "/admin/gpu")), refresh=True)
                shown += 1
                if count and shown >= count:
                    break
                time.sleep(interval)
        except KeyboardInterrupt:
            pass


_GPU_ACTION_S = 600.0  # a load may wait for a swap and a large model to come off disk


def _gpu_view(status: dict[str, Any]) -> RenderableType:
    if not status.get("enabled"):
        return Text("The GPU arbiter is off: no engine it manages answered (see `ark up`'s log).")
    capacity = status["capacity_bytes"]
    comfy = (status.get("comfyui") or {}).get("used_bytes", 0)
    parts = [  # one stacked bar: what the plan holds, by whom
        ("models", status["used_bytes"], "green"),
        ("ComfyUI", comfy, "magenta"),
        ("leases", status.get("held_bytes", 0), "yellow"),
        ("others", status.get("external_bytes", 0), "red"),
    ]
    width, bar, legend = 40, Text(), []
    for name, used, colour in parts:
        cells = round(width * used / capacity) if capacity else 0
        bar.append("█" * min(cells, width - len(bar.plain)), style=colour)
        if used:
            legend.append(f"[{colour}]{name}[/] {used / 2**30:.1f}")
    bar.append("░" * (width - len(bar.plain)), style="dim")
    total = sum(used for _, used, _ in parts)
    head = Text.from_markup(f"{status['device']}: [bold]{total / 2**30:.1f}[/] of {capacity / 2**30:.1f} GB planned ")
    head.append_text(bar)
    head.append_text(Text.from_markup(f"  queue {status['queue']}  " + "  ".join(legend)))
    reading = status.get("reading") or {}
    sensors = [
        f"{reading['temperature_c']:.0f} °C" if reading.get("temperature_c") is not None else "",
        f"{reading['power_w']:.0f} W" if reading.get("power_w") is not None else "",
        f"{reading['utilization']:.0%} busy" if reading.get("utilization") is not None else "",
    ]
    table = Table("model", "resident", "memory", "leases", "queued", "priority", "flags")
    for m in status["models"]:
        flags = ", ".join(
            f for f, on in (("pinned", m["pinned"]), ("large", m["large"]), ("draining", m["draining"])) if on
        )
        table.add_row(
            m["model"],
            "[green]yes[/]" if m["resident"] else "no",
            f"{m['memory_bytes'] / 2**30:.2f} GB ({m['memory_source']})",
            str(m["leases"]),
            str(m["queued"]),
            m["priority"],
            flags,
        )
    parts_out: list[RenderableType] = [head]
    if any(sensors):
        parts_out.append(Text("  ".join(x for x in sensors if x), style="dim"))
    parts_out.append(table)
    if status.get("leases"):
        leases = Table("lease", "holder", "memory", "priority", "state")
        for lease in status["leases"]:
            state = f"{lease['expires_in_s']:.0f} s left" if lease["granted"] else "[yellow]waiting[/]"
            leases.add_row(
                lease["id"], lease["holder"], f"{lease['memory_bytes'] / 2**30:.2f} GB", lease["priority"], state
            )
        parts_out.append(leases)
    stats = status["stats"]
    restarts = sum((status.get("restarts") or {}).values())
    parts_out.append(
        Text(
            f"loads {stats['loads']}, unloads {stats['unloads']}, swaps {stats['swaps']}, "
            f"rejected {stats['rejected']}, {stats['load_seconds']:.1f} s loading"
            + (f", engine restarts {restarts}" if restarts else "")
        )
    )
    return Group(*parts_out)


@gpu.command("load")
@config_options
@click.argument("model")
def gpu_load(config_path: Path | None, data_dir: Path | None, model: str) -> None:
    """Load MODEL now (the arbiter makes room as it would for a request)."""
    result = _api(config_path, data_dir, "POST", "/admin/gpu/load", body={"model": model}, timeout=_GPU_ACTION_S)
    console.print(f"{model}: {'loaded' if result['loaded'] else 'already loaded'}")


@gpu.command("unload")
@config_options
@click.argument("model")
def gpu_unload(config_path: Path | None, data_dir: Path | None, model: str) -> None:
    """Unload MODEL now (refused while it serves requests, or when it is pinned)."""
    result = _api(config_path, data_dir, "POST", "/admin/gpu/unload", body={"model": model}, timeout=_GPU_ACTION_S)
    console.print(f"{model}: {'unloaded' if result['unloaded'] else 'was not loaded'}")


@gpu.command("free-comfyui")
@config_options
def gpu_free_comfyui(config_path: Path | None, data_dir: Path | None) -> None:
    """Unload ComfyUI's models now (it reloads them at its next job); waits until the memory is back."""
    result = _api(config_path, data_dir, "POST", "/admin/gpu/free-comfyui", body={}, timeout=_GPU_ACTION_S)
    console.print(
        f"ComfyUI: {result['freed_bytes'] / 2**30:.2f} GB freed "
        f"({result['before_bytes'] / 2**30:.2f} -> {result['after_bytes'] / 2**30:.2f} GB)"
    )


@gpu.command("exporter")
@click.option(
    "--listen",
    default="127.0.0.1:9835",
    show_default=True,
    help="Address to serve /metrics on (production: 0.0.0.0:9835, firewalled to the Docker bridge).",
)
def gpu_exporter(listen: str) -> None:
    """Serve NVIDIA GPU metrics (NVML) for Prometheus until interrupted."""
    import signal

    from ark.arbiter.devices import DeviceError
    from ark.monitor.gpu_exporter import GpuExporter, serve

    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter("expected HOST:PORT, e.g. 127.0.0.1:9835", param_hint="--listen")
    try:
        exporter = GpuExporter()
    except DeviceError as exc:
        raise click.ClickException(str(exc)) from None

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(exporter, host.strip("[]"), int(port), stop)

    console.print(f"GPU exporter on http://{listen}/metrics: {len(exporter.read())} GPU(s), driver {exporter.driver}")
    try:
        asyncio.run(main())
    finally:
        exporter.close()
