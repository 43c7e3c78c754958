"""Download GGUF model files over HTTP(S) into the models directory.

`pull` streams a file into ``<name>.part`` beside its final place, resumes an
interrupted download with an HTTP range request, verifies the SHA-256 and the
GGUF magic, and installs the file with an atomic rename. `pull_with_progress`
wraps it for the CLI with a rich progress bar.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Final, TypeAlias
from urllib.parse import unquote, urlsplit

import aiohttp
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from ark.errors import ArkError

__all__ = ["ProgressCallback", "PullError", "PullResult", "pull", "pull_with_progress", "target_name"]

ProgressCallback: TypeAlias = Callable[[int, int | None], None]

GGUF_MAGIC: Final = b"GGUF"
GGUF_SUFFIX: Final = ".gguf"
_HASH_BLOCK: Final = 1 << 20
_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE: Final = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE: Final = re.compile(r"bytes \*/(\d+)")
# Byte offsets only mean something on the raw representation, so never let a
# server or aiohttp compress the stream underneath a resumable download.
_BASE_HEADERS: Final = {"Accept-Encoding": "identity", "User-Agent": "ark-pull"}


@dataclass(frozen=True)
class PullResult:
    """A model file installed in the models directory."""

    path: Path
    size: int
    sha256: str
    # Bytes kept from an earlier attempt (0 for a fresh download, the whole
    # size when the file was already installed or already fully downloaded).
    resumed_from: int


class PullError(ArkError):
    """A pull failed; the message is meant for the operator."""


def target_name(url: str, name: str | None = None) -> str:
    """Validate `url` and return the file name the model will be installed as."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PullError(f"only http:// and https:// URLs can be pulled, not {url!r}")
    candidate = name if name is not None else unquote(parts.path.rsplit("/", 1)[-1])
    _check_file_name(candidate)
    return candidate


def _check_file_name(name: str) -> None:
    if not name:
        raise PullError("the model file name is empty; pass a name ending in .gguf")
    unsafe = any(ch in "/\\" or ord(ch) < 0x20 for ch in name) or ".." in name or name.startswith(".")
    if unsafe or Path(name).name != name:
        raise PullError(f"refusing model file name {name!r}: it must be a plain file name")
    if not name.endswith(GGUF_SUFFIX):
        raise PullError(f"refusing model file name {name!r}: only .gguf files can be pulled")


def _normalise_digest(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    digest = sha256.strip().lower()
    if not _SHA256_HEX.fullmatch(digest):
        raise PullError(f"expected sha256 must be 64 hex digits, got {sha256!r}")
    return digest


@dataclass(frozen=True)
class _Staging:
    """Where a download lives until it is verified and installed."""

    final: Path

    @property
    def part(self) -> Path:
        return self.final.with_name(self.final.name + ".part")

    @property
    def meta(self) -> Path:
        return self.final.with_name(self.final.name + ".part.json")

    def discard(self) -> None:
        self.part.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)


@dataclass(frozen=True)
class _Meta:
    """The sidecar that makes a .part resumable: what it is a prefix of."""

    url: str
    validator: str | None
    total: int | None

    @classmethod
    def load(cls, path: Path) -> _Meta | None:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            url, validator, total = raw["url"], raw["validator"], raw["total"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not isinstance(url, str) or not isinstance(validator, str | None) or not isinstance(total, int | None):
            return None
        return cls(url=url, validator=validator, total=total)

    @classmethod
    def from_response(cls, url: str, resp: aiohttp.ClientResponse, total: int | None) -> _Meta:
        etag = resp.headers.get("ETag")
        # If-Range only accepts strong validators; a weak ETag would make every
        # resume restart, while Last-Modified still works.
        validator = etag if etag and not etag.startswith("W/") else resp.headers.get("Last-Modified")
        return cls(url=url, validator=validator, total=total)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)), encoding="utf-8")


@dataclass(frozen=True)
class _Plan:
    """How to treat a response: the body starts at `start` of a `total`-byte file."""

    start: int
    total: int | None
    has_body: bool = True


@dataclass(frozen=True)
class _Settings:
    url: str
    chunk_size: int
    timeout: aiohttp.ClientTimeout
    progress: ProgressCallback | None


