"""ARK's database into a file and back, online and consistent: SQLite's backup API (one read transaction:
the gateway keeps writing meanwhile, WAL lets it), or ``pg_dump`` in the snapshot the counts are read in.

The counts (users, keys, teams, ledger rows...) are read in the same snapshot as what is saved, so a
restore can be checked against them exactly.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.request import pathname2url

from sqlalchemy import Connection, Engine, create_engine, inspect, text
from sqlalchemy.engine import make_url

from ark.backup.crypto import BackupError

# what a restore is checked against: table -> the name in the manifest
COUNTED = {
    "users": "users",
    "api_keys": "keys",
    "teams": "teams",
    "user_limits": "people_limits",
    "usage": "ledger_rows",
    "usage_daily": "daily_rows",
    "webhook_outbox": "events",
}
SQLITE_HEADER = b"SQLite format 3\x00"


def counts(connection: Connection) -> dict[str, int]:
    present = set(inspect(connection).get_table_names())
    return {
        name: int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())  # noqa: S608 - fixed names
        for table, name in COUNTED.items()
        if table in present
    }


def schema_of(connection: Connection) -> str | None:
    if not inspect(connection).has_table("alembic_version"):
        return None
    revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return str(revision) if revision is not None else None


def _read_only(path: Path) -> str:
    """A read-only SQLite URI for ``path`` (escaped: a name may hold ?, # or %)."""
    return f"file:{pathname2url(str(path.absolute()))}?mode=ro"


def copy_sqlite(source: Path, target: Path) -> None:
    """A consistent copy of a live SQLite database (its WAL included), in one step of the backup API."""
    src = sqlite3.connect(_read_only(source), uri=True, timeout=30)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # pages=-1: one read transaction, so a busy writer never restarts it
        finally:
            dst.close()
    finally:
        src.close()


def is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(16) == SQLITE_HEADER
    except OSError:
        return False


def check_sqlite(path: Path) -> None:
    """PRAGMA integrity_check; BackupError naming the file otherwise."""
    try:
        connection = sqlite3.connect(_read_only(path), uri=True)
        try:
            verdict = connection.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            connection.close()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path.name} is not a usable SQLite database: {exc}") from None
    if verdict != "ok":
        raise BackupError(f"{path.name} fails SQLite's integrity check: {verdict}")


def sqlite_facts(path: Path) -> tuple[str | None, dict[str, int]]:
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as connection:
            return schema_of(connection), counts(connection)
    finally:
        engine.dispose()


# -- PostgreSQL --------------------------------------------------------------------------------------
def pg_tool(name: str) -> str:
    """``pg_dump`` or ``pg_restore``: on PATH, else the newest of Debian's /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    versions = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    for folder in sorted(versions, key=lambda p: int(p.parent.name), reverse=True):
        if (folder / name).exists():
            return str(folder / name)
    raise BackupError(f"{name} is not installed: install PostgreSQL's client tools (Debian: postgresql-client)")


def libpq(engine: Engine) -> tuple[str, dict[str, str]]:
    """The engine's database as a libpq URL without its password, and the environment that carries the
    password (PGPASSWORD: never on a command line, where `ps` shows it)."""
    url = make_url(engine.url.render_as_string(hide_password=False))
    env = {**os.environ}
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    plain = url.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


@contextmanager
def pg_snapshot(engine: Engine) -> Iterator[tuple[str, dict[str, int], str | None]]:
    """A snapshot held open (its id for pg_dump --snapshot), with the counts and schema read in it."""
    options = {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
    with engine.connect().execution_options(**options) as connection, connection.begin() as transaction:
        snapshot = str(connection.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one())
        facts = counts(connection)
        schema = schema_of(connection)
        try:
            yield snapshot, facts, schema
        finally:
            transaction.rollback()


def dump_postgres(engine: Engine, target: Path) -> tuple[str | None, dict[str, int]]:
    url, env = libpq(engine)
    with pg_snapshot(engine) as (snapshot, facts, schema):
        argv = [pg_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges", f"--snapshot={snapshot}"]
        done = subprocess.run(
            [*argv, f"--file={target}", f"--dbname={url}"], env=env, capture_output=True, text=True, check=False
        )
    if done.returncode != 0:
        raise BackupError(f"pg_dump failed: {done.stderr.strip()[-2000:]}")
    return schema, facts


def restore_postgres(engine: Engine, dump: Path) -> None:
    """Into an empty database (one with ARK's tables is refused: nothing is overwritten)."""
    with engine.connect() as connection:
        tables = inspect(connection).get_table_names()
    if tables:
        raise BackupError(
            f"the database {engine.url.render_as_string(hide_password=True)} is not empty ({len(tables)} tables): "
            "restore into an empty one (createdb a new database and point [store] url at it)"
        )
    url, env = libpq(engine)
    argv = [pg_tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction"]
    done = subprocess.run([*argv, f"--dbname={url}", str(dump)], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BackupError(f"pg_restore failed (the database is left as it was): {done.stderr.strip()[-2000:]}")
