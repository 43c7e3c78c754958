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

import calendar
import hashlib
import io
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import orjson

import ark
from ark.backup import crypto, database
from ark.backup.crypto import BackupError
from ark.config import Settings
from ark.edge.files import fsync_dir
from ark.store.migrate import database_url, open_engine

FORMAT = "ark-backup/1"
PREFIX = "ark-backup-"
SUFFIX = ".tar.gz"
# top-level names of the data directory a backup leaves out: made again, fetched again, or huge and not data
LEFT_OUT = frozenset({"services", "models", "logs", "monitor", "deploy", "firewall", "backups", "tmp"})
MEDIA = frozenset({"images", "recordings", "experiments", "renders"})  # --without-media leaves these out
SECRET_DIRS = frozenset({"wireguard", "certbot"})
SECRET_FILES = frozenset({"n8n/encryption.key"})
CERTS = "deploy/certs"  # the local CA and certificates `ark render` made (the rest of deploy/ is made again)
_DB_FILES = frozenset({"ark.db", "ark.db-wal", "ark.db-shm", "ark.db-journal", "ark.toml"})
_SIDE_FILES = ("-wal", "-shm", "-journal")  # SQLite's: the backup API's copy already holds what they hold
_DATABASES = {"sqlite": "database/ark.db", "postgresql": "database/ark.pgdump"}
_NAME = re.compile(r"^ark-backup-\d{8}T\d{6}Z\.tar\.gz$")  # what `ark backup` names its archives
_CHUNK = 1 << 20
MAX_MEMBERS = 1_000_000
_SPARE = 64 << 20  # left free on the disk a restore extracts to
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

    @property
    def tree(self) -> Path:
        """The data directory as it will be, inside :attr:`root`."""
        return self.root / "tree"

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# -- making one --------------------------------------------------------------------------------------
def is_secret(rel: str) -> bool:
    top = rel.split("/", 1)[0]
    return (
        (("/" not in rel) and rel.endswith(".key"))
        or top in SECRET_DIRS
        or rel in SECRET_FILES
        or rel.startswith(CERTS + "/")
    )


@dataclass(frozen=True)
class Found:
    rel: str  # the path in the data directory, POSIX
    path: Path
    link: str | None = None  # a link kept as a link: relative, inside its own secret folder (certbot's live/)


def _inside_link(data_dir: Path, rel: str, path: Path) -> str | None:
    """The target of a symbolic link that stays inside its own secret folder (certbot's live/ -> archive/)."""
    top = rel.split("/", 1)[0]
    if top not in SECRET_DIRS:
        return None
    target = os.readlink(path)
    if os.path.isabs(target):
        return None
    resolved = (path.parent / target).resolve()
    return target if resolved.is_relative_to((data_dir / top).resolve()) and resolved.is_file() else None


def _unreadable(exc: OSError) -> None:
    """A folder the backup cannot read is never left out in silence (os.walk's default): the containers' data
    folders belong to the users their images run as, and only root reads them all."""
    who = "root" if os.geteuid() != 0 else "a user that can read it"
    raise BackupError(
        f"cannot read {exc.filename}: {exc.strerror or exc}. The backup would miss it: run `ark backup` as {who} "
        "(with services in containers, the ark-backup timer does)"
    )


