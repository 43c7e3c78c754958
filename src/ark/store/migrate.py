"""Open the database and bring its schema to this ARK's version (Alembic), or refuse a newer one."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from ark.errors import ArkError

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger("ark.store")
MIGRATIONS = Path(__file__).with_name("migrations")
# The newest revision in migrations/versions (a test checks it against Alembic's head). A database
# already there is opened without importing Alembic, which keeps `ark up` quick to start.
HEAD = "0006"


class StoreError(ArkError):
    """The database cannot be opened or is not one this ARK can use."""


def database_url(url: str, data_dir: Path) -> str:
    """The SQLAlchemy URL for ``[store] url`` (empty: SQLite at DATA/ark.db; postgresql:// uses psycopg 3)."""
    if not url:
        return f"sqlite:///{data_dir / 'ark.db'}"
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def open_engine(url: str) -> Engine:
    # a file needs no liveness check; a server connection may have been closed by the server meanwhile
    engine = create_engine(url, pool_pre_ping=not url.startswith("sqlite"), future=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: object, _: object) -> None:
    # WAL: readers never block the writer. synchronous=NORMAL: a committed transaction survives
    # the process being killed (it is in the OS's page cache), not a power cut; FULL costs an
    # fsync per commit. busy_timeout: wait for the lock instead of failing at once.
    # auto_vacuum=INCREMENTAL (effective when the file is created): pruned ledger rows give their
    # pages back to the file system with `PRAGMA incremental_vacuum`, no VACUUM of the whole file.
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    for pragma in (
        "auto_vacuum=INCREMENTAL",
        "journal_mode=WAL",
        "synchronous=NORMAL",
        "busy_timeout=5000",
        "foreign_keys=ON",
    ):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head() -> str:
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(_config()).get_heads()
    return str(heads[0])


def current(engine: Engine) -> str | None:
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


@dataclass(frozen=True)
class Plan:
    """What opening the database would do to its schema."""

    current: str | None  # None: a new database
    head: str
    steps: list[tuple[str, str]]  # (revision, what it does), oldest first; empty: nothing to do
    newer: bool = False  # written by a newer ARK: refused


def plan(engine: Engine) -> Plan:
    """The migrations between the database's schema and this ARK's (`ark upgrade --check`)."""
    from alembic.script import ScriptDirectory

    revision = current(engine)
    script = ScriptDirectory.from_config(_config())
    newest = str(script.get_current_head())
    if revision == newest:
        return Plan(revision, newest, [])
    if revision is not None:
        try:
            script.get_revision(revision)
        except Exception:
            return Plan(revision, newest, [], newer=True)
    steps = [
        (str(rev.revision), (rev.doc or "").strip().splitlines()[0] if rev.doc else "")
        for rev in script.iterate_revisions(newest, revision or "base")
    ]
    return Plan(revision, newest, list(reversed(steps)))


def migrate(engine: Engine, copies: Path | None = None) -> str:
    """Upgrade to the newest schema this ARK knows; refuse a database written by a newer ARK.

    An existing database is copied into ``copies`` first (SQLite's backup API, or pg_dump), and the upgrade
    runs in one transaction: a migration that fails leaves the database exactly as it was, at its old
    schema, and the error says where the copy is.
    """
    revision = current(engine)
    if revision == HEAD:
        return HEAD
    from alembic import command

    config = _config()
    steps = plan(engine)
    if steps.newer:
        raise StoreError(
            f"the database {safe_url(engine)} is at schema revision {revision}, which this ARK does not know "
            f"(it knows up to {steps.head}): it was written by a newer ARK. Upgrade ARK, or point [store] url "
            "at another database."
        )
    copy = _copy_before(engine, revision, steps.head, copies) if revision is not None and copies else None
    try:
        with _transactional(engine) as migrating, migrating.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            if engine.dialect.name == "sqlite":  # what the checks off during the upgrade would have caught
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise StoreError(f"the new schema breaks {len(broken)} foreign keys (first: {broken[0]})")
    except Exception as exc:
        kept = f"; a copy from before is {copy}" if copy else ""
        raise StoreError(
            f"upgrading the database {safe_url(engine)} from schema {revision or '(new)'} to {steps.head} failed "
            f"({type(exc).__name__}: {exc}). It was rolled back: the database is unchanged, at schema "
            f"{revision or '(empty)'}, and the ARK that wrote it still runs on it{kept}."
        ) from exc
    if revision is not None:  # said in ARK's words (alembic's own lines are below `ark up`'s log level)
        log.info("database %s: schema upgraded from %s to %s", safe_url(engine), revision, steps.head)
    return steps.head


@contextmanager
def _transactional(engine: Engine) -> Iterator[Engine]:
    """An engine on the same database whose transactions cover DDL: pysqlite issues BEGIN only before data
    changes, so a failed CREATE or ALTER would stay; this one begins every transaction itself (IMMEDIATE:
    a second ARK upgrading at once waits for the first). PostgreSQL's DDL is transactional already."""
    if engine.dialect.name != "sqlite":
        yield engine
        return
    migrating = create_engine(engine.url, poolclass=NullPool)

    @event.listens_for(migrating, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        _sqlite_pragmas(dbapi_connection, record)
        dbapi_connection.isolation_level = None  # the driver's own implicit transactions off
        # foreign keys off while tables are rebuilt (SQLite's way to alter a table drops the old one, and a
        # drop would run ON DELETE CASCADE on its children); checked whole before the commit instead
        dbapi_connection.execute("PRAGMA foreign_keys=OFF")

    @event.listens_for(migrating, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    try:
        yield migrating
    finally:
        migrating.dispose()


def _copy_before(engine: Engine, revision: str, newest: str, folder: Path) -> Path:
    """A copy of the database before its schema changes: ``pre-upgrade-FROM-to-TO-STAMP.db|.pgdump``."""
    from ark.backup import database as dumps  # (imported only when a database is upgraded)

    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    try:
        if engine.dialect.name == "sqlite":
            target = folder / f"pre-upgrade-{revision}-to-{newest}-{stamp}.db"
            dumps.copy_sqlite(Path(engine.url.database or ""), target)
        else:
            target = folder / f"pre-upgrade-{revision}-to-{newest}-{stamp}.pgdump"
            dumps.dump_postgres(engine, target)
        _durable(target)  # on disk before the migration starts: a crash right after still leaves the copy
    except Exception as exc:
        raise StoreError(
            f"the database {safe_url(engine)} needs upgrading from schema {revision} to {newest}, and ARK copies it "
            f"first, which failed ({exc}); nothing was changed. Free space in {folder} or install pg_dump, or make "
            "a backup yourself and upgrade with `ark upgrade --no-copy`."
        ) from exc
    os.chmod(target, 0o600)
    log.info("database %s: copied to %s before upgrading from %s to %s", safe_url(engine), target, revision, newest)
    return target


def _durable(path: Path) -> None:
    """fsync a file, then its folder (the entry that names it)."""
    with path.open("rb") as handle:
        os.fsync(handle.fileno())
    descriptor = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def safe_url(engine: Engine) -> str:
    """The engine's URL without its password, for messages."""
    return engine.url.render_as_string(hide_password=True)
