"""Copies of backups in an S3-compatible store (``[backup] s3_*``): AWS S3, MinIO, Garage, Ceph...

An archive goes to ``s3://BUCKET/PREFIX/<its name>`` through boto3's transfer manager (in parts when it is
big), each part sent with its SHA-256 (``x-amz-checksum-sha256``: the store refuses a part that arrived
changed). The whole file's SHA-256 goes along as the object's metadata; once uploaded, the object's size and
the checksum the store reports are compared with the file's, and a copy that does not match is deleted and
reported. A download is checked against that metadata before it is unpacked, and then exactly like a local
archive (:func:`ark.backup.archive.stage`).

boto3 is imported only here and only when a copy is made or read: ``ark`` starts without it. Every foreign
exception becomes an :class:`S3Error` in one place (:func:`_mapped`), the secret key scrubbed from it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ark.backup import archive
from ark.backup.crypto import BackupError
from ark.config import Settings
from ark.config.types import Secret

PART = 64 << 20  # bytes per part, and the size from which an archive goes in parts
SCHEME = "s3://"
_SHA_META = "sha256"  # x-amz-meta-sha256: the whole file's SHA-256, hex
_CHUNK = 1 << 20
_SPARE = 64 << 20
Progress = Callable[[int], None]
_NO_SECRET = Secret("")


class S3Error(BackupError):
    """A copy in the S3 store could not be made, listed, read or deleted; the local archive is untouched."""


@dataclass(frozen=True)
class Remote:
    """``[backup] s3_*`` as read once: where the copies go and the credentials that reach them."""

    bucket: str
    prefix: str = ""  # without slashes at either end
    endpoint: str = ""  # empty: AWS
    region: str = "us-east-1"
    access_key_id: str = ""  # empty: boto3's own search (AWS_* variables, ~/.aws, an instance role)
    secret: Secret = _NO_SECRET
    keep: int = 7

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def url(self, key: str, bucket: str | None = None) -> str:
        return f"{SCHEME}{bucket or self.bucket}/{key}"


@dataclass(frozen=True)
class Copy:
    """An archive in the bucket."""

    bucket: str
    key: str
    size: int

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def url(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"


def read_secret(path: Path) -> Secret:
    """The secret access key: the first line of a file only its owner may read."""
    try:
        info = path.stat()
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise S3Error(
            f"cannot read the S3 secret key from {path} ([backup] s3_secret_access_key_file): {exc}"
        ) from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise S3Error(
            f"{path}: other users may read the S3 secret key (mode {stat.S_IMODE(info.st_mode):o}); "
            f"run `chmod 600 {path}`"
        )
    lines = text.splitlines()
    secret = lines[0].strip() if lines else ""
    if not secret:
        raise S3Error(f"{path} is empty: it should hold the S3 secret access key")
    return Secret(secret)


def remote_of(settings: Settings) -> Remote | None:
    """The store the copies go to; None when ``[backup] s3_bucket`` is empty."""
    conf = settings.backup
    if not conf.s3_bucket.strip():
        return None
    endpoint = conf.s3_endpoint.strip().rstrip("/")
    parts = urlsplit(endpoint)
    if endpoint and (parts.scheme not in ("http", "https") or not parts.hostname):
        raise S3Error(f"[backup] s3_endpoint = {endpoint!r}: expected an http(s) URL, or empty for AWS")
    if conf.s3_access_key_id and not conf.s3_secret_access_key_file:
        raise S3Error("[backup] s3_access_key_id is set but s3_secret_access_key_file is not: name the file")
    if conf.s3_secret_access_key_file and not conf.s3_access_key_id:
        raise S3Error("[backup] s3_secret_access_key_file is set but s3_access_key_id is not: set it")
    secret = read_secret(Path(conf.s3_secret_access_key_file).expanduser()) if conf.s3_access_key_id else Secret("")
    return Remote(
        bucket=conf.s3_bucket.strip(),
        prefix=conf.s3_prefix.strip("/ "),
        endpoint=endpoint,
        region=conf.s3_region.strip() or "us-east-1",
        access_key_id=conf.s3_access_key_id.strip(),
        secret=secret,
        keep=conf.s3_keep or conf.keep,
    )


def location(text: str) -> tuple[str, str] | None:
    """``s3://BUCKET/KEY`` as (bucket, key); None for anything else."""
    if not text.startswith(SCHEME):
        return None
    bucket, _, key = text[len(SCHEME) :].partition("/")
    if not bucket or not key or key.endswith("/"):
        raise S3Error(f"{text}: expected s3://BUCKET/KEY, the key naming one archive")
    return bucket, key


