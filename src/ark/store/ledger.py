"""The usage ledger: one row per request, durable before the response's last byte leaves.

Each row is first appended to this process's journal (``DATA/ledger/*.jsonl``,
one ``write()``, so it survives the process being killed the moment after) and
then copied into the database in batches, off the request path. Rows are keyed
by request id and inserted with "on conflict do nothing", so replaying a journal
twice cannot count a request twice; daily rollups count only rows that were new.

A live process holds an exclusive ``flock`` on its journal. At start, and
every few seconds after, every journal nobody holds (left by a process that
died) is replayed and removed. A journal's name starts with its process's
*holder* name, under which that process holds its allotments of budgets when
several gateways share the database (ark/store/allotments.py): a row's cost moves
from the holder's allotment into ``spend`` in the same transaction that stores the row.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import operator
import os
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, delete, func, or_, select, text
from sqlalchemy.exc import IntegrityError

from ark.store.allotments import drop_holders, settle_allotments
from ark.store.keys import aware
from ark.store.tables import api_keys, usage, usage_daily, users

log = logging.getLogger("ark.ledger")

_ROTATE_BYTES = 8 * 1024 * 1024
_FLUSH_S = 0.25


@dataclass(slots=True)
class UsageRow:
    request_id: str
    time: str  # ISO 8601, UTC
    path: str
    status: int
    latency_ms: float
    ttft_ms: float | None = None
    key_id: str | None = None  # None: the master key
    key_alias: str | None = None
    team_id: str | None = None
    user_id: str | None = None
    model_requested: str | None = None
    model_served: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    person: str | None = None  # the person a UI called for (X-Ark-Identity or a trusted header), by name
    person_id: str | None = None  # that person's user id, when ARK knows them: their budget was charged
    kind: str = "text"  # what was made: text (chat, completions, embeddings) or image
    images: int = 0  # images made (kind image)


_COLUMNS = (
    "request_id",
    "time",
    "key_id",
    "key_alias",
    "team_id",
    "user_id",
    "path",
    "model_requested",
    "model_served",
    "prompt_tokens",
    "completion_tokens",
    "cost",
    "status",
    "latency_ms",
    "ttft_ms",
    "person",
    "person_id",
    "kind",
    "images",
)


def _insert_sql(dialect: str, *, ignore: bool) -> str:
    # Built from the constant column list only; every value is a bound parameter.
    columns = ", ".join(_COLUMNS)
    mark = "?" if dialect == "sqlite" else "%s"
    values = ", ".join(mark for _ in _COLUMNS)
    if dialect == "sqlite":
        verb = "INSERT OR IGNORE" if ignore else "INSERT"
        return f"{verb} INTO usage ({columns}) VALUES ({values})"
    tail = " ON CONFLICT (request_id) DO NOTHING" if ignore else ""
    return f"INSERT INTO usage ({columns}) VALUES ({values}){tail}"  # noqa: S608


_SUMS = ("requests", "prompt_tokens", "completion_tokens", "cost")
assert _COLUMNS[:2] == ("request_id", "time")
_REST = operator.itemgetter(*_COLUMNS[2:])


def _rollup_sql(dialect: str) -> str:
    mark = "?" if dialect == "sqlite" else "%s"
    sums = ", ".join(f"{name} = usage_daily.{name} + excluded.{name}" for name in _SUMS)
    # constant names only; every value is a bound parameter
    return (
        "INSERT INTO usage_daily (day, key_id, model, team_id, requests, prompt_tokens, completion_tokens, cost) "  # noqa: S608
        f"VALUES ({', '.join([mark] * 8)}) ON CONFLICT (day, key_id, model) DO UPDATE SET {sums}"
    )


def _spend_sql(table: str, dialect: str) -> str:
    mark = "?" if dialect == "sqlite" else "%s"
    return f"UPDATE {table} SET spend = spend + {mark}, tokens_used = tokens_used + {mark} WHERE id = {mark}"  # noqa: S608


_SQL = {
    dialect: {
        "insert": _insert_sql(dialect, ignore=False),
        "insert_new": _insert_sql(dialect, ignore=True),
        "rollup": _rollup_sql(dialect),
        "key_spend": _spend_sql("api_keys", dialect),
        "team_spend": _spend_sql("teams", dialect),
        "user_spend": _spend_sql("user_limits", dialect),
    }
    for dialect in ("sqlite", "postgresql")
}


@dataclass(slots=True)
class _Row:
    params: tuple[Any, ...]  # the usage row, as the driver takes it
    day: Any  # its UTC day, as the driver takes it
    source: dict[str, Any]


def _prepare(rows: Iterable[dict[str, Any]], dialect: str) -> list[_Row]:
    """Journal rows as driver parameters. SQLite holds SQLAlchemy's DateTime as "YYYY-MM-DD HH:MM:SS.ffffff"
    text (UTC) and Date as "YYYY-MM-DD": a journal time in UTC with microseconds converts by slicing."""
    out = []
    for row in rows:
        if "kind" not in row:  # a journal written before revision 0005
            row["kind"], row["images"] = "text", 0
            if "person_id" not in row:
                row.setdefault("person", None)  # ... before 0003
                row["person_id"] = None  # ... or 0004
        value = row["time"]
        if dialect == "sqlite" and isinstance(value, str) and len(value) == 32 and value.endswith("+00:00"):
            stamp: Any = f"{value[:10]} {value[11:26]}"
            day: Any = value[:10]
        else:
            when = _parse_time(value).astimezone(UTC)
            stamp, day = when, when.date()
            if dialect == "sqlite":
                stamp, day = when.strftime("%Y-%m-%d %H:%M:%S.%f"), day.isoformat()
        out.append(_Row((row["request_id"], stamp, *_REST(row)), day, row))
    return out


def _rollup(connection: Any, dialect: str, rows: Iterable[_Row]) -> None:
    totals: dict[tuple[Any, str, str], list[Any]] = {}
    for prepared in rows:
        row = prepared.source
        key = (prepared.day, row["key_id"] or "", row["model_served"] or row["model_requested"] or "")
        total = totals.get(key)
        if total is None:
            total = totals[key] = [row["team_id"], 0, 0, 0, 0.0]
        total[1] += 1
        total[2] += row["prompt_tokens"]
        total[3] += row["completion_tokens"]
        total[4] += row["cost"]
    if totals:
        connection.exec_driver_sql(_SQL[dialect]["rollup"], [(*key, *total) for key, total in totals.items()])


Sums = dict[str, tuple[float, int, int]]  # "key:ID" / "team:ID" / "user:ID" -> (credits, tokens, 0 slots)
_ACCOUNTS = (("key", "key_id"), ("team", "team_id"), ("user", "person_id"))  # kind, the row's column


@dataclass(slots=True)
class Ingested:
    rows: int  # rows that were new
    sums: Sums  # what those rows cost and used, per key and team


def ingest(engine: Engine, rows: Sequence[dict[str, Any]], holder: str | None = None) -> Ingested:
    """Write journal rows to the database in one transaction; return what was new.

    The usual case, rows never seen, is one executemany straight to the driver (a few µs a row). A batch
    that holds rows already stored (a journal replayed after a crash) fails on the unique request id and is
    redone row by row, keeping only the new ones, so nothing is ever counted twice. With ``holder``, what
    the new rows cost also leaves that holder's allotments, in the same transaction.
    """
    dialect = "sqlite" if engine.dialect.name == "sqlite" else "postgresql"
    prepared = _prepare(rows, dialect)
    sql = _SQL[dialect]
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(sql["insert"], [r.params for r in prepared])
            sums = _add_spend(connection, dialect, prepared, holder)
            _rollup(connection, dialect, prepared)
        return Ingested(len(prepared), sums)
    except IntegrityError:
        pass
    with engine.begin() as connection:
        new = [r for r in prepared if connection.exec_driver_sql(sql["insert_new"], r.params).rowcount]
        sums = _add_spend(connection, dialect, new, holder)
        _rollup(connection, dialect, new)
    return Ingested(len(new), sums)


def _add_spend(connection: Any, dialect: str, rows: Iterable[_Row], holder: str | None) -> Sums:
    """Add what new rows cost and used to their keys, teams and people (the ledger is the source of the sums)."""
    sums: dict[str, list[float]] = {}
    for prepared in rows:
        row = prepared.source
        for kind, column in _ACCOUNTS:
            ident = row[column]
            if ident:
                total = sums.get(f"{kind}:{ident}")
                if total is None:
                    total = sums[f"{kind}:{ident}"] = [0.0, 0]
                total[0] += row["cost"]
                total[1] += row["prompt_tokens"] + row["completion_tokens"]
    out: Sums = {subject: (cost, int(tokens), 0) for subject, (cost, tokens) in sums.items()}
    for kind, _ in _ACCOUNTS:
        params = [
            (cost, tokens, subject.partition(":")[2])
            for subject, (cost, tokens, _) in out.items()
            if subject.startswith(kind + ":")
        ]
        if params:
            connection.exec_driver_sql(_SQL[dialect][f"{kind}_spend"], params)
    if holder is not None and out:
        settle_allotments(connection, holder, out)
    return out


def _parse_time(value: str | datetime) -> datetime:
    when = aware(value if isinstance(value, datetime) else datetime.fromisoformat(value))
    assert when is not None
    return when


def holder_of(journal: Path) -> str:
    """The process a journal belongs to: "HOLDER.000001.jsonl" (older ARK: "HOLDER.jsonl")."""
    return journal.name.split(".", 1)[0]


def read_journal(path: Path) -> list[dict[str, Any]]:
    """The rows of a journal; a last line cut short by a crash is skipped."""
    rows = []
    for line in path.read_bytes().splitlines():
        try:
            rows.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            log.warning("skipping an incomplete line in %s", path)
    return rows


class Ledger:
    """Journal on the request path; the database is fed from the journal itself, off the request path.

    Nothing waits in memory: ``flush`` reads the journal from where the database stopped, so a database
    that falls behind costs disk (the journal grows), never memory, and never a row.
    """

    def __init__(
        self,
        engine: Engine,
        directory: Path,
        batch_bytes: int = 1 << 20,
        *,
        shared: bool = False,
        on_ingested: Callable[[Sums], None] | None = None,
    ) -> None:
        self.engine = engine
        self.directory = directory
        # this process's name among the gateways of a shared database, and its journals' prefix
        self.holder = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{os.getpid()}-{secrets.token_hex(3)}"
        self._shared = shared  # allotments to settle as rows reach the database
        self._on_ingested = on_ingested or (lambda sums: None)
        self._journals = 0
        self._batch = batch_bytes
        self._fd = self._rfd = -1
        self._path = directory / "unopened"
        self._size = 0  # bytes written to the journal
        self._offset = 0  # bytes of it already in the database
        self._wake = asyncio.Event()

    # -- lifecycle --------------------------------------------------------------------------------
    def open(self) -> int:
        """Replay journals that dead processes left (blocking), then start our own. Returns rows replayed."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        replayed = self.replay_orphans()
        self._start_journal()
        return replayed

    def replay_orphans(self) -> int:
        """Copy the journals of dead processes into the database, settle their allotments, remove them (blocking)."""
        replayed = 0
        done: set[str] = set()
        for orphan in sorted(self.directory.glob("*.jsonl")):
            holder = holder_of(orphan)
            if holder == self.holder:
                continue
            new = self._replay(orphan, holder)
            if new is not None:
                replayed += new
                done.add(holder)
        if self._shared and done:
            live = {holder_of(path) for path in self.directory.glob("*.jsonl")}
            drop_holders(self.engine, done - live)  # their rows are in `spend` now: the allotments have no use
        return replayed

    def _replay(self, path: Path, holder: str) -> int | None:
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return None  # another process replayed it just now
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None  # a live process owns it
        try:
            rows = read_journal(path)
            owner = holder if self._shared else None
            new = sum(ingest(self.engine, rows[i : i + 5000], owner).rows for i in range(0, len(rows), 5000))
            path.unlink()
            if new:
                log.info("ledger: replayed %d of %d rows from %s", new, len(rows), path.name)
            return new
        finally:
            os.close(fd)

    def owns_journal(self, holder: str) -> bool | None:
        """Whether a live process holds ``holder``'s journal here (None: no journal of it on this host)."""
        paths = [p for p in self.directory.glob(f"{holder}*.jsonl") if holder_of(p) == holder]
        if not paths:
            return None
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            finally:
                os.close(fd)
        return False

    def _start_journal(self) -> None:
        self._journals += 1
        self._path = self.directory / f"{self.holder}.{self._journals:06d}.jsonl"
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._fd, self._rfd = fd, os.open(self._path, os.O_RDONLY)
        self._size = self._offset = 0

    async def close(self) -> None:
        await self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            os.close(self._rfd)
            self._fd = self._rfd = -1
            if self._offset == self._size:
                self._path.unlink(missing_ok=True)  # everything is in the database

    # -- the request path -------------------------------------------------------------------------
    def record(self, row: UsageRow) -> None:
        """Append to the journal now (one write: it survives a kill); the database gets it shortly."""
        line = orjson.dumps(row) + b"\n"
        os.write(self._fd, line)
        self._size += len(line)
        if self._size - self._offset > self._batch:
            self._wake.set()

    # -- off the request path ---------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), _FLUSH_S)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                log.exception("ledger: writing to the database failed; the rows stay in the journal")
                await asyncio.sleep(_FLUSH_S * 4)

    async def flush(self) -> None:
        """Copy what the journal holds beyond the database's position, a batch at a time."""
        while self._offset < self._size:
            chunk = os.pread(self._rfd, min(self._size - self._offset, self._batch), self._offset)
            end = chunk.rfind(b"\n") + 1
            if end == 0:
                break
            # parsed off the event loop too: only the bookkeeping below runs on it
            done = await asyncio.to_thread(self._ingest_lines, chunk[:end])
            self._offset += end
            self._on_ingested(done.sums)
        if self._size > _ROTATE_BYTES and self._offset == self._size:
            self._rotate()

    def _ingest_lines(self, lines: bytes) -> Ingested:
        rows = [orjson.loads(line) for line in lines.splitlines()]
        return ingest(self.engine, rows, self.holder if self._shared else None)

    def _rotate(self) -> None:
        """Everything in the journal is in the database: start a fresh one and drop the old."""
        old_fd, old_rfd, old_path = self._fd, self._rfd, self._path
        self._start_journal()
        os.close(old_fd)
        os.close(old_rfd)
        old_path.unlink(missing_ok=True)


