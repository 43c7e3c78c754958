"""One archive with everything an ARK needs to come back: its database, its config and secrets, and the data
its services keep; a manifest with a SHA-256 of every file; restored only whole and only when every
checksum matches.

``ark-backup-YYYYMMDDTHHMMSSZ.tar.gz`` (0600) holds:

    database/ark.db | database/ark.pgdump   the database (SQLite's backup API, or pg_dump), consistent
    data/...                                the data directory's own files: Open WebUI's and ChromaDB's
                                            data, n8n's, ledger journals, images (not with --without-media)
    secrets.tar | secrets.tar.sealed        the config file, DATA/auth.key, the service keys, WireGuard's
                                            and certbot's keys; sealed with a passphrase when one is given
    manifest.json                           last: what the archive holds, each file's size and SHA-256, the
                                            database's schema and row counts

Not kept: what can be made again or fetched (models/, services/, logs/, monitor/, deploy/, firewall/) and
earlier backups. An SQLite file anywhere in the data (Open WebUI's, ChromaDB's, n8n's) is copied with the
backup API, so a service writing it meanwhile does not tear it.

A restore extracts into a folder beside the target, checks every file against the manifest, unseals the
secrets, checks each SQLite database's integrity, and only then moves the whole into place: a damaged
archive or a wrong passphrase changes nothing.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

import orjson

import ark
from ark.backup import crypto, database
from ark.backup.crypto import BackupError
from ark.config import Settings
from ark.store.migrate import database_url, open_engine

FORMAT = "ark-backup/1"
PREFIX = "ark-backup-"
SUFFIX = ".tar.gz"
# top-level names of the data directory a backup leaves out: made again, fetched again, or huge and not data
LEFT_OUT = frozenset({"services", "models", "logs", "monitor", "deploy", "firewall", "backups", "tmp"})
MEDIA = frozenset({"images", "recordings", "experiments", "renders"})  # --without-media leaves these out
SECRET_DIRS = frozenset({"wireguard", "certbot"})
SECRET_FILES = frozenset({"n8n/encryption.key"})
_DB_FILES = frozenset({"ark.db", "ark.db-wal", "ark.db-shm", "ark.db-journal", "ark.toml"})
_SIDE_FILES = ("-wal", "-shm", "-journal")  # SQLite's: the backup API's copy already holds what they hold
_CHUNK = 1 << 20
Progress = Callable[[int], None]


@dataclass
class Made:
    path: Path
    manifest: dict[str, Any]
    seconds: float


@dataclass
class Staged:
    """An archive extracted and checked, not yet in place."""

    manifest: dict[str, Any]
    root: Path  # the folder it was extracted into (removed by :meth:`discard`)
    tree: Path = field(init=False)

    def __post_init__(self) -> None:
        self.tree = self.root / "tree"

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# -- making one --------------------------------------------------------------------------------------
def is_secret(rel: str) -> bool:
    top = rel.split("/", 1)[0]
    return (("/" not in rel) and rel.endswith(".key")) or top in SECRET_DIRS or rel in SECRET_FILES


def data_files(data_dir: Path, *, media: bool) -> Iterator[tuple[str, Path]]:
    """The data directory's files a backup keeps, as (relative POSIX path, path); regular files only."""
    for folder, dirs, files in os.walk(data_dir, followlinks=False):
        here = Path(folder)
        rel_dir = here.relative_to(data_dir).as_posix()
        if rel_dir == ".":
            dirs[:] = [d for d in dirs if d not in LEFT_OUT and (media or d not in MEDIA)]
        dirs.sort()
        for name in sorted(files):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if rel in _DB_FILES or name.endswith(_SIDE_FILES) or name.startswith(".ark-"):
                continue
            path = here / name
            try:
                if not stat.S_ISREG(path.lstat().st_mode):
                    continue  # links, sockets, fifos: not data
            except FileNotFoundError:
                continue
            yield rel, path


