"""`ark gpu`: the GPU arbiter of the running gateway (status, load, unload, ComfyUI), the NVML exporter and
`ark gpu simulate` (:mod:`ark.cli.simulate`)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Group, RenderableType
from rich.live import Live
from rich.text import Text

from ark.cli.common import Table, call_gateway, config_options, make_console, print_json
from ark.cli.simulate import gpu_simulate

console = make_console()


@click.group(commands=[gpu_simulate])  # the rest are defined below
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
    """Resident models (memory, leases, queues) and memory holds, from the gateway."""
    if as_json:
        print_json(call_gateway(config_path, data_dir, "GET", "/admin/gpu"))
        return
    if not watch:
        console.print(_gpu_view(call_gateway(config_path, data_dir, "GET", "/admin/gpu")))
        return
    shown = 0
    with Live(console=console, auto_refresh=False) as live:
        try:
            while True:
                live.update(_gpu_view(call_gateway(config_path, data_dir, "GET", "/admin/gpu")), refresh=True)
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
        ("holds", status.get("held_bytes", 0), "yellow"),
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
    holds = status.get("holds", status.get("leases"))  # "leases": a gateway from before the rename
    if holds:
        listing = Table("hold", "holder", "memory", "priority", "state")
        for hold in holds:
            state = f"{hold['expires_in_s']:.0f} s left" if hold["granted"] else "[yellow]waiting[/]"
            memory = f"{hold['memory_bytes'] / 2**30:.2f} GB"
            listing.add_row(hold["id"], hold["holder"], memory, hold["priority"], state)
        parts_out.append(listing)
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
    loaded = _gpu_action(config_path, data_dir, "load", model)["loaded"]
    console.print(f"{model}: {'loaded' if loaded else 'already loaded'}")


@gpu.command("unload")
@config_options
@click.argument("model")
def gpu_unload(config_path: Path | None, data_dir: Path | None, model: str) -> None:
    """Unload MODEL now (refused while it serves requests, or when it is pinned)."""
    unloaded = _gpu_action(config_path, data_dir, "unload", model)["unloaded"]
    console.print(f"{model}: {'unloaded' if unloaded else 'was not loaded'}")


def _gpu_action(config_path: Path | None, data_dir: Path | None, action: str, model: str) -> Any:
    """POST /admin/gpu/load or /unload for MODEL: the arbiter's answer."""
    return call_gateway(
        config_path, data_dir, "POST", f"/admin/gpu/{action}", body={"model": model}, timeout=_GPU_ACTION_S
    )


@gpu.command("free-comfyui")
@config_options
def gpu_free_comfyui(config_path: Path | None, data_dir: Path | None) -> None:
    """Unload ComfyUI's models now (it reloads them at its next job); waits until the memory is back."""
    result = call_gateway(config_path, data_dir, "POST", "/admin/gpu/free-comfyui", body={}, timeout=_GPU_ACTION_S)
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

    from ark.monitor.gpu_exporter import GpuExporter, serve

    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter("expected HOST:PORT, e.g. 127.0.0.1:9835", param_hint="--listen")
    exporter = GpuExporter()  # no NVML: a DeviceError, exit 1

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
