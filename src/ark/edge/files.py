"""The one place the edge writes files: atomically, with their mode, and only when they change.

Renderers return :data:`Files` (relative path -> :class:`FileSpec`); this module
puts them on disk. A file whose content is already right is left alone (its
mtime does not move), so re-rendering an unchanged config is a no-op that
`nginx -s reload`, `wg syncconf` or a config-management diff can rely on.

:func:`write_tracked` also keeps :data:`MANIFEST` in the bundle (which file, which
renderer, which content ARK wrote) and removes what an earlier render wrote that
this one no longer produces: never a file ARK did not write, and a file edited
since ARK wrote it is renamed ``PATH.ark-stale``, not deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import hashlib
import os
import secrets
import stat
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import orjson

from ark.errors import EdgeError

PRIVATE = 0o600  # keys, peer files, anything holding a secret
PUBLIC = 0o644


@dataclass(frozen=True)
class FileSpec:
    """What a file must contain, and who may read it."""

    content: bytes
    mode: int = PUBLIC
    group: str | None = None  # give this group read access (e.g. nginx's workers and an htpasswd)

    @classmethod
    def text(cls, text: str, mode: int = PUBLIC, group: str | None = None) -> FileSpec:
        return cls(text.encode(), mode, group)


Files = dict[str, FileSpec]


@dataclass
class WriteResult:
    """Which files a write changed and which it left untouched (paths relative to the root)."""

    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # written by an earlier render, no longer produced
    stale: list[tuple[str, str]] = field(default_factory=list)  # (path, kept as): edited since, so renamed


def write_atomic(path: Path, content: bytes, mode: int = PUBLIC, group: str | None = None) -> bool:
    """Make ``path`` hold ``content`` with ``mode``; returns whether the content changed.

    Same content: only mode and group are corrected (no new inode, mtime kept).
    Otherwise a temporary file in the same directory, created with the final
    mode, is fsynced and renamed over ``path``: readers see the old file or the
    new one, never half of one, and a secret is never readable by others for a
    moment between create and chmod.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    gid = _gid(group)
    if _same_content(path, content):
        _fix_metadata(path, mode, gid)
        return False
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fchmod(f.fileno(), mode)  # O_CREAT's mode is reduced by the umask
            if gid is not None:
                os.fchown(f.fileno(), -1, gid)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
    return True


def write_files(root: Path, files: Mapping[str, FileSpec], dir_mode: int = 0o755) -> WriteResult:
    """Write every file under ``root``; directories are created ``dir_mode`` (nginx must traverse them)."""
    result = WriteResult()
    for relative, spec in sorted(files.items()):
        path = root / safe_relative(relative)
        _make_dirs(root, path.parent, dir_mode)
        try:
            changed = write_atomic(path, spec.content, spec.mode, spec.group)
        except PermissionError as exc:
            raise EdgeError(f"cannot write {path}: permission denied ({exc.strerror})") from None
        (result.changed if changed else result.unchanged).append(relative)
        if spec.group is not None and _gid(spec.group) is None:
            result.notes.append(f"{relative}: group {spec.group} does not exist here; the file is {spec.mode:o}")
    return result


def read_existing(root: Path, relative: str) -> bytes | None:
    """The current content of a file a renderer produced before, or None."""
    try:
        return (root / safe_relative(relative)).read_bytes()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def safe_relative(relative: str) -> PurePosixPath:
    """Refuse absolute paths and ``..``: a renderer may only write inside its output directory."""
    pure = PurePosixPath(relative)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise EdgeError(f"refusing to write {relative!r} outside the output directory")
    return pure


