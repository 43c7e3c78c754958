"""Open the database and bring its schema to this ARK's version (Alembic), or refuse a newer one."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url

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


def migrate(engine: Engine) -> str:
    """Upgrade to the newest schema this ARK knows; refuse a database written by a newer ARK."""
    revision = current(engine)
    if revision == HEAD:
        return HEAD
    from alembic import command
    from alembic.script import ScriptDirectory

    config = _config()
    script = ScriptDirectory.from_config(config)
    if revision is not None:
        try:
            script.get_revision(revision)
        except Exception:
            raise StoreError(
                f"the database {safe_url(engine)} is at schema revision {revision}, which this ARK does not know "
                f"(it knows up to {head()}): it was written by a newer ARK. Upgrade ARK, or point [store] url "
                "at another database."
            ) from None
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    if revision is not None:  # said in ARK's words (alembic's own lines are below `ark up`'s log level)
        log.info("database %s: schema upgraded from %s to %s", safe_url(engine), revision, head())
    return head()


def safe_url(engine: Engine) -> str:
    """The engine's URL without its password, for messages."""
    return engine.url.render_as_string(hide_password=True)