def _person_filter(person: str) -> Any:
    """Rows made for ``person``: their user name or e-mail (a user's rows under either), or the name recorded."""
    wanted = person.strip().lower()
    ids = select(users.c.id).where(or_(users.c.name == wanted, func.lower(users.c.email) == wanted))
    return or_(usage.c.person_id.in_(ids), func.lower(usage.c.person) == wanted)


def spend_logs(
    engine: Engine,
    *,
    key_id: str | None,
    start: datetime | None,
    end: datetime | None,
    limit: int,
    person: str | None = None,
) -> list[dict[str, Any]]:
    """Ledger rows, newest first, in LiteLLM's /spend/logs shape (``person``: only those made for them)."""
    if limit < 0:  # SQLite reads a negative LIMIT as none: every row
        raise ValueError(f"limit must be >= 0, not {limit}")
    query = select(usage).order_by(usage.c.time.desc()).limit(limit)
    if key_id is not None:
        query = query.where(usage.c.key_id == key_id)
    if person is not None:
        query = query.where(_person_filter(person))
    if start is not None:
        query = query.where(usage.c.time >= start)
    if end is not None:
        query = query.where(usage.c.time < end)
    with engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    out = []
    for row in rows:
        started = aware(row["time"])
        assert started is not None
        out.append(
            {
                "request_id": row["request_id"],
                "api_key": row["key_id"],
                "key_alias": row["key_alias"],
                "team_id": row["team_id"],
                "user": row["user_id"],
                "end_user": row["person"],
                "call_type": row["path"],
                "model": row["model_served"],
                "model_group": row["model_requested"],
                "spend": row["cost"],
                "prompt_tokens": row["prompt_tokens"],
                "completion_tokens": row["completion_tokens"],
                "total_tokens": row["prompt_tokens"] + row["completion_tokens"],
                "status": row["status"],
                "startTime": started.isoformat(),
                "request_duration_ms": row["latency_ms"],
                "ttft_ms": row["ttft_ms"],
                "kind": row["kind"],
                "images": row["images"],
            }
        )
    return out


