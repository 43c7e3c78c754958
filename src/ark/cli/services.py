"""`ark services`: install the third-party services `ark up` runs (Open WebUI with ChromaDB, n8n)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ark.automation import install as n8n
from ark.chat import install
from ark.cli.common import config_options, make_console, settings_or_exit
from ark.config import Settings
from ark.supervisor.installs import Progress as Report

_SERVICES = ("open-webui", "n8n")
T = TypeVar("T")


@click.group()
def services() -> None:
    """Third-party services that `ark up` runs: install them, see where they are."""


@services.command("install")
@config_options
@click.argument("name", type=click.Choice(_SERVICES))
def services_install(config_path: Path | None, data_dir: Path | None, name: str) -> None:
    """Install a service in a folder of its own ([chat] services_dir, DATA/services by default).

    open-webui: Open WebUI (pinned) with ChromaDB, without PyTorch (ARK embeds through the gateway): about
    1.9 GB and a few minutes the first time (docs/chat.md). n8n: n8n (pinned) from the npm registry, with
    this machine's Node.js 20.19 or newer (docs/automation.md). Running it again finishes an interrupted
    install and otherwise changes nothing. The next `ark up` starts it.
    """
    settings = settings_or_exit(config_path, data_dir)
    console = make_console()
    if name == "n8n":
        root, version = n8n.location(settings).root, n8n.N8N_VERSION
        console.print(f"n8n {version} into {root}", soft_wrap=True)
        place = _with_progress(console, lambda report: n8n.install(settings, report))
        console.print(f"Installed: {place.n8n}", soft_wrap=True)
        console.print("`ark up` now runs n8n ([automation] in ark.toml; docs/automation.md).", markup=False)
        return
    console.print(f"Open WebUI {install.OPEN_WEBUI_VERSION} into {install.location(settings).root}", soft_wrap=True)
    webui = _with_progress(console, lambda report: install.install(settings, report))
    console.print(f"Installed: {webui.open_webui}", soft_wrap=True)
    console.print("`ark up` now runs Open WebUI and ChromaDB ([chat] in ark.toml; docs/chat.md).", markup=False)


def _with_progress(console: Console, work: Callable[[Report], T]) -> T:
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}"))
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task("starting", total=None)

        def report(what: str, done: int, total: int | None) -> None:
            bar.update(task, description=what, completed=done, total=total)

        return work(report)


@services.command("list")
@config_options
def services_list(config_path: Path | None, data_dir: Path | None) -> None:
    """Which services are installed, and where."""
    settings = settings_or_exit(config_path, data_dir)
    console = make_console()
    for line in _listed(settings):
        console.print(line, soft_wrap=True, markup=False)


def _listed(settings: Settings) -> list[str]:
    webui, automation = install.installed(settings), n8n.installed(settings)
    return [
        f"open-webui: not installed (`ark services install open-webui`, {install.OPEN_WEBUI_VERSION})"
        if webui is None
        else f"open-webui {webui.version}: {webui.root}",
        f"n8n: not installed (`ark services install n8n`, {n8n.N8N_VERSION})"
        if automation is None
        else f"n8n {automation.version}: {automation.root}",
    ]
