"""`ark gpu simulate`: replay a workload file on a virtual GPU with the real scheduler (part of :mod:`ark.cli.gpu`)."""

from __future__ import annotations

import time
from pathlib import Path

import click
import orjson
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.text import Text

from ark.arbiter.simulate import POLICIES, Result, Span, simulate
from ark.arbiter.virtual_loop import SimulationStuck
from ark.arbiter.workload import Box, Knobs, Workload, WorkloadError, box_from_settings, read_workload
from ark.cli.common import Table, config_options, make_console, settings_or_exit

console = make_console()
CHART_WIDTH = 60


class WorkloadProblem(click.ClickException):
    exit_code = 2

    def format_message(self) -> str:
        return f"bad workload: {self.message}"


@click.command("simulate")
@click.argument("workload", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@config_options
@click.option(
    "--policy",
    type=click.Choice(sorted(POLICIES)),
    default="ark",
    show_default=True,
    help="ark: ARK's arbiter; fifo: a reference modelled on Ollama's scheduler (server/sched.go).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def gpu_simulate(workload: Path, config_path: Path | None, data_dir: Path | None, policy: str, as_json: bool) -> None:
    """Replay WORKLOAD on a virtual GPU with the real scheduler (no GPU, no engine, no waiting).

    WORKLOAD is JSON lines: {"t": s, "model": name, "prompt_tokens": n, "max_tokens": n} per request,
    {"t": s, "kind": "hold", "holder": name, "memory_gb": x, "seconds": d} per memory hold, and an
    optional first line {"catalog": {"gpu_memory_gb": 32, "models": {...}}} that describes the machine
    (else the config's [gpu] memory_gb and [models."ID"] memory_gb). Format: docs/arbiter.md.
    """
    loaded = _load(workload, config_path, data_dir)
    started = time.perf_counter()
    try:
        result = simulate(loaded, loaded.box, policy)
    except SimulationStuck as exc:  # a scheduler that never answers: a bug, reported without a traceback
        raise click.ClickException(f"the simulation stopped: {exc}") from None
    if as_json:
        click.echo(orjson.dumps(result.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        console.print(render(result, time.perf_counter() - started))


def _load(path: Path, config_path: Path | None, data_dir: Path | None) -> Workload:
    """The workload and its machine: its catalog line, else the config (read only when needed)."""
    settings = settings_or_exit(config_path, data_dir) if config_path is not None else None

    def from_config() -> Box:
        return box_from_settings(settings or settings_or_exit(None, data_dir))

    try:
        return read_workload(path, Knobs.from_settings(settings), from_config)
    except WorkloadError as exc:
        raise WorkloadProblem(f"{path}: {exc}") from None


def render(result: Result, seconds: float) -> RenderableType:
    """The summary: headline numbers, per model, and who held the GPU when."""
    head = Text.from_markup(
        f"[bold]{result.policy}[/] policy on a virtual GPU ({result.capacity_gb:.1f} GB to plan with): "
        f"{result.requests} request(s), {result.holds} memory hold(s), {result.makespan_s:.0f} s simulated "
        f"in {seconds:.2f} s"
    )
    return Group(head, _summary(result), _per_model(result), _chart(result))


def _summary(r: Result) -> Table:
    table = Table("metric", "value", title="summary", title_justify="left")
    within = "[green]within it[/]" if r.wait_max_s <= r.wait_bound_s else "[red]over it[/]"
    rows = [
        ("completed / rejected", f"{r.completed} / {r.rejected}"),
        ("swaps (loads, unloads)", f"{r.swaps} ({r.loads}, {r.unloads})"),
        ("time spent loading", f"{r.load_seconds_total:.1f} s"),
        ("wait p50 / p95 / max", f"{r.wait_p50_s:.1f} / {r.wait_p95_s:.1f} / {r.wait_max_s:.1f} s"),
        ("max_wait + one swap", f"{r.wait_bound_s:.1f} s: the longest wait is {within}"),
        ("latency p50 / p95", f"{r.latency_p50_s:.1f} / {r.latency_p95_s:.1f} s"),
    ]
    if r.holds:
        waits = f"{r.hold_wait_p95_s:.1f} / {r.hold_wait_max_s:.1f} s"
        rows.append(("memory holds: rejected, wait p95 / max", f"{r.holds_rejected}, {waits}"))
    rows.append(("makespan", f"{r.makespan_s:.1f} s"))
    for name, value in rows:
        table.add_row(name, value)
    if r.errors:  # the scheduler logged failed steps: a bug in it, worth more than any number above
        table.add_row("[red]scheduler errors[/]", f"[red]{r.errors}[/], the first {escape(r.first_error)}")
    return table


def _per_model(r: Result) -> Table:
    table = Table("model", "requests", "rejected", "loads", "wait p95", "wait max", title="per model")
    table.title_justify = "left"
    for name, m in r.models.items():
        waits = (f"{m.wait_p95_s:.1f} s", f"{m.wait_max_s:.1f} s")
        table.add_row(name, str(m.requests), str(m.rejected), str(m.loads), *waits)
    return table


def _chart(r: Result) -> Text:
    """One row per model or memory holder: █ where it held GPU memory, over the run's length."""
    start = min((s.start for s in r.spans), default=0.0)
    length = max(max((s.end for s in r.spans), default=0.0) - start, 1e-9)
    rows: dict[str, list[Span]] = {}
    for span in r.spans:
        rows.setdefault(span.name if span.kind == "model" else f"hold {span.name}", []).append(span)
    width = max((len(name) for name in rows), default=5)
    text = Text("who held the GPU\n", style="bold")
    for name, spans in rows.items():
        cells = [" "] * CHART_WIDTH
        for s in spans:
            first = int((s.start - start) / length * CHART_WIDTH)
            last = max(first, min(CHART_WIDTH - 1, int((s.end - start) / length * CHART_WIDTH - 1e-9)))
            for i in range(first, last + 1):
                cells[min(i, CHART_WIDTH - 1)] = "█"
        style = "magenta" if name.startswith("hold ") else "cyan"
        text.append(f"{name:<{width}} ").append("".join(cells), style=style)
        text.append("\n")
    text.append(f"{'':<{width}} 0 s{'':<{CHART_WIDTH - 3 - len(f'{length:.0f} s')}}{length:.0f} s", style="dim")
    return text
