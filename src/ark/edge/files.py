"""The one place the edge writes files: atomically, with their mode, and only when they change.

Renderers return :data:`Files` (relative path -> :class:`FileSpec`); this module
puts them on disk. A file whose content is already right is left alone (its
mtime does not move), so re-rendering an unchanged config is a no-op that
`nginx -s reload`, `wg syncconf` or a config-management diff can rely on.
"""

from __future__ import annotations

import contextlib
import grp
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

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
    _fsync_dir(path.parent)
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


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
