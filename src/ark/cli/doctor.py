"""`ark doctor`: is this box as it should be? Every check of the deployment checklist with its status, the
evidence and the fix; exit 1 when one fails (scripts), a table for people, --json for both."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from ark.cli.common import Table, config_options, make_console, print_json
from ark.config import load_settings
from ark.doctor.checks import Doctor, Result, as_json, worst
from ark.errors import ConfigError

console = make_console()
_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skipped": "dim"}


@click.command()
@config_options
@click.option("--json", "as_json_", is_flag=True, help="Print JSON.")
def doctor(config_path: Path | None, data_dir: Path | None, as_json_: bool) -> None:
    """Check the whole box: ARK, its engines and models, the GPU, Docker, Nginx and certificates, what
    listens where and the firewall, monitoring and alerts, WireGuard, backups. Each check says what it saw
    and how to fix it; the exit status is 1 when one fails."""
    try:
        settings = load_settings(config_path=config_path, data_dir=data_dir)
    except ConfigError as exc:  # a broken config is the first thing a doctor reports, not a crash
        results = [Result("config", "fail", str(exc), "fix ark.toml: `ark config check` says the same")]
    else:
        where = str(settings.config_path) if settings.config_path else "no config file: the defaults"
        results = [Result("config", "ok", where), *Doctor(settings).run()]
    if as_json_:
        print_json(as_json(results))
    else:
        table = Table("check", "status", "evidence", "fix")
        for result in results:
            status = f"[{_STYLE[result.status]}]{result.status}[/]"
            table.add_row(escape(result.check), status, escape(result.evidence), escape(result.fix))
        console.print(table)
        counts = {s: sum(r.status == s for r in results) for s in ("ok", "warn", "fail", "skipped")}
        console.print(", ".join(f"{n} {s}" for s, n in counts.items()))
    if worst(results) == "fail":
        raise SystemExit(1)
