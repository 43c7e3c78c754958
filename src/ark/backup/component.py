"""Backups on a schedule (``[backup] every_hours``): `ark up` runs `ark backup` in a process of its own every
so often (the CPU work of compressing stays out of the gateway's process, at low priority), keeps the newest
``[backup] keep``, and says how the last one went: in /admin/services ("backup") and in the metric
``ark_backup_last_success_timestamp_seconds`` that the alert on stale backups reads.

With ``[backup] s3_bucket`` set, each new archive is then copied to that S3 store from here, in a thread
(boto3 blocks), and the bucket pruned to ``[backup] s3_keep``; a copy that fails keeps the archive, is
logged, shows in /admin/services, and leaves ``ark_backup_last_upload_success_timestamp_seconds`` behind."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import orjson
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ark.backup import archive, s3
from ark.backup.crypto import BackupError
from ark.periodic import every
from ark.runtime import Component, Runtime, Status

log = logging.getLogger("ark.backup")
_TIMEOUT_S = 6 * 3600.0  # a backup that takes longer is stuck: stopped, and the next one tries again
_ERROR_TAIL = 500


class Backups(Component):
    name = "backup"

    def __init__(self) -> None:
        self.state: Status | None = None  # no schedule: nothing to show
        self.last_success: float | None = None
        self.last_upload: float | None = None  # the newest copy in the S3 store (None: none known)

    async def start(self, rt: Runtime) -> None:
        settings = rt.settings
        self.rt = rt
        made = archive.backups(settings.backups_dir)
        if made:  # the newest archive's time, from its name, until this process makes one
            self.last_success = archive.made_at(made[-1])
        rt.metrics.registry.register(_Collector(self))
        hours = settings.backup.every_hours
        if hours <= 0:
            return
        self.state = Status("backup", "running", f"every {hours:g} h into {settings.backups_dir}")
        rt.background(self._schedule(hours * 3600.0), "ark-backup")
        if settings.backup.s3_bucket:
            rt.background(self._newest_copy(), "ark-backup-copies")

    async def _schedule(self, interval: float) -> None:
        """The first backup when the newest one is ``interval`` old (an ARK restarted more often than that
        still makes them), then every ``interval``."""
        if self.last_success is not None:
            await asyncio.sleep(max(0.0, self.last_success + interval - time.time()))
        else:
            await asyncio.sleep(min(interval, 60.0))  # none yet: soon, once ARK has settled
        await every(interval, self.run, log=log, failure="backup: failed", at_once=True)

    def argv(self) -> list[str]:
        settings = self.rt.settings
        # the copy to S3 is made here, not by the child (--no-upload), so that it is reported as its own
        argv = [sys.executable, "-m", "ark", "backup", "--data-dir", str(settings.data_dir), "--json", "--no-upload"]
        if settings.config_path is not None:
            argv += ["--config", str(settings.config_path)]
        if settings.backup.passphrase_file:
            argv += ["--passphrase-file", settings.backup.passphrase_file]
        if not settings.backup.media:
            argv.append("--without-media")
        return argv

    async def run(self) -> None:
        started = time.time()
        folder = self.rt.settings.backups_dir
        before = set(folder.glob(".ark-making-*")) if folder.is_dir() else set()
        try:  # a session of its own: stopping it stops what it started too (pg_dump)
            process = await asyncio.create_subprocess_exec(
                *self.argv(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True
            )
        except OSError as exc:
            self.state = Status("backup", "failed", f"the last backup could not start: {exc}")
            raise
        try:
            async with asyncio.timeout(_TIMEOUT_S):
                out, err = await process.communicate()
        except TimeoutError:
            await self._stop(process, before)
            out, err = b"", b"it took longer than 6 hours and was stopped"
        except asyncio.CancelledError:  # ARK is stopping: so does the backup, leaving no half-made archive
            await self._stop(process, before)
            raise
        if process.returncode == 0:
            self.last_success = time.time()
            when = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
            self.state = Status("backup", "running", f"last backup at {when} UTC")
            made = _archive_of(out)
            log.info("backup: made in %.0f s: %s", time.time() - started, made)
            if self.rt.settings.backup.s3_bucket:
                if made is None:  # not what `ark backup --json` prints: nothing to copy, and said so
                    self.state = Status("backup", "failed", "the backup did not say which archive it made", ready=True)
                    log.error("backup: no archive named in its output; no copy to S3: %s", out[:300])
                    return
                await self._copy(made, when)
            return
        why = err.decode(errors="replace").strip()[-_ERROR_TAIL:]
        self.state = Status("backup", "failed", f"the last backup failed: {why}", ready=True)
        log.error("backup: failed: %s", why)

    async def _copy(self, made: Path, when: str) -> None:
        """Copy a new archive to the S3 store and prune the bucket, in a thread; a failure is reported."""
        stop = threading.Event()
        try:
            pushed = await asyncio.to_thread(self._push, made, stop)
        except asyncio.CancelledError:  # ARK is stopping: the transfer stops at its next read
            stop.set()
            raise
        except BackupError as exc:
            why = str(exc)[-_ERROR_TAIL:]
            self.state = Status(
                "backup", "failed", f"the last backup ({made}) is made, but its copy to S3 failed: {why}", ready=True
            )
            log.error("backup: %s is made, but its copy to S3 failed: %s", made, why)
            return
        self.last_upload = time.time()
        self.state = Status("backup", "running", f"last backup at {when} UTC, copied to {pushed.copy.url}")
        log.info("backup: copied to %s; %d older copies deleted", pushed.copy.url, len(pushed.pruned))
        if pushed.prune_failed:
            log.error("backup: older copies in the S3 store could not be deleted: %s", pushed.prune_failed)

    def _push(self, made: Path, stop: threading.Event) -> s3.Pushed:
        bucket = s3.open_bucket(self.rt.settings)  # read each time: a new secret key file needs no restart
        if bucket is None:
            raise BackupError("[backup] s3_bucket is empty")
        return s3.push(bucket, made, stop=stop)

    async def _newest_copy(self) -> None:
        """When the newest copy in the S3 store was made (from its name), until this process uploads one."""

        def newest() -> float | None:
            bucket = s3.open_bucket(self.rt.settings)
            copies = bucket.copies() if bucket is not None else []
            return archive.made_at(Path(copies[-1].name)) if copies else None

        try:
            found = await asyncio.to_thread(newest)
        except BackupError as exc:
            log.warning("backup: cannot list the copies in the S3 store: %s", exc)
            return
        if found is not None and (self.last_upload is None or found > self.last_upload):
            self.last_upload = found

    async def _stop(self, process: asyncio.subprocess.Process, before: set[Path]) -> None:
        """Stop the backup and what it started; remove the working folder it left (only its own)."""
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        folder = self.rt.settings.backups_dir
        await asyncio.to_thread(archive.discard_unfinished, folder, keep=before)

    def status(self) -> list[Status]:
        return [self.state] if self.state is not None else []


class _Collector(Collector):
    def __init__(self, backups: Backups) -> None:
        self._backups = backups

    def collect(self) -> list[Metric]:
        family = GaugeMetricFamily(
            "ark_backup_last_success_timestamp_seconds",
            "When the newest backup in the backups folder was made (Unix time; absent: none yet).",
        )
        if self._backups.last_success is not None:
            family.add_metric([], self._backups.last_success)
        upload = GaugeMetricFamily(
            "ark_backup_last_upload_success_timestamp_seconds",
            "When the newest copy of a backup reached the S3 store (Unix time; absent: none yet, or no store).",
        )
        if self._backups.last_upload is not None:
            upload.add_metric([], self._backups.last_upload)
        return [family, upload]


def _archive_of(out: bytes) -> Path | None:
    """The archive `ark backup --json` made, from what it printed."""
    try:
        made = orjson.loads(out)
    except orjson.JSONDecodeError:
        return None
    path = made.get("archive") if isinstance(made, dict) else None
    return Path(path) if isinstance(path, str) else None