class _Hashing(io.RawIOBase):
    """Reads ``size`` bytes of a file while hashing them (what goes into the tar is what is hashed)."""

    def __init__(self, handle: IO[bytes], progress: Progress | None) -> None:
        self.handle, self.digest, self.progress = handle, hashlib.sha256(), progress

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk = self.handle.read(size)
        self.digest.update(chunk)
        if self.progress is not None and chunk:
            self.progress(len(chunk))
        return chunk


def _add(tar: tarfile.TarFile, name: str, path: Path, progress: Progress | None) -> dict[str, Any] | None:
    """Add ``path`` as ``name``; its manifest entry, or None when it vanished or shrank meanwhile."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return None
    with handle:
        size = os.fstat(handle.fileno()).st_size
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o600, int(time.time())
        reader = _Hashing(handle, progress)
        try:
            tar.addfile(info, reader)
        except OSError as exc:  # a file cut short while read (a log rotated): the tar is now broken
            raise BackupError(f"{path} changed while it was read ({exc}); try again") from None
        return {"path": name, "size": size, "sha256": reader.digest.hexdigest()}


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> dict[str, Any]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
    tar.addfile(info, io.BytesIO(data))
    return {"path": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _secrets(settings: Settings, files: list[tuple[str, Path]]) -> bytes:
    """The secrets as a tar in memory: the config file (config/ark.toml) and the secret files of the data."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        config = settings.config_path
        if config is not None and config.is_file():
            tar.add(config, arcname="config/ark.toml", recursive=False)
        for rel, path in files:
            try:
                tar.add(path, arcname=f"data/{rel}", recursive=False)
            except FileNotFoundError:
                continue
    return out.getvalue()


def backup_name(at: float) -> str:
    return PREFIX + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(at)) + SUFFIX


