"""Schema upgrades: `ark upgrade --check` says what a newer ARK would migrate; an upgrade copies the database
first and runs in one transaction, so a migration that fails leaves it exactly as it was (SQLite, whose
driver would otherwise commit DDL as it goes, and PostgreSQL); a database from a newer ARK is refused.
A newer ARK is played by this one with one migration more (0007), from a copy of its migrations folder."""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from sqlalchemy import inspect, text

from ark.cli.main import main
from ark.store import Store, StoreError
from ark.store.migrate import current, database_url, open_engine
from tests.conftest import Postgres, free_port, settings_for

migrations = importlib.import_module("ark.store.migrate")  # (ark.store.migrate, the name, is the function)
GOOD = '''"""Remember each key's favourite colour.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("colours", sa.Column("id", sa.String(64), primary_key=True))
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("colour", sa.String(16)))
'''
BAD = GOOD.replace(
    '        batch.add_column(sa.Column("colour", sa.String(16)))\n',
    '        batch.add_column(sa.Column("colour", sa.String(16)))\n    op.execute("SELECT * FROM no_such_table")\n',
)


@pytest.fixture
def newer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """This ARK's migrations plus a 0007 the test writes: the next ARK."""
    folder = tmp_path / "migrations"
    shutil.copytree(migrations.MIGRATIONS, folder, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(migrations, "MIGRATIONS", folder)
    monkeypatch.setattr(migrations, "HEAD", "0007")
    yield folder / "versions" / "0007_next.py"


def at_0006(tmp_path: Path, store: str = "") -> tuple[Path, str]:
    """A database made by this ARK (0006), with a key in it; its settings' config."""
    # a port of its own: `ark upgrade` refuses while a gateway answers at the configured address
    config = f'[store]\nurl = "{store}"\n[gateway]\nlisten = "127.0.0.1:{free_port()}"\n'
    settings = settings_for(tmp_path, config)
    opened = Store.open(settings)
    opened.keys.create_key({"key_alias": "old"})
    opened.close()
    return tmp_path / "ark.toml", database_url(store, tmp_path / "data")


def ark(*args: str) -> object:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def columns(url: str, table: str) -> set[str]:
    engine = open_engine(url)
    try:
        with engine.connect() as connection:
            found = inspect(connection)
            return {c["name"] for c in found.get_columns(table)} if found.has_table(table) else set()
    finally:
        engine.dispose()


def revision_of(url: str) -> str | None:
    engine = open_engine(url)
    try:
        return current(engine)
    finally:
        engine.dispose()


def test_check_says_what_the_next_ark_migrates(tmp_path: Path, newer: Path) -> None:
    config, url = at_0006(tmp_path)
    result = ark("upgrade", "--check", "--config", str(config), "--data-dir", str(tmp_path / "data"))
    assert result.exit_code == 0 and "nothing to do" in result.output  # this ARK's own schema
    newer.write_text(GOOD)
    result = ark("upgrade", "--check", "--json", "--config", str(config), "--data-dir", str(tmp_path / "data"))
    said = orjson.loads(result.output)
    assert said["current"] == "0006" and said["head"] == "0007" and not said["newer"]
    assert said["steps"] == [{"revision": "0007", "what": "Remember each key's favourite colour."}]
    assert revision_of(url) == "0006"  # --check changed nothing
    assert not list((tmp_path / "data" / "backups").glob("*"))


def test_an_upgrade_copies_the_database_first(tmp_path: Path, newer: Path) -> None:
    config, url = at_0006(tmp_path)
    newer.write_text(GOOD)
    result = ark("upgrade", "--config", str(config), "--data-dir", str(tmp_path / "data"))
    assert result.exit_code == 0 and "now at schema 0007" in result.output
    assert revision_of(url) == "0007" and "colour" in columns(url, "api_keys")
    (copy,) = (tmp_path / "data" / "backups").glob("pre-upgrade-0006-to-0007-*.db")
    assert revision_of(f"sqlite:///{copy}") == "0006" and oct(copy.stat().st_mode & 0o777) == "0o600"
    engine = open_engine(f"sqlite:///{copy}")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT key_alias FROM api_keys")).scalar() == "old"
    engine.dispose()


def test_a_failed_migration_leaves_the_sqlite_database_as_it_was(tmp_path: Path, newer: Path) -> None:
    config, url = at_0006(tmp_path)
    before = columns(url, "api_keys")
    newer.write_text(BAD)
    with pytest.raises(StoreError) as caught:
        Store.open(settings_for(tmp_path, (tmp_path / "ark.toml").read_text()))
    message = str(caught.value)
    assert "from schema 0006 to 0007 failed" in message and "rolled back" in message
    (copy,) = (tmp_path / "data" / "backups").glob("pre-upgrade-0006-to-0007-*.db")
    assert str(copy) in message
    # nothing of the half-made migration stays: no table, no column, the old revision
    assert revision_of(url) == "0006" and columns(url, "colours") == set() and columns(url, "api_keys") == before
    result = CliRunner().invoke(main, ["upgrade", "--config", str(config), "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 1 and "rolled back" in result.output


def test_a_failed_migration_leaves_the_postgresql_database_as_it_was(
    tmp_path: Path, newer: Path, postgres: Postgres
) -> None:
    _, url = at_0006(tmp_path, postgres.create_database())
    before = columns(url, "api_keys")
    newer.write_text(BAD)
    with pytest.raises(StoreError, match="rolled back"):
        Store.open(settings_for(tmp_path, (tmp_path / "ark.toml").read_text()))
    assert revision_of(url) == "0006" and columns(url, "colours") == set() and columns(url, "api_keys") == before
    assert list((tmp_path / "data" / "backups").glob("pre-upgrade-0006-to-0007-*.pgdump"))


def test_a_database_from_a_newer_ark_is_refused(tmp_path: Path) -> None:
    config, url = at_0006(tmp_path)
    engine = open_engine(url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    result = CliRunner().invoke(
        main, ["upgrade", "--check", "--config", str(config), "--data-dir", str(tmp_path / "data")]
    )
    assert result.exit_code == 1 and "newer than this ARK knows" in result.output
    with pytest.raises(StoreError, match="written by a newer ARK"):
        Store.open(settings_for(tmp_path, config.read_text()))
    assert revision_of(url) == "0099"


REBUILD_USERS = GOOD.replace(
    """    op.create_table("colours", sa.Column("id", sa.String(64), primary_key=True))
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("colour", sa.String(16)))
""",
    """    with op.batch_alter_table("users", recreate="always") as batch:  # SQLite: a new table, the old dropped
        batch.add_column(sa.Column("colour", sa.String(16)))
""",
)


def test_a_migration_that_rebuilds_a_parent_table_keeps_its_children(tmp_path: Path, newer: Path) -> None:
    """Rebuilding `users` drops the old table: with foreign keys on, ON DELETE CASCADE would empty every
    user's sessions and limits on the way."""
    from datetime import timedelta

    from ark.auth.users import UserStore

    config, url = at_0006(tmp_path)
    settings = settings_for(tmp_path, config.read_text())
    opened = Store.open(settings)
    users = UserStore(opened.engine)
    ada = users.add("ada", "ada@example.com", "Ada", "admin", "hash")
    users.open_session(ada.id, "token", timedelta(hours=1), "127.0.0.1", "test")
    opened.keys.set_person_limits(ada.id, {"max_budget": 5.0})
    opened.close()
    newer.write_text(REBUILD_USERS)
    Store.open(settings).close()
    assert revision_of(url) == "0007" and "colour" in columns(url, "users")
    engine = open_engine(url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM user_sessions")).scalar() == 1
        assert connection.execute(text("SELECT max_budget FROM user_limits")).scalar() == 5.0
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1  # on again for everything else
    engine.dispose()


def test_an_upgrade_waits_for_the_running_ark_to_stop(tmp_path: Path, newer: Path) -> None:
    """An older ARK still writing the database would go on against a schema it does not know."""
    import http.server
    import threading

    from ark.config import load_settings

    config, url = at_0006(tmp_path)
    newer.write_text(GOOD)
    listen = load_settings(config_path=config, data_dir=tmp_path / "data", env={}).gateway.listen
    server = http.server.ThreadingHTTPServer((listen.host, listen.port), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        where = ["--config", str(config), "--data-dir", str(tmp_path / "data")]
        result = CliRunner().invoke(main, ["upgrade", *where])
    finally:
        server.shutdown()
        server.server_close()
    assert result.exit_code == 1 and "ARK is running" in result.output and "stop it first" in result.output
    assert revision_of(url) == "0006"  # untouched
    assert ark("upgrade", *where).exit_code == 0 and revision_of(url) == "0007"  # once it stopped