def expected_checksum(path: Path, part: int | None) -> tuple[str, str]:
    """The file's SHA-256 (hex), and the checksum an S3 store reports for it (base64): the SHA-256 of the
    whole for a single upload, the SHA-256 of the parts' SHA-256s one after another when sent in parts."""
    whole = hashlib.sha256()
    digests: list[bytes] = []
    with path.open("rb") as handle:
        while True:
            piece, got = hashlib.sha256(), 0
            while (part is None or got < part) and (
                chunk := handle.read(_CHUNK if part is None else min(_CHUNK, part - got))
            ):
                whole.update(chunk)
                piece.update(chunk)
                got += len(chunk)
            if part is None or not got:
                break
            digests.append(piece.digest())
    reported = whole.digest() if part is None else hashlib.sha256(b"".join(digests)).digest()
    return whole.hexdigest(), base64.b64encode(reported).decode()


def mismatch(head: dict[str, Any], *, size: int, sha256: str, checksum: str) -> str:
    """How an uploaded object (HeadObject's answer) differs from the file it copies; empty: it does not.
    A store that reports no checksum of its own (some S3-compatible ones) is held to the size and the
    recorded SHA-256."""
    stored = int(head.get("ContentLength", -1))
    reported = str(head.get("ChecksumSHA256") or "").split("-", 1)[0]  # AWS adds "-PARTS" after parts
    recorded = (head.get("Metadata") or {}).get(_SHA_META)
    if stored != size:
        return f"it holds {stored} bytes, not {size}"
    if reported and reported != checksum:
        return f"the store's checksum is {reported}, not {checksum}"
    if recorded != sha256:
        return f"its recorded SHA-256 is {recorded}, not {sha256}"
    return ""


