"""`ark services`: install the third-party services `ark up` runs (Open WebUI with ChromaDB)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ark.chat import install
from ark.cli.common import config_options, make_console, settings_or_exit

_SERVICES = ("open-webui",)


@click.group()
def services() -> None:
    """Third-party services that `ark up` runs: install them, see where they are."""


@services.command("install")
@config_options
@click.argument("name", type=click.Choice(_SERVICES))
def services_install(config_path: Path | None, data_dir: Path | None, name: str) -> None:
    """Install a service in a virtual environment of its own ([chat] services_dir, DATA/services by default).

    open-webui: Open WebUI (pinned) with ChromaDB, without PyTorch (ARK embeds through the gateway): about
    1.9 GB and a few minutes the first time (docs/chat.md). Running it again finishes an interrupted install
    and otherwise changes nothing. The next `ark up` starts both.
    """
    settings = settings_or_exit(config_path, data_dir)
    console = make_console()
    place = install.location(settings)
    console.print(f"Open WebUI {install.OPEN_WEBUI_VERSION} into {place.root}", soft_wrap=True)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}"))
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task("starting", total=None)

        def report(what: str, done: int, total: int | None) -> None:
            bar.update(task, description=what, completed=done, total=total)

        install.install(settings, report)
    console.print(f"Installed: {place.open_webui}", soft_wrap=True)
    console.print("`ark up` now runs Open WebUI and ChromaDB ([chat] in ark.toml; docs/chat.md).", markup=False)


@services.command("list")
@config_options
def services_list(config_path: Path | None, data_dir: Path | None) -> None:
    """Which services are installed, and where."""
    settings = settings_or_exit(config_path, data_dir)
    console = make_console()
    place = install.installed(settings)
    if place is None:
        console.print(f"open-webui: not installed (`ark services install open-webui`, {install.OPEN_WEBUI_VERSION})")
    else:
        console.print(f"open-webui {place.version}: {place.root}", soft_wrap=True)