def create(
    settings: Settings,
    out_dir: Path,
    *,
    passphrase: str | None = None,
    media: bool = True,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.time,
) -> Made:
    """Make a backup of ``settings``' ARK into ``out_dir`` (0700); the archive appears whole or not at all."""
    started = clock()
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = out_dir / backup_name(started)
    engine = open_engine(database_url(settings.store.url, settings.data_dir))
    kind = engine.dialect.name
    data_dir = settings.data_dir
    chosen = list(data_files(data_dir, media=media))
    secret_files = [(rel, path) for rel, path in chosen if is_secret(rel)]
    plain_files = [(rel, path) for rel, path in chosen if not is_secret(rel)]
    try:
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".ark-making-") as work_dir:
            work = Path(work_dir)
            if kind == "sqlite":
                db_name = "database/ark.db"
                source = Path(engine.url.database or "")
                if not source.is_file():
                    raise BackupError(f"there is no database at {source}: nothing to back up")
                copy_path = work / "ark.db"
                database.copy_sqlite(source, copy_path)
                schema, counts = database.sqlite_facts(copy_path)
            elif kind == "postgresql":
                db_name = "database/ark.pgdump"
                copy_path = work / "ark.pgdump"
                schema, counts = database.dump_postgres(engine, copy_path)
            else:
                raise BackupError(f"ARK cannot back up a {kind} database")
            secrets = _secrets(settings, secret_files)
            sealed = passphrase is not None
            if sealed:
                secrets = crypto.seal(secrets, crypto.check_passphrase(passphrase or ""))
            partial = work / "archive.tar.gz"
            entries: list[dict[str, Any]] = []
            with partial.open("wb") as raw, tarfile.open(fileobj=raw, mode="w:gz", compresslevel=6) as tar:
                entry = _add(tar, db_name, copy_path, progress)
                assert entry is not None
                entries.append(entry)
                for rel, path in plain_files:
                    if database.is_sqlite(path):  # a live service's database: a consistent copy of it
                        snapshot = work / "snapshot.db"
                        database.copy_sqlite(path, snapshot)
                        entry = _add(tar, f"data/{rel}", snapshot, progress)
                        snapshot.unlink()
                    else:
                        entry = _add(tar, f"data/{rel}", path, progress)
                    if entry is not None:
                        entries.append(entry)
                entries.append(_add_bytes(tar, "secrets.tar.sealed" if sealed else "secrets.tar", secrets))
                manifest = {
                    "format": FORMAT,
                    "ark_version": ark.__version__,
                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                    "database": {"kind": kind, "file": db_name, "schema": schema, "counts": counts},
                    "secrets": {"sealed": sealed, **({"kdf": crypto.KDF} if sealed else {})},
                    "media": media,
                    "files": entries,
                }
                _add_bytes(tar, "manifest.json", orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
            os.chmod(partial, 0o600)
            os.replace(partial, target)  # whole, or not at all
    finally:
        engine.dispose()
    return Made(target, manifest, clock() - started)


# -- reading one -------------------------------------------------------------------------------------
def _safe_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts or "\\" in name or "\x00" in name:
        raise BackupError(f"the archive names a file outside itself ({name!r}): refused, nothing was changed")
    return path


def _extract(tar: tarfile.TarFile, into: Path) -> dict[str, str]:
    """Every member as a regular file under ``into``, its SHA-256 by name; anything else is refused."""
    digests: dict[str, str] = {}
    for member in tar:
        rel = _safe_name(member.name)
        if member.isdir():
            continue
        if not member.isfile():
            raise BackupError(f"the archive holds {member.name!r}, which is not a plain file: refused")
        if member.name in digests:
            raise BackupError(f"the archive holds {member.name!r} twice: refused")
        target = into / rel
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        source = tar.extractfile(member)
        assert source is not None
        digest = hashlib.sha256()
        with target.open("wb") as out:
            os.fchmod(out.fileno(), 0o600)
            while chunk := source.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        digests[member.name] = digest.hexdigest()
    return digests


def stage(archive: Path, beside: Path, passphrase: str | None = None) -> Staged:
    """Extract ``archive`` into a folder in ``beside`` and check it whole (see the module's docstring)."""
    beside.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(dir=beside, prefix=".ark-restore-"))
    staged: Staged | None = None
    try:
        raw = root / "raw"
        try:
            with tarfile.open(archive, mode="r:gz") as tar:
                digests = _extract(tar, raw)
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise BackupError(f"{archive}: no such file") from None
            raise BackupError(f"{archive} is not a readable ARK backup ({exc}): nothing was changed") from None
        manifest = _manifest(raw, archive)
        listed = {entry["path"]: entry for entry in manifest["files"]}
        for name, entry in listed.items():
            if digests.get(name) != entry.get("sha256"):
                why = "is missing" if name not in digests else "does not match its checksum"
                raise BackupError(f"{archive}: {name} {why}: the archive is damaged, nothing was changed")
        extra = set(digests) - set(listed) - {"manifest.json"}
        if extra:
            raise BackupError(f"{archive} holds files its manifest does not list ({sorted(extra)[0]}): refused")
        staged = Staged(manifest, root)
        _unpack(staged, raw, passphrase)
        return staged
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