def data_files(data_dir: Path, *, media: bool, skip: Collection[Path] = ()) -> Iterator[Found]:
    """The data directory's files a backup keeps: regular files, and the links inside a secret folder that
    stay inside it. ``skip``: folders never to enter (the backups folder, wherever it is)."""
    avoid = {p.resolve() for p in skip}
    for folder, dirs, files in os.walk(data_dir, onerror=_unreadable, followlinks=False):
        here = Path(folder)
        rel_dir = here.relative_to(data_dir).as_posix()
        if rel_dir == ".":
            dirs[:] = [d for d in dirs if d not in LEFT_OUT and (media or d not in MEDIA)]
        dirs[:] = sorted(d for d in dirs if (here / d).resolve() not in avoid)
        for name in sorted(files):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if rel in _DB_FILES or name.endswith(_SIDE_FILES) or name.startswith(".ark-"):
                continue
            path = here / name
            try:
                mode = path.lstat().st_mode
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(mode):
                link = _inside_link(data_dir, rel, path)
                if link is not None:
                    yield Found(rel, path, link)
            elif stat.S_ISREG(mode):
                yield Found(rel, path)
    certs = data_dir / CERTS
    if certs.is_dir() and not certs.is_symlink():
        for path in sorted(certs.iterdir()):
            if path.is_file() and not path.is_symlink():
                yield Found(f"{CERTS}/{path.name}", path)


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
        except OSError as exc:
            if "unexpected end of data" in str(exc):  # cut short while read (rotated): the tar is now broken
                raise BackupError(f"{path} changed while it was read; try again") from None
            raise BackupError(f"cannot write the archive: {exc}") from None
        return {"path": name, "size": size, "sha256": reader.digest.hexdigest()}


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> dict[str, Any]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
    tar.addfile(info, io.BytesIO(data))
    return {"path": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _secrets(settings: Settings, files: list[Found]) -> bytes:
    """The secrets as a tar in memory: the config file (config/ark.toml) and the data's secret files, each
    stored from its bytes (a config that is a link is kept as the file it names), certbot's inner links as
    links."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        config = settings.config_path
        if config is not None and config.is_file():
            _add_bytes(tar, "config/ark.toml", config.read_bytes())
        for found in files:
            if found.link is not None:
                info = tarfile.TarInfo(f"data/{found.rel}")
                info.type, info.linkname, info.mtime = tarfile.SYMTYPE, found.link, int(time.time())
                tar.addfile(info)
                continue
            try:
                _add_bytes(tar, f"data/{found.rel}", found.path.read_bytes())
            except FileNotFoundError:
                continue
    return out.getvalue()


def backup_name(at: float) -> str:
    return PREFIX + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(at)) + SUFFIX


def made_at(path: Path) -> float:
    """When an archive was made (Unix time), from its name: a copy keeps it, unlike its mtime."""
    stamp = time.strptime(path.name[len(PREFIX) : -len(SUFFIX)], "%Y%m%dT%H%M%SZ")
    return float(calendar.timegm(stamp))


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
    chosen = list(data_files(data_dir, media=media, skip=(out_dir, settings.backups_dir)))
    secret_files = [found for found in chosen if is_secret(found.rel)]
    plain_files = [found for found in chosen if not is_secret(found.rel) and found.link is None]
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
                for found in plain_files:
                    rel, path = found.rel, found.path
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
            with partial.open("rb") as written:
                os.fsync(written.fileno())  # on disk before it has its name: a power cut leaves no empty archive
            os.replace(partial, target)  # whole, or not at all
            fsync_dir(out_dir)
    finally:
        engine.dispose()
    return Made(target, manifest, clock() - started)


# -- reading one -------------------------------------------------------------------------------------
def _safe_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts or "\\" in name or "\x00" in name:
        raise BackupError(f"the archive names a file outside itself ({name!r}): refused, nothing was changed")
    return path


def _extract(tar: tarfile.TarFile, into: Path, *, links_within: Path | None = None) -> dict[str, str]:
    """Every member as a regular file under ``into``, its SHA-256 by name; anything else is refused, but
    (``links_within``) a relative link that stays inside its own secret folder there. Stops before the disk
    fills, and at :data:`MAX_MEMBERS` members."""
    digests: dict[str, str] = {}
    into.mkdir(parents=True, exist_ok=True, mode=0o700)
    for count, member in enumerate(tar, 1):
        rel = _safe_name(member.name)
        if count > MAX_MEMBERS:
            raise BackupError(f"the archive holds more than {MAX_MEMBERS:,} files: refused, nothing was changed")
        if member.isdir():
            continue
        name = rel.as_posix()
        if name in digests:
            raise BackupError(f"the archive holds {member.name!r} twice: refused")
        target = into / rel
        if member.issym() and links_within is not None and _link_ok(into, rel, member.linkname, links_within):
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.symlink(member.linkname, target)
            digests[name] = "link:" + member.linkname
            continue
        if not member.isfile():
            raise BackupError(f"the archive holds {member.name!r}, which is not a plain file: refused")
        free = shutil.disk_usage(into).free
        if member.size > free - _SPARE:
            raise BackupError(
                f"not enough space in {into.parent} to check the archive ({member.name} alone is "
                f"{member.size / 2**20:.0f} MiB, {max(0, free) / 2**20:.0f} MiB free): nothing was changed"
            )
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        source = tar.extractfile(member)
        assert source is not None
        digest = hashlib.sha256()
        with target.open("xb") as out:
            os.fchmod(out.fileno(), 0o600)
            while chunk := source.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        digests[name] = digest.hexdigest()
    return digests


def _link_ok(into: Path, rel: PurePosixPath, linkname: str, within: Path) -> bool:
    """A link a restore may make: relative, inside one of the secret folders under ``within``."""
    parts = rel.parts
    if os.path.isabs(linkname) or len(parts) < 3 or parts[0] != "data" or parts[1] not in SECRET_DIRS:
        return False
    folder = (within / parts[1]).resolve()
    return (into / rel).parent.joinpath(linkname).resolve().is_relative_to(folder)


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
            if not archive.is_file():
                raise BackupError(f"{archive}: no such file") from None
            if isinstance(exc, OSError) and exc.errno is not None:  # this machine's trouble, not the archive's
                why = f"cannot check {archive} in {root.parent}: {exc.strerror}"
                raise BackupError(f"{why}; nothing was changed") from None
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
    """The manifest, its shape checked: nothing in it names a file but the ones it lists."""
    try:
        manifest = orjson.loads((raw / "manifest.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        raise BackupError(
            f"{archive} is not a readable ARK backup: it has no manifest (damaged, cut short, or not ARK's); "
            "nothing was changed"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise BackupError(f"{archive} is not an ARK backup this version reads (format {found!r})")
    db: Any = manifest.get("database")
    files: Any = manifest.get("files")
    secrets: Any = manifest.get("secrets")
    shaped = (
        isinstance(db, dict)
        and _DATABASES.get(str(db.get("kind"))) == db.get("file")
        and isinstance(db.get("counts"), dict)
        and isinstance(secrets, dict)
        and isinstance(files, list)
        and all(
            isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("sha256"), str) for f in files
        )
    )
    if not shaped or db["file"] not in {f["path"] for f in files}:
        raise BackupError(f"{archive}: its manifest is not one ARK writes: refused, nothing was changed")
    for entry in files:
        name = entry["path"]
        rel = name.removeprefix("data/")
        if name.startswith("data/") and (rel in _DB_FILES or is_secret(rel)):
            raise BackupError(f"{archive} holds {name} among its data, where ARK never puts it: refused")
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
    _move_tree(raw / "data", tree)
    secrets = _secret_bytes(manifest, raw, passphrase)
    inner = staged.root / "secrets"
    inner.mkdir(mode=0o700)
    with tarfile.open(fileobj=io.BytesIO(secrets), mode="r:") as tar:
        names = _extract(tar, inner, links_within=inner / "data")
    for name in names:
        rel = name.removeprefix("data/")
        if name != "config/ark.toml" and not (name.startswith("data/") and is_secret(rel)):
            raise BackupError(f"the archive's secrets hold {name}, which is no secret ARK keeps: refused")
    _move_tree(inner / "data", tree)


def _move_tree(source: Path, tree: Path) -> None:
    """Move every file and link under ``source`` to the same place under ``tree``; never over one there."""
    if not source.is_dir():
        return
    for path in sorted(source.rglob("*")):
        if path.is_symlink() or path.is_file():
            target = tree / path.relative_to(source)
            if target.exists() or target.is_symlink():
                raise BackupError(f"the archive holds {target.relative_to(tree)} twice: refused")
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.replace(path, target)


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
def _check_target(staged: Staged, data_dir: Path) -> None:
    """Refuse, before anything is written, a target a restore could not finish in."""
    if data_dir.is_symlink():
        raise BackupError(f"{data_dir} is a symbolic link: restore into the folder itself (nothing was changed)")
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise BackupError(f"{data_dir} is not empty: restore into an empty data directory (nothing was changed)")
    where = data_dir if data_dir.exists() else data_dir.parent
    if os.stat(where).st_dev != os.stat(staged.root).st_dev:
        raise BackupError(f"{data_dir} is on another file system than {staged.root.parent}: nothing was changed")


def install(staged: Staged, data_dir: Path, *, config_to: Path | None, store_url: str = "") -> Path | None:
    """Move a staged backup into ``data_dir`` (absent or empty), its config to ``config_to`` (default
    DATA/ark.toml), its PostgreSQL dump into ``store_url``'s empty database. Returns where the config went.
    Everything that could stop it is checked before anything is written."""
    _check_target(staged, data_dir)
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
    if data_dir.exists():  # empty (a mount point, say): its contents move in, the folder stays
        for child in staged.tree.iterdir():
            os.replace(child, data_dir / child.name)
    else:
        os.replace(staged.tree, data_dir)
    os.chmod(data_dir, 0o700)
    if config is None:
        return None
    destination.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(config.read_bytes())
    return destination


def restored_counts(data_dir: Path, store_url: str = "") -> dict[str, int]:
    """The counted rows of a restored database (what the manifest's counts are checked against)."""
    engine = open_engine(database_url(store_url, data_dir))
    try:
        with engine.connect() as connection:
            return database.counts(connection)
    finally:
        engine.dispose()


def discard_unfinished(folder: Path, keep: Collection[Path] = ()) -> None:
    """Remove what a backup that was killed left in ``folder`` (its working folder; never an archive), but
    the working folders in ``keep`` (another backup's, running now)."""
    for path in folder.glob(".ark-making-*"):
        if path not in keep:
            shutil.rmtree(path, ignore_errors=True)


def is_backup_name(name: str) -> bool:
    """Whether ``name`` is one `ark backup` gives its archives (the only ones ARK ever prunes)."""
    return bool(_NAME.match(name))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def backups(folder: Path) -> list[Path]:
    """ARK's archives in ``folder`` (named as `ark backup` names them), oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name) and p.is_file())


def prune(folder: Path, keep: int, *, spare: Path | None = None) -> list[Path]:
    """Delete all but the newest ``keep`` archives, never ``spare`` (the one just made); the ones deleted."""
    found = [p for p in backups(folder) if spare is None or p != spare]
    gone = found[: max(0, len(found) - max(0, keep - (1 if spare is not None else 0)))]
    for path in gone:
        path.unlink(missing_ok=True)
    return gone