def person_usage(engine: Engine, *, start: datetime | None, end: datetime | None) -> list[dict[str, Any]]:
    """Requests, tokens and spend per person (the name recorded; "-" for requests made for nobody)."""
    query = select(
        usage.c.person,
        func.count().label("requests"),
        func.coalesce(func.sum(usage.c.prompt_tokens), 0).label("prompt_tokens"),
        func.coalesce(func.sum(usage.c.completion_tokens), 0).label("completion_tokens"),
        func.coalesce(func.sum(usage.c.cost), 0.0).label("cost"),
    ).group_by(usage.c.person)
    if start is not None:
        query = query.where(usage.c.time >= start)
    if end is not None:
        query = query.where(usage.c.time < end)
    with engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    return sorted(
        (
            {
                "user": row["person"],
                "requests": int(row["requests"]),
                "prompt_tokens": int(row["prompt_tokens"]),
                "completion_tokens": int(row["completion_tokens"]),
                "cost": float(row["cost"]),
            }
            for row in rows
        ),
        key=lambda r: (r["user"] is None, r["user"] or ""),
    )


def person_spend(engine: Engine, person_id: str, since: datetime) -> tuple[int, float]:
    """Requests for a model made for a person since ``since`` and what they cost (their keys, the console,
    chat...; not listings of models)."""
    query = select(func.count(), func.coalesce(func.sum(usage.c.cost), 0.0)).where(
        usage.c.person_id == person_id, usage.c.time >= since, usage.c.model_served.is_not(None)
    )
    with engine.connect() as connection:
        requests, cost = connection.execute(query).one()
    return int(requests), float(cost)