def _manifest(raw: Path, archive: Path) -> dict[str, Any]:
    try:
        manifest = orjson.loads((raw / "manifest.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        raise BackupError(
            f"{archive} is not a readable ARK backup: it has no manifest (damaged, cut short, or not ARK's); "
            "nothing was changed"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{archive} is not an ARK backup this version reads (format {manifest.get('format')!r})")
    return manifest


def _unpack(staged: Staged, raw: Path, passphrase: str | None) -> None:
    """Lay the checked files out as a data directory in ``staged.tree``; unseal and check what needs it."""
    manifest, tree = staged.manifest, staged.tree
    tree.mkdir(mode=0o700)
    db = manifest["database"]
    if db["kind"] == "sqlite":
        os.replace(raw / db["file"], tree / "ark.db")
        database.check_sqlite(tree / "ark.db")
    else:
        os.replace(raw / db["file"], staged.root / "ark.pgdump")
    data = raw / "data"
    if data.is_dir():
        for path in sorted(data.rglob("*")):
            if path.is_file():
                rel = path.relative_to(data)
                (tree / rel).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                os.replace(path, tree / rel)
    secrets = _secret_bytes(manifest, raw, passphrase)
    with tarfile.open(fileobj=io.BytesIO(secrets), mode="r:") as tar:
        _extract(tar, staged.root / "secrets")
    inner = staged.root / "secrets"
    if (inner / "data").is_dir():
        for path in sorted((inner / "data").rglob("*")):
            if path.is_file():
                rel = path.relative_to(inner / "data")
                (tree / rel).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                os.replace(path, tree / rel)


def _secret_bytes(manifest: dict[str, Any], raw: Path, passphrase: str | None) -> bytes:
    info = manifest.get("secrets") or {}
    if not info.get("sealed"):
        return (raw / "secrets.tar").read_bytes()
    if not passphrase:
        raise BackupError("this backup's secrets are sealed with a passphrase: give it (--passphrase-file or stdin)")
    return crypto.unseal((raw / "secrets.tar.sealed").read_bytes(), passphrase, info.get("kdf") or {})


def staged_config(staged: Staged) -> Path | None:
    path = staged.root / "secrets" / "config" / "ark.toml"
    return path if path.is_file() else None


# -- putting one in place ----------------------------------------------------------------------------
def _empty(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def install(staged: Staged, data_dir: Path, *, config_to: Path | None, store_url: str = "") -> Path | None:
    """Move a staged backup into ``data_dir`` (absent or empty), its config to ``config_to`` (default
    DATA/ark.toml), its PostgreSQL dump into ``store_url``'s empty database. Returns where the config went."""
    if not _empty(data_dir):
        raise BackupError(f"{data_dir} is not empty: restore into an empty data directory (nothing was changed)")
    config = staged_config(staged)
    destination = config_to or (data_dir / "ark.toml")
    if config is not None and config_to is not None and config_to.exists():
        raise BackupError(f"{config_to} exists: give another --config-to (nothing was changed)")
    if staged.manifest["database"]["kind"] == "postgresql":
        if not store_url.startswith(("postgresql", "postgres")):
            raise BackupError(
                "this backup is of a PostgreSQL database: name the empty database to restore it into "
                "([store] url in the config, or --store-url)"
            )
        engine = open_engine(database_url(store_url, data_dir))
        try:
            database.restore_postgres(engine, staged.root / "ark.pgdump")
        finally:
            engine.dispose()
    if data_dir.exists():
        data_dir.rmdir()
    os.replace(staged.tree, data_dir)
    os.chmod(data_dir, 0o700)
    if config is None:
        return None
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config, destination)
    os.chmod(destination, 0o600)
    return destination


def restored_counts(data_dir: Path, store_url: str = "") -> dict[str, int]:
    """The counted rows of a restored database (what the manifest's counts are checked against)."""
    engine = open_engine(database_url(store_url, data_dir))
    try:
        with engine.connect() as connection:
            return database.counts(connection)
    finally:
        engine.dispose()


def discard_unfinished(folder: Path) -> None:
    """Remove what a backup that was killed left in ``folder`` (its working folder; never an archive)."""
    for path in folder.glob(".ark-making-*"):
        shutil.rmtree(path, ignore_errors=True)


def backups(folder: Path) -> list[Path]:
    """ARK's archives in ``folder``, oldest first (their names sort by time)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith(PREFIX) and p.name.endswith(SUFFIX))


def prune(folder: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` archives; the ones deleted."""
    found = backups(folder)
    gone = found[: max(0, len(found) - keep)]
    for path in gone:
        path.unlink(missing_ok=True)
    return gone