def _file_sha256(path: Path, limit: int | None = None) -> hashlib._Hash:
    """Hash the first `limit` bytes of `path` (all of it when None)."""
    hasher = hashlib.sha256()
    remaining = path.stat().st_size if limit is None else limit
    with path.open("rb") as f:
        while remaining > 0:
            block = f.read(min(_HASH_BLOCK, remaining))
            if not block:
                break
            hasher.update(block)
            remaining -= len(block)
    return hasher


def _has_gguf_magic(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(len(GGUF_MAGIC)) == GGUF_MAGIC


@contextmanager
def _open_part(path: Path, start: int) -> Iterator[IO[bytes]]:
    """Open the .part for writing at `start`, dropping anything after it."""
    with path.open("r+b" if path.exists() else "wb") as f:
        f.truncate(start)
        f.seek(start)
        yield f


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _already_installed(final: Path, expected: str | None) -> PullResult | None:
    if not final.is_file():
        return None
    digest = _file_sha256(final).hexdigest()
    if expected is not None and digest != expected:
        return None
    size = final.stat().st_size
    return PullResult(path=final, size=size, sha256=digest, resumed_from=size)


def _resume_point(staging: _Staging, url: str) -> tuple[_Meta | None, int]:
    """The sidecar and .part size to resume from, or (None, 0) after clearing leftovers."""
    meta = _Meta.load(staging.meta)
    offset = staging.part.stat().st_size if staging.part.is_file() else 0
    if meta is None or meta.url != url or offset == 0:
        staging.discard()
        return None, 0
    return meta, offset


async def _request(
    session: aiohttp.ClientSession, settings: _Settings, headers: dict[str, str]
) -> aiohttp.ClientResponse:
    try:
        return await session.get(settings.url, headers=headers, timeout=settings.timeout, auto_decompress=False)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise PullError(f"cannot download {settings.url}: {_describe(exc)}") from exc


def _resume_headers(offset: int, meta: _Meta | None) -> dict[str, str]:
    headers = dict(_BASE_HEADERS)
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
        if meta is not None and meta.validator:
            headers["If-Range"] = meta.validator
    return headers


def _plan(resp: aiohttp.ClientResponse, offset: int, meta: _Meta | None, url: str) -> _Plan | None:
    """Decide how to use a response; None means the .part is useless: restart."""
    if resp.status == 200:
        return _Plan(start=0, total=resp.content_length)
    if resp.status == 206 and offset > 0:
        return _plan_partial(resp.headers.get("Content-Range", ""), offset, meta)
    if resp.status == 416 and offset > 0:
        match = _UNSATISFIED_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
        if match and int(match[1]) == offset:
            return _Plan(start=offset, total=offset, has_body=False)
        return None
    raise PullError(f"{url} answered HTTP {resp.status} {resp.reason or ''}".rstrip())


def _plan_partial(content_range: str, offset: int, meta: _Meta | None) -> _Plan | None:
    match = _CONTENT_RANGE.fullmatch(content_range)
    if not match or int(match[1]) != offset:
        return None
    total = None if match[3] == "*" else int(match[3])
    if meta is not None and meta.total is not None and total is not None and total != meta.total:
        return None
    return _Plan(start=offset, total=total)


async def _stream(
    resp: aiohttp.ClientResponse, part: Path, plan: _Plan, hasher: hashlib._Hash, settings: _Settings
) -> int:
    """Append the response body to the .part from `plan.start`; return the final size."""
    done = plan.start
    if settings.progress is not None:
        settings.progress(done, plan.total)
    with _open_part(part, plan.start) as out:
        try:
            async for chunk in resp.content.iter_chunked(settings.chunk_size):
                out.write(chunk)
                hasher.update(chunk)
                done += len(chunk)
                if settings.progress is not None:
                    settings.progress(done, plan.total)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise PullError(
                f"download of {settings.url} broke off after {done} bytes ({_describe(exc)}); "
                "run the pull again to resume"
            ) from exc
        out.flush()
        os.fsync(out.fileno())
    if plan.total is not None and done != plan.total:
        raise PullError(f"download of {settings.url} ended at {done} of {plan.total} bytes; run it again")
    return done


async def _download(session: aiohttp.ClientSession, staging: _Staging, settings: _Settings) -> tuple[_Plan, int, str]:
    """Fetch into the .part, resuming if possible; return (plan, size, sha256 hex)."""
    meta, offset = _resume_point(staging, settings.url)
    # Two rounds at most: a resume the server cannot honour falls back to one fresh request.
    for _ in range(2):
        hasher = await asyncio.to_thread(_file_sha256, staging.part, offset) if offset else hashlib.sha256()
        async with await _request(session, settings, _resume_headers(offset, meta)) as resp:
            plan = _plan(resp, offset, meta, settings.url)
            if plan is None:
                staging.discard()
                meta, offset = None, 0
                continue
            if plan.start == 0:
                hasher = hashlib.sha256()
                _Meta.from_response(settings.url, resp, plan.total).save(staging.meta)
            size = await _stream(resp, staging.part, plan, hasher, settings) if plan.has_body else offset
            return plan, size, hasher.hexdigest()
    raise PullError(f"{settings.url} refused to serve the file from the start")


def _install(staging: _Staging, size: int, digest: str, expected: str | None, resumed_from: int) -> PullResult:
    if expected is not None and digest != expected:
        staging.discard()
        raise PullError(
            f"sha256 mismatch for {staging.final.name}: expected {expected}, got {digest}; the download was discarded"
        )
    if not _has_gguf_magic(staging.part):
        staging.discard()
        raise PullError(f"{staging.final.name} is not a GGUF file (no GGUF magic); the download was discarded")
    os.replace(staging.part, staging.final)
    staging.meta.unlink(missing_ok=True)
    return PullResult(path=staging.final, size=size, sha256=digest, resumed_from=resumed_from)


async def pull(
    url: str,
    models_dir: Path,
    *,
    sha256: str | None = None,
    name: str | None = None,
    progress: ProgressCallback | None = None,
    session: aiohttp.ClientSession | None = None,
    chunk_size: int = 1 << 20,
    timeout: float = 30.0,  # noqa: ASYNC109 - per connect/read, which asyncio.timeout cannot express
) -> PullResult:
    """Download the GGUF file at `url` into `models_dir` and return where it landed.

    `name` overrides the file name taken from the URL. `sha256`, when given, must
    match the downloaded file. `timeout` bounds connecting and each read, not the
    whole transfer. A broken-off download leaves ``<name>.part`` behind and the
    next call resumes it. Raises PullError with an operator-facing message.
    """
    staging = _Staging(Path(models_dir) / target_name(url, name))
    expected = _normalise_digest(sha256)
    settings = _Settings(
        url=url,
        chunk_size=chunk_size,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
        progress=progress,
    )
    try:
        return await _pull(staging, expected, settings, session)
    except OSError as exc:
        # Network OSErrors are already PullErrors by now: this is the local disk.
        raise PullError(f"cannot store {staging.final}: {_describe(exc)}") from exc


async def _pull(
    staging: _Staging, expected: str | None, settings: _Settings, session: aiohttp.ClientSession | None
) -> PullResult:
    staging.final.parent.mkdir(parents=True, exist_ok=True)
    installed = await asyncio.to_thread(_already_installed, staging.final, expected)
    if installed is not None:
        return installed
    client = session if session is not None else aiohttp.ClientSession()
    try:
        plan, size, digest = await _download(client, staging, settings)
    finally:
        if session is None:
            await client.close()
    return _install(staging, size, digest, expected, plan.start)


def transfer_bar(console: Console | None = None, *, transient: bool = False) -> Progress:
    """A progress bar for bytes moved: name, bar, bytes, speed, time left (pulls, backups)."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    return Progress(*columns, console=console, transient=transient)


def pull_with_progress(
    url: str,
    models_dir: Path,
    *,
    sha256: str | None = None,
    name: str | None = None,
    console: Console | None = None,
) -> PullResult:
    """Sync wrapper for the CLI: rich progress bar (bytes, speed, ETA) driven by `pull`."""
    label = target_name(url, name)
    with transfer_bar(console) as bar:
        task = bar.add_task(label, total=None)
        report = _progress_reporter(bar, task)
        return asyncio.run(pull(url, models_dir, sha256=sha256, name=name, progress=report))


def _progress_reporter(bar: Progress, task: TaskID) -> ProgressCallback:
    started = False

    def report(done: int, total: int | None) -> None:
        nonlocal started
        if not started:
            # Start from the resumed offset so bytes already on disk do not count as speed.
            bar.reset(task, total=total, completed=done)
            started = True
        else:
            bar.update(task, total=total, completed=done)

    return report
