"""`ark deploy plan | apply`: the deployment checklist as commands that do the work (docs/deploy.md)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from rich.markup import escape
from rich.progress import Progress, TaskID
from rich.syntax import Syntax

from ark.cli.common import config_options, make_console, settings_or_exit
from ark.deploy.box import Box
from ark.deploy.plan import Change, Deploy, StepResult, summary
from ark.engines.pull import transfer_bar

console = make_console()

root_option = click.option(
    "--root",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("/"),
    show_default=True,
    help="Install the system files under this folder instead of / (a throwaway root; ARK's data directory "
    "is the configured one). No command runs on this machine then, unless --system-commands says where from.",
)
commands_option = click.option(
    "--system-commands",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Run systemctl, docker, nginx, wg, nft... from this folder first (put first on PATH for every "
    "command this run starts): stand-ins that record them, for a test into a --root.",
)


def make_box(root: Path, system_commands: Path | None) -> Box:
    """Under a --root other than /, commands run only from --system-commands: never this machine's own,
    which would enable units, load a firewall or restart services for real beside a throwaway root."""
    root = root.resolve()  # a link to / (or /tmp/..) is /: the real box
    if system_commands is not None:
        os.environ["PATH"] = f"{system_commands.absolute()}{os.pathsep}{os.environ.get('PATH', '')}"
    return Box(root=root, run_commands=root == Path("/") or system_commands is not None)


class ConsoleReporter:
    """Each step as a heading, each change as a line (a replaced file with its diff), pulls as bars."""

    def __init__(self, *, applying: bool = False) -> None:
        self.diffs = not applying  # the plan showed them
        self.mark = "[green]✓[/]" if applying else "[green]+[/]"
        self.bar: Progress | None = None
        self.tasks: dict[str, TaskID] = {}

    def step(self, name: str, title: str) -> None:
        self._stop_bar()
        console.print(f"[bold]{escape(name)}[/]: {escape(title)}")

    def changed(self, change: Change) -> None:
        self._stop_bar()
        console.print(f"  {self.mark} {escape(change.what)}")
        if change.diff and self.diffs:
            console.print(Syntax(change.diff, "diff", word_wrap=False, theme="ansi_dark", background_color="default"))

    def note(self, text: str) -> None:
        self._stop_bar()
        console.print(f"  [yellow]note[/] {escape(text)}")

    def progress(self, task: str, done: int, total: int | None) -> None:
        model, _, status = task.partition(": ")
        if total is None:
            self._stop_bar()
            console.print(f"  [dim]{escape(task)}[/]")
            return
        if self.bar is None:
            self.bar = transfer_bar(console)
            self.bar.start()
        if model not in self.tasks:
            self.tasks[model] = self.bar.add_task(model, total=total)
        self.bar.update(self.tasks[model], completed=done, total=total, description=f"{model} {status}")

    def _stop_bar(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar, self.tasks = None, {}


def _tail(results: list[StepResult], applied: bool) -> None:
    count, missing = summary(results)
    for line in missing:
        console.print(f"[red]missing[/] {escape(line)}")
    if count == 0:
        console.print("[green]Nothing to change[/]: the box matches the config.")
    elif applied:
        console.print(f"[green]Done[/]: {count} changes.")
    else:
        console.print(f"{count} changes to make: run `ark deploy apply` as root.")


@click.group()
def deploy() -> None:
    """Install the rendered bundle on this box and bring every part up (as root)."""


@deploy.command("plan")
@config_options
@root_option
@commands_option
def deploy_plan(config_path: Path | None, data_dir: Path | None, root: Path, system_commands: Path | None) -> None:
    """Say what `ark deploy apply` would change, step by step, with a diff of each file it would replace.

    Changes nothing on the box (the WireGuard server key is made once, as `ark render` makes it).
    """
    settings = settings_or_exit(config_path, data_dir)
    results = Deploy(settings, make_box(root, system_commands), ConsoleReporter()).plan()
    _tail(results, applied=False)


@deploy.command("apply")
@config_options
@root_option
@commands_option
@click.option("--dry-run", is_flag=True, help="Only say what would change (as `ark deploy plan`).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before changing the box.")
def deploy_apply(
    config_path: Path | None, data_dir: Path | None, root: Path, system_commands: Path | None, dry_run: bool, yes: bool
) -> None:
    """Render, install and start everything: files (a copy of each replaced one kept), folders, keys, units,
    models, containers, certificates, WireGuard, then the firewall with its rollback guard.

    The plan is shown first. A second apply changes nothing and says so. A step that needs a tool that is
    not installed stops here and names what to install.
    """
    settings = settings_or_exit(config_path, data_dir)
    box = make_box(root, system_commands)
    if box.root == Path("/") and os.geteuid() != 0 and not dry_run:
        raise click.ClickException("run it as root: it installs system files and starts services")
    deploy = Deploy(settings, box, ConsoleReporter())
    planned = deploy.plan()
    count, _ = summary(planned)
    if dry_run or count == 0:
        _tail(planned, applied=False)
        return
    if not yes:
        if not sys.stdin.isatty():
            raise click.ClickException("not a terminal to ask on: pass --yes to apply")
        click.confirm(f"Apply these {count} changes?", abort=True)
    console.print("[bold]Applying[/]")
    deploy.report = ConsoleReporter(applying=True)
    results = deploy.apply()
    _tail(results, applied=True)
