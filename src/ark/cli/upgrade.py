"""`ark upgrade`: what this ARK will change in the database's schema (--check), or change it now.

`ark up` upgrades on its own at start; this says beforehand what it will do, and does it without starting
anything. Either way the database is copied into the backups folder first, and the upgrade is one
transaction: a failure leaves it as it was.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import click
from sqlalchemy.exc import SQLAlchemyError

from ark.cli.common import Table, config_options, make_console, print_json, settings_or_exit
from ark.status import gateway_status
from ark.store import Store
from ark.store.migrate import Plan, database_url, open_engine, plan, safe_url

console = make_console()


@click.command()
@config_options
@click.option("--check", is_flag=True, help="Only say what would change; change nothing.")
@click.option("--no-copy", is_flag=True, help="Do not copy the database first (you made a backup yourself).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with --check).")
def upgrade(config_path: Path | None, data_dir: Path | None, check: bool, no_copy: bool, as_json: bool) -> None:
    """Upgrade the database's schema to this ARK's, or (--check) say what that would do."""
    settings = settings_or_exit(config_path, data_dir)
    if not settings.store.url and not (settings.data_dir / "ark.db").is_file():
        raise click.ClickException(f"there is no database at {settings.data_dir / 'ark.db'}: is --data-dir right?")
    engine = open_engine(database_url(settings.store.url, settings.data_dir))
    try:
        found = plan(engine)
        where = safe_url(engine)
    except SQLAlchemyError as exc:
        raise click.ClickException(f"cannot read the database {safe_url(engine)}: {exc.__class__.__name__}") from None
    finally:
        engine.dispose()
    if check:
        if as_json:
            print_json(
                {
                    "database": where,
                    "current": found.current,
                    "head": found.head,
                    "newer": found.newer,
                    "steps": [{"revision": r, "what": what} for r, what in found.steps],
                    "copy_to": None if no_copy or found.current is None else str(settings.backups_dir),
                }
            )
        else:
            _say(found, where, settings.backups_dir)
        if found.newer:
            raise SystemExit(1)
        return
    if found.newer:
        _say(found, where, settings.backups_dir)
        raise SystemExit(1)
    if not found.steps:
        console.print(f"The database {where} is at schema {found.head}, this ARK's: nothing to do.")
        return
    running = asyncio.run(gateway_status(settings))
    if running["running"]:  # an older ARK writing it meanwhile would go on against a schema it does not know
        raise click.ClickException(
            f"ARK is running ({running['url']} answers): stop it first (systemctl stop ark); the new ARK upgrades "
            "at its start anyway"
        )
    Store.open(settings, copy_before_upgrade=not no_copy).close()
    console.print(f"The database {where} is now at schema {found.head}.")


def _say(found: Plan, where: str, copies: Path) -> None:
    if found.newer:
        console.print(
            f"[red]The database {where} is at schema {found.current}, newer than this ARK knows ({found.head}): "
            "it was written by a newer ARK. Upgrade ARK; this one will not start on it.[/]"
        )
        return
    if not found.steps:
        console.print(f"The database {where} is at schema {found.head}, this ARK's: nothing to do.")
        return
    start = found.current or "(new)"
    console.print(f"The database {where} goes from schema {start} to {found.head}:")
    table = Table("revision", "what it does")
    for revision, what in found.steps:
        table.add_row(revision, what)
    console.print(table)
    if found.current is not None:
        console.print(f"It is copied into {copies} first; the upgrade is one transaction (a failure changes nothing).")