class Bucket:
    """The copies in one store; every call blocks (the component runs them with ``asyncio.to_thread``)."""

    def __init__(self, remote: Remote, *, part: int = PART, client: Any = None) -> None:
        self.remote = remote
        self.part = part
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        import boto3  # type: ignore[import-untyped]
        from botocore.config import Config  # type: ignore[import-untyped]

        remote = self.remote
        session = boto3.session.Session(
            aws_access_key_id=remote.access_key_id or None,
            aws_secret_access_key=remote.secret.value or None,
            region_name=remote.region,
        )
        config = Config(
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=10,
            read_timeout=120,
            # a store of one's own is reached by path (s3.example.org/BUCKET): no DNS name per bucket
            s3={"addressing_style": "path" if remote.endpoint else "auto"},
        )
        with _mapped(remote, "cannot reach the S3 store"):
            return session.client("s3", endpoint_url=remote.endpoint or None, config=config)

    def _transfer(self, start: Callable[[Any], Any]) -> None:
        """One transfer of boto3's transfer manager (``start(manager)`` begins it and returns its future), to
        its end; cancelled (by :func:`_watch`, once its stop is set), it gives up the parts sent so far."""
        from s3transfer.exceptions import CancelledError  # type: ignore[import-untyped]
        from s3transfer.manager import TransferConfig, TransferManager  # type: ignore[import-untyped]

        config = TransferConfig(multipart_threshold=self.part, multipart_chunksize=self.part, max_request_concurrency=4)
        with TransferManager(self.client, config) as manager:
            try:
                start(manager).result()
            except CancelledError:
                raise S3Error("the transfer was stopped (ARK is stopping)") from None

    def _part_size(self, size: int) -> int | None:
        """The part size the transfer manager sends ``size`` bytes in; None: in one piece."""
        if size < self.part:
            return None
        from s3transfer.utils import ChunksizeAdjuster  # type: ignore[import-untyped]

        return int(ChunksizeAdjuster().adjust_chunksize(self.part, size))

    # -- copies ------------------------------------------------------------------------------------
    def upload(self, path: Path, *, progress: Progress | None = None, stop: threading.Event | None = None) -> Copy:
        """Copy ``path`` to the bucket under its name and check the copy (size and checksum)."""
        with _mapped(self.remote, f"cannot read {path}"):  # gone or unreadable: a failed copy, reported as one
            size = path.stat().st_size
            sha, reported = expected_checksum(path, self._part_size(size))
        if stop is not None and stop.is_set():  # while the (big) file was read
            raise S3Error("the transfer was stopped (ARK is stopping)")
        key = self.remote.key(path.name)
        url = self.remote.url(key)

        extra = {"ChecksumAlgorithm": "SHA256", "Metadata": {_SHA_META: sha}}
        watch = [_watch(progress, stop)]
        with _mapped(self.remote, f"cannot upload {path.name} to {url}"):
            self._transfer(lambda manager: manager.upload(str(path), self.remote.bucket, key, extra, watch))
            head = self.client.head_object(Bucket=self.remote.bucket, Key=key, ChecksumMode="ENABLED")
        why = mismatch(head, size=size, sha256=sha, checksum=reported)
        if why:
            self._delete_quietly(key)
            raise S3Error(f"the copy of {path.name} at {url} does not match the archive ({why}): deleted")
        return Copy(self.remote.bucket, key, size)

    def copies(self) -> list[Copy]:
        """ARK's archives in the bucket under the prefix, oldest first (by name: a copy keeps it)."""
        prefix = self.remote.key("")
        found: list[Copy] = []
        with _mapped(self.remote, f"cannot list {self.remote.url(prefix)}"):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.remote.bucket, Prefix=prefix)
            for page in pages:
                for item in page.get("Contents") or []:
                    key = str(item["Key"])
                    if archive.is_backup_name(key[len(prefix) :]):
                        found.append(Copy(self.remote.bucket, key, int(item.get("Size", 0))))
        return sorted(found, key=lambda c: c.name)

    def prune(self, keep: int, *, spare: str | None = None) -> list[Copy]:
        """Delete all but the newest ``keep`` copies, never the key ``spare`` (the one just made)."""
        found = [c for c in self.copies() if c.key != spare]
        gone = found[: max(0, len(found) - max(0, keep - (1 if spare is not None else 0)))]
        for copy in gone:
            with _mapped(self.remote, f"cannot delete the older copy {copy.url}"):
                self.client.delete_object(Bucket=copy.bucket, Key=copy.key)
        return gone

    def download(self, bucket: str, key: str, into: Path, *, progress: Progress | None = None) -> Path:
        """Fetch ``s3://bucket/key`` into the folder ``into``; checked against the SHA-256 it was uploaded with.
        A download that does not match is deleted and refused."""
        url = self.remote.url(key, bucket)
        # the key's last part names the file only when it is an archive's name: a key is anyone's text ("x/..",
        # 1,000 characters, a NUL), and a file name of it could fail or point outside ``into``
        name = key.rsplit("/", 1)[-1]
        name = name if archive.is_backup_name(name) else "archive.tar.gz"
        with _mapped(self.remote, f"cannot read {url}"):
            head = self.client.head_object(Bucket=bucket, Key=key)
        size = int(head.get("ContentLength", 0))
        free = shutil.disk_usage(into).free
        if size > free - _SPARE:
            raise S3Error(
                f"not enough space in {into} to download {url} ({size / 2**20:.0f} MiB, "
                f"{max(0, free) / 2**20:.0f} MiB free): nothing was changed"
            )
        target = into / name
        try:
            with _mapped(self.remote, f"cannot download {url}"):
                watch = [_watch(progress, None)]
                self._transfer(lambda manager: manager.download(bucket, key, str(target), None, watch))
            os.chmod(target, 0o600)
            sha = archive.file_sha256(target)
            meta = (head.get("Metadata") or {}).get(_SHA_META)
            if target.stat().st_size != size or (meta is not None and meta != sha):
                raise S3Error(
                    f"{url} does not match the checksum it was uploaded with: the copy is damaged, nothing was changed"
                )
        except BaseException:
            with contextlib.suppress(OSError):  # what failed is what is reported
                target.unlink(missing_ok=True)
            raise
        return target

    def _delete_quietly(self, key: str) -> None:
        # the mismatch is what is reported; a copy this fails to delete does not match either, next time
        with contextlib.suppress(Exception):
            self.client.delete_object(Bucket=self.remote.bucket, Key=key)


