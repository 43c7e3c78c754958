"""`ark render` and `ark audit`, and what the edge's commands share (--out, rendering with a spinner).

`ark certs`, `ark peers` and `ark firewall` (their own modules) render parts of the same bundle.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn

from ark.cli.common import Table, config_options, make_console, print_json, settings_or_exit
from ark.config import Settings
from ark.edge.certs import certbot_live
from ark.edge.files import WriteResult
from ark.edge.render import RENDERERS, default_out, make_context, render_bundle

console = make_console()
out_option = click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="The bundle directory (default: DATA/deploy).",
)


def bundle_dir(settings: Settings, out: Path | None) -> Path:
    return (out or default_out(settings)).absolute()


def render_with_progress(
    settings: Settings, out: Path, tls: str | None = None, only: list[str] | None = None
) -> WriteResult:
    """Run the renderers with a spinner per step (certificates and hashes take a moment)."""
    ctx = make_context(settings, out, tls)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=console, transient=True) as progress:
        task = progress.add_task("rendering", total=None)
        return render_bundle(ctx, only, lambda name: progress.update(task, description=f"rendering {name}"))


def print_result(result: WriteResult, out: Path) -> None:
    counts = f"{len(result.changed)} changed, {len(result.unchanged)} unchanged"
    if result.removed:
        counts += f", {len(result.removed)} removed"
    if result.stale:
        counts += f", {len(result.stale)} kept as .ark-stale"
    console.print(f"[green]OK[/] {escape(str(out))}: {counts}")
    for path in result.changed:
        console.print(f"  [bold]wrote[/] {escape(path)}")
    print_pruned(result)
    for note in result.notes:
        console.print(f"  [yellow]note[/] {escape(note)}")


def print_pruned(result: WriteResult) -> None:
    """What the render took away: files it no longer produces, and edited ones it set aside."""
    for path in result.removed:
        console.print(f"  [bold]removed[/] {escape(path)} (no longer rendered)")
    for path, kept in result.stale:
        console.print(
            f"  [yellow]kept[/] {escape(path)} as {escape(kept)}: no longer rendered, but edited since ARK wrote it"
        )


@click.command()
@config_options
@out_option
@click.option(
    "--tls",
    type=click.Choice(["letsencrypt", "self-signed"]),
    help="Certificates: certbot's paths, or a local CA made inside the bundle (default: [edge] tls).",
)
@click.option(
    "--only",
    multiple=True,
    type=click.Choice([name for name, _ in RENDERERS]),
    help="Render only this part (repeatable).",
)
def render(
    config_path: Path | None, data_dir: Path | None, out: Path | None, tls: str | None, only: tuple[str, ...]
) -> None:
    """Write the bundle from the config: nginx/, certs/, wireguard/, firewall/, monitoring, systemd/, compose/.

    Files whose content would not change are left untouched. Files an earlier render wrote
    and this one no longer produces are removed (OUT/.ark-manifest.json lists what ARK
    wrote; with --only, within those parts); one edited since is kept as FILE.ark-stale.
    Check the result with `nginx -t -c OUT/nginx/nginx.conf` and
    `nft -c -f OUT/firewall/ruleset.nft`.
    """
    settings = settings_or_exit(config_path, data_dir)
    target = bundle_dir(settings, out)
    print_result(render_with_progress(settings, target, tls, list(only) or None), target)


@click.command()
@config_options
@out_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def audit(config_path: Path | None, data_dir: Path | None, out: Path | None, as_json: bool) -> None:
    """Check what this machine exposes against the port map; exit 1 when something is wrong.

    Listening sockets (public where they should be loopback, ports nobody declared), the
    firewall, services answering without credentials, certificates expiring soon.
    """
    from ark.edge.audit import Auditor

    settings = settings_or_exit(config_path, data_dir)
    report = Auditor(settings, bundle_dir(settings, out), letsencrypt=certbot_live(settings.data_dir)).run()
    if as_json:
        print_json(report.as_dict())
    else:
        table = Table("severity", "check", "where", "what")
        for p in report.problems:
            colour = "red" if p.severity == "error" else "yellow"
            table.add_row(f"[{colour}]{p.severity}[/]", p.check, escape(p.subject), escape(p.detail))
        if report.problems:
            console.print(table)
        verdict = "[green]OK[/]" if report.ok else "[red]PROBLEMS[/]"
        console.print(
            f"{verdict} {len(report.sockets)} listening sockets, {len(report.certificates)} certificates checked"
        )
    if not report.ok:
        sys.exit(1)
