"""`ark status`, `ark models list`, `ark models pull`: what runs and what it serves; downloading a model."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click
from rich.markup import escape

from ark.cli.common import Table, config_options, make_console, settings_or_exit

console = make_console()


@click.command()
@config_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def status(config_path: Path | None, data_dir: Path | None, as_json: bool) -> None:
    """What runs: the gateway, each engine and the models it serves."""
    from ark.status import collect_status, print_status

    settings = settings_or_exit(config_path, data_dir)
    report = asyncio.run(collect_status(settings))
    if as_json:
        import orjson

        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print_status(report, console)


@click.group()
def models() -> None:
    """List and download models."""


@models.command("list")
@config_options
def models_list(config_path: Path | None, data_dir: Path | None) -> None:
    """Every model each engine serves, and the aliases."""
    from ark.status import collect_status

    settings = settings_or_exit(config_path, data_dir)
    report = asyncio.run(collect_status(settings))
    table = Table("model", "engine", "details")
    for model in report["models"]:
        table.add_row(model["id"], model["engine"], model.get("details", ""))
    for alias, target in settings.aliases.items():
        table.add_row(alias, "alias", f"-> {target}")
    console.print(table)


@models.command("pull")
@config_options
@click.argument("url")
@click.option("--sha256", help="Expected SHA-256 of the file; the download is refused when it differs.")
@click.option("--name", help="File name in the models directory (default: the URL's last segment).")
def models_pull(
    config_path: Path | None, data_dir: Path | None, url: str, sha256: str | None, name: str | None
) -> None:
    """Download a GGUF into DATA/models/ (resumable, with a progress bar)."""
    from ark.engines.pull import pull_with_progress

    settings = settings_or_exit(config_path, data_dir)
    embedded = next((e for e in settings.engines if e.kind == "embedded"), None)
    target = embedded.models_dir if embedded else settings.models_dir
    result = pull_with_progress(url, target, sha256=sha256, name=name, console=console)
    console.print(f"[green]OK[/] {escape(str(result.path))} ({result.size} bytes, sha256 {result.sha256})")
    console.print(f"Served as model [bold]{result.path.stem}[/] by the embedded engine.")