def _watch(progress: Progress | None, stop: threading.Event | None) -> Any:
    """A subscriber of the transfer manager: reports the bytes moved, cancels the transfer once ``stop`` is
    set (raising in its thread instead would leave a file open in s3transfer)."""
    from s3transfer.subscribers import BaseSubscriber  # type: ignore[import-untyped]

    class Watch(BaseSubscriber):  # type: ignore[misc]
        def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
            if stop is not None and stop.is_set():
                future.cancel()
            elif progress is not None:
                progress(bytes_transferred)

    return Watch()


def open_bucket(settings: Settings) -> Bucket | None:
    """The settings' bucket; None without ``[backup] s3_bucket``."""
    remote = remote_of(settings)
    return Bucket(remote) if remote is not None else None


@dataclass(frozen=True)
class Pushed:
    """An archive copied to the bucket, and the older copies deleted after it."""

    copy: Copy
    pruned: list[Copy]
    prune_failed: str = ""  # why older copies could not be deleted (the new copy is in place)


def push(
    bucket: Bucket, path: Path, *, progress: Progress | None = None, stop: threading.Event | None = None
) -> Pushed:
    """Upload an archive just made, then prune the bucket to ``[backup] s3_keep`` (never the new copy)."""
    copy = bucket.upload(path, progress=progress, stop=stop)
    try:
        return Pushed(copy, bucket.prune(bucket.remote.keep, spare=copy.key))
    except S3Error as exc:
        return Pushed(copy, [], str(exc))


# -- foreign errors, in one place ------------------------------------------------------------------------
_CREDENTIALS = {"SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidClientTokenId"}


def _explain(remote: Remote, exc: BaseException) -> str:
    from botocore.exceptions import (  # type: ignore[import-untyped]
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
    )

    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ClientError):  # boto3 wraps an upload's in S3UploadFailedError
        cause = cause.__cause__ or cause.__context__
    where = remote.endpoint or "AWS S3"
    if isinstance(cause, ClientError):
        error = cause.response.get("Error") or {}
        code, message = str(error.get("Code") or ""), str(error.get("Message") or cause)
        if code == "AuthorizationHeaderMalformed":  # what a store says when s3_region is not its own
            return f"{where} refused the request's signature ({code}): check [backup] s3_region: {message}"
        if code in _CREDENTIALS:
            return (
                f"{where} refused the credentials ({code}): check [backup] s3_access_key_id and the secret key in "
                "s3_secret_access_key_file"
            )
        if code == "NoSuchBucket":
            return f"{where} has no bucket {remote.bucket!r} ([backup] s3_bucket)"
        if code in ("AccessDenied", "403"):
            return f"{where} denied access ({code}): the key may not write, read or list that bucket"
        if code in ("NoSuchKey", "404"):
            return "no such object"
        return f"{where} answered {code or 'an error'}: {message}"
    if isinstance(exc, EndpointConnectionError):
        return f"cannot connect to {where}: {exc}"
    if isinstance(exc, NoCredentialsError):
        return "no S3 credentials: set [backup] s3_access_key_id and s3_secret_access_key_file"
    return f"{type(exc).__name__}: {exc}"


@contextmanager
def _mapped(remote: Remote, doing: str) -> Iterator[None]:
    """boto3's, botocore's and the network's exceptions as :class:`S3Error` ("DOING: WHY"), never with the
    secret key in it; S3Error (a check of ours, a stop) passes as it is."""
    try:
        yield
    except S3Error:
        raise
    except Exception as exc:
        why = _explain(remote, exc)
        if remote.secret.value:
            why = why.replace(remote.secret.value, "**********")
        raise S3Error(f"{doing}: {why}") from None