def usage_count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(usage)).scalar_one())


def daily_usage(
    engine: Engine, *, start: datetime | None, end: datetime | None, key_ids: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """The daily rollups (kept forever), with each key's alias; ``key_ids``: only those keys' rows."""
    query = (
        select(usage_daily, api_keys.c.key_alias)
        .select_from(usage_daily.outerjoin(api_keys, api_keys.c.id == usage_daily.c.key_id))
        .order_by(usage_daily.c.day, usage_daily.c.key_id, usage_daily.c.model)
    )
    if key_ids is not None:
        query = query.where(usage_daily.c.key_id.in_(list(key_ids)))
    if start is not None:
        query = query.where(usage_daily.c.day >= start.date())
    if end is not None:
        query = query.where(usage_daily.c.day < end.date())
    with engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    return [
        {
            "day": row["day"].isoformat(),
            "key": row["key_alias"] or (row["key_id"][:12] if row["key_id"] else "master"),
            "key_id": row["key_id"] or None,
            "team_id": row["team_id"],
            "model": row["model"],
            "requests": row["requests"],
            "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": row["completion_tokens"],
            "cost": row["cost"],
        }
        for row in rows
    ]


# /usage/summary?by=: what each grouping reads. The daily rollups are kept forever (day, key, team, model);
# whom a request was made for is only in the ledger's rows, kept for [store] retention_days.
USAGE_GROUPS = ("day", "key", "team", "model", "person")


def usage_summary(engine: Engine, by: str, *, start: datetime | None, end: datetime | None) -> list[dict[str, Any]]:
    """Requests, tokens and spend grouped ``by`` one of :data:`USAGE_GROUPS`, biggest spend first (by day:
    oldest first). Each row: ``{by: value, "requests", "prompt_tokens", "completion_tokens", "cost"}``."""
    if by not in USAGE_GROUPS:
        raise ValueError(f"cannot group usage by {by!r}")
    if by == "person":
        rows = person_usage(engine, start=start, end=end)
        found = [{"person": r.pop("user") or "-", **r} for r in rows]
    else:
        column = {"day": usage_daily.c.day, "key": usage_daily.c.key_id, "team": usage_daily.c.team_id}.get(
            by, usage_daily.c.model
        )
        query = select(
            column.label("group"),
            func.max(api_keys.c.key_alias).label("alias"),
            func.sum(usage_daily.c.requests).label("requests"),
            func.sum(usage_daily.c.prompt_tokens).label("prompt_tokens"),
            func.sum(usage_daily.c.completion_tokens).label("completion_tokens"),
            func.sum(usage_daily.c.cost).label("cost"),
        ).select_from(usage_daily.outerjoin(api_keys, api_keys.c.id == usage_daily.c.key_id))
        query = query.group_by(column)
        if start is not None:
            query = query.where(usage_daily.c.day >= start.date())
        if end is not None:
            query = query.where(usage_daily.c.day < end.date())
        with engine.connect() as connection:
            grouped = connection.execute(query).mappings().all()
        found = []
        for row in grouped:
            group = row["group"]
            if by == "day":
                value = group.isoformat()
            elif by == "key":  # its alias, else the start of its token; "master" for the master key
                value = row["alias"] or (group[:12] if group else "master")
            else:
                value = group or "-"
            found.append(
                {
                    by: value,
                    **({"key_id": group or None} if by == "key" else {}),
                    "requests": int(row["requests"] or 0),
                    "prompt_tokens": int(row["prompt_tokens"] or 0),
                    "completion_tokens": int(row["completion_tokens"] or 0),
                    "cost": float(row["cost"] or 0.0),
                }
            )
    if by == "day":
        return sorted(found, key=lambda r: r["day"])
    return sorted(found, key=lambda r: (-r["cost"], -r["requests"], str(r[by])))


def prune(engine: Engine, retention_days: int, now: datetime | None = None) -> int:
    """Delete ledger rows older than the retention (rollups stay) and give the space back. Returns rows deleted."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=retention_days)
    with engine.begin() as connection:
        deleted = int(connection.execute(delete(usage).where(usage.c.time < cutoff)).rowcount or 0)
    if deleted and engine.dialect.name == "sqlite":
        with engine.connect() as connection:
            connection.execute(text("PRAGMA incremental_vacuum"))
            connection.commit()
    # PostgreSQL: autovacuum makes the space reusable; the table stops growing at the retention.
    return deleted