def _make_dirs(root: Path, directory: Path, mode: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    missing = []
    current = directory
    while current != root and not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        path.mkdir(mode=mode)
        os.chmod(path, mode)  # mkdir's mode is reduced by the umask


def _same_content(path: Path, content: bytes) -> bool:
    try:
        if path.stat().st_size != len(content):
            return False
        return path.read_bytes() == content
    except (FileNotFoundError, NotADirectoryError):
        return False


def _fix_metadata(path: Path, mode: int, gid: int | None) -> None:
    st = path.stat()
    if st.st_mode & 0o7777 != mode:
        os.chmod(path, mode)
    if gid is not None and st.st_gid != gid:
        os.chown(path, -1, gid)


def _gid(group: str | None) -> int | None:
    """The group's id when it exists and this process may hand files to it (root, or a member)."""
    if group is None:
        return None
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        return None
    return gid if os.geteuid() == 0 or gid in os.getgroups() else None


def fsync_dir(directory: Path) -> None:
    """fsync a folder: the entries in it (a file just made or renamed there) are on disk."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- what ARK wrote: the manifest, and pruning what is no longer rendered -------------------------

MANIFEST = ".ark-manifest.json"
STALE = ".ark-stale"
_MANIFEST_ABOUT = "Files `ark render` wrote here; the next render removes those it no longer produces. Do not edit."


@dataclass(frozen=True)
class Entry:
    """One file ARK wrote: the renderer that produced it and the content(s) it may hold (SHA-256)."""

    part: str
    sha256: tuple[str, ...]


Manifest = dict[str, Entry]


def digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def track(
    previous: Mapping[str, Entry], parts: Mapping[str, Files], scope: Collection[str] | None
) -> tuple[Manifest, Manifest]:
    """The manifest after this render, and the stale entries: ``previous`` ones in scope this render did not produce.

    ``scope``: the renderers that ran (None: all of them, so every entry is in scope); entries of
    the others are carried over untouched, since a partial render knows nothing about their files.
    """
    produced = {
        path: Entry(part, (digest(spec.content),)) for part, files in parts.items() for path, spec in files.items()
    }
    stale, carried = {}, {}
    for path, entry in previous.items():
        if path in produced:
            continue
        if scope is None or entry.part in scope:
            stale[path] = entry
        else:
            carried[path] = entry
    return dict(sorted({**carried, **produced}.items())), stale


def read_manifest(root: Path) -> Manifest | None:
    """What the last render wrote under ``root``; None when no render kept a manifest there."""
    path = root / MANIFEST
    try:
        raw = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except PermissionError:
        raise EdgeError(
            f"cannot read {path}: permission denied. Another user (root?) rendered this bundle: run this command "
            "as that user (e.g. with sudo), or render the bundle as this one"
        ) from None
    except orjson.JSONDecodeError as exc:
        raise _bad_manifest(path, f"not JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("version") != 1 or not isinstance(raw.get("files"), dict):
        raise _bad_manifest(path, "not version 1")
    manifest: Manifest = {}
    for relative, item in raw["files"].items():
        hashes = item.get("sha256") if isinstance(item, dict) else None
        part = item.get("part") if isinstance(item, dict) else None
        ok = isinstance(part, str) and isinstance(hashes, list) and all(isinstance(h, str) for h in hashes)
        try:  # an entry naming a path outside the bundle (or the manifest) must never be deleted
            inside = safe_relative(relative).name != MANIFEST
        except EdgeError:
            inside = False
        if not ok or not inside:
            raise _bad_manifest(path, f"bad entry {relative!r}")
        manifest[relative] = Entry(str(part), tuple(str(h) for h in hashes or ()))
    return manifest


def write_manifest(root: Path, manifest: Mapping[str, Entry]) -> bool:
    """Atomically, like every other file (a crash leaves the old manifest or the new one)."""
    files = {path: {"part": e.part, "sha256": list(e.sha256)} for path, e in sorted(manifest.items())}
    body = {"about": _MANIFEST_ABOUT, "version": 1, "files": files}
    # 0600: nothing that serves the bundle needs it, and it lists every secret's path
    return write_atomic(root / MANIFEST, orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n", PRIVATE)


def write_tracked(root: Path, parts: Mapping[str, Files], scope: Collection[str] | None = None) -> WriteResult:
    """Write every renderer's files, then prune what the previous render in ``scope`` wrote and this one did not.

    The manifest is first rewritten to hold old and new entries (with both contents allowed), so a
    crash part-way leaves every file ARK may have written on record; after the pruning it holds
    only what this render produced (plus the entries of renderers outside ``scope``).
    """
    files: Files = {path: spec for part_files in parts.values() for path, spec in part_files.items()}
    first = not (root / MANIFEST).exists() and root.is_dir() and any(root.iterdir())
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root):
        previous = read_manifest(root) or {}
        final, stale = track(previous, parts, scope)
        interim = {**previous, **{p: _union(previous.get(p), e) for p, e in final.items()}}
        write_manifest(root, interim)
        result = write_files(root, files)
        _prune(root, stale, result)
        write_manifest(root, final)
    if first:
        result.notes.append(
            f"no {MANIFEST} here yet: files earlier renders left that are no longer produced "
            "cannot be told from yours and stay (remove them by hand)"
        )
    return result


def _union(old: Entry | None, new: Entry) -> Entry:
    hashes = (*old.sha256, *new.sha256) if old is not None else new.sha256
    return Entry(new.part, tuple(dict.fromkeys(hashes)))


def _prune(root: Path, stale: Mapping[str, Entry], result: WriteResult) -> None:
    """Delete each stale file still holding what ARK wrote; rename an edited one; leave anything else."""
    real_root = root.resolve()
    for relative, entry in sorted(stale.items()):
        path = root / safe_relative(relative)
        try:
            st = path.lstat()
        except (FileNotFoundError, NotADirectoryError):
            continue  # already gone
        # lstat checks the last component only: a directory on the way that is now a symlink would
        # lead the unlink or rename outside the bundle
        parent = path.parent.resolve()
        if parent != real_root and real_root not in parent.parents:
            result.notes.append(
                f"{relative}: no longer rendered, but its directory leads outside the bundle; left alone"
            )
            continue
        try:
            if not stat.S_ISREG(st.st_mode):
                result.notes.append(f"{relative}: no longer rendered, but no longer a plain file either; left alone")
                continue
            if digest(path.read_bytes()) in entry.sha256:
                path.unlink()
                result.removed.append(relative)
            else:
                kept = _stale_name(path)
                os.rename(path, kept)
                result.stale.append((relative, str(kept.relative_to(root))))
            fsync_dir(path.parent)
            _remove_empty_dirs(root, path.parent)
        except PermissionError as exc:
            raise EdgeError(f"cannot remove {path}: permission denied ({exc.strerror})") from None


def _stale_name(path: Path) -> Path:
    """``PATH.ark-stale``, or ``PATH.ark-stale.2`` ... when an earlier one is still there."""
    candidate, n = path.with_name(path.name + STALE), 1
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = path.with_name(f"{path.name}{STALE}.{n}")
    return candidate


def _remove_empty_dirs(root: Path, directory: Path) -> None:
    """Directories emptied by pruning go too (a removed site's certificate folder), up to ``root``."""
    while directory != root and root in directory.parents:
        try:
            directory.rmdir()
        except OSError:  # not empty (or not ours to remove): stop here
            return
        directory = directory.parent


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One render writes a bundle at a time (`ark peers add` during `ark render`): an flock on the directory."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _bad_manifest(path: Path, why: str) -> EdgeError:
    return EdgeError(
        f"{path} is not a manifest ARK wrote ({why}); nothing was written. Delete it to start afresh: "
        "files earlier renders wrote are then no longer removed when they stop being rendered"
    )
