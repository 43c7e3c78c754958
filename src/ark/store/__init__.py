"""ARK's database: keys, teams and the usage ledger (SQLAlchemy 2, Alembic migrations).

SQLite (WAL) in the data directory by default, PostgreSQL when ``[store] url``
says so. :meth:`Store.open` migrates on the way in and refuses a database that
a newer ARK has migrated.
"""

from __future__ import annotations

from sqlalchemy import Engine

from ark.config import Settings
from ark.store.keys import Key, KeyStore, Team, budget_period, key_id, parse_duration
from ark.store.migrate import StoreError, database_url, migrate, open_engine, safe_url


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.keys = KeyStore(engine)

    @classmethod
    def open(cls, settings: Settings, *, copy_before_upgrade: bool = True) -> Store:
        """Connect and migrate (blocking); a database whose schema changes is copied into the backups
        folder first."""
        engine = open_engine(database_url(settings.store.url, settings.data_dir))
        try:
            migrate(engine, settings.backups_dir if copy_before_upgrade else None)
        except StoreError:
            engine.dispose()
            raise
        except Exception as exc:
            engine.dispose()
            safe = safe_url(engine)
            raise StoreError(f"cannot open the database {safe}: {type(exc).__name__}: {exc}") from exc
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()


__all__ = ["Key", "KeyStore", "Store", "StoreError", "Team", "budget_period", "key_id", "parse_duration"]
