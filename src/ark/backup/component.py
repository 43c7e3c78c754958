"""Backups on a schedule (``[backup] every_hours``): `ark up` runs `ark backup` in a process of its own every
so often (the CPU work of compressing stays out of the gateway's process, at low priority), keeps the newest
``[backup] keep``, and says how the last one went: in /admin/services ("backup") and in the metric
``ark_backup_last_success_timestamp_seconds`` that the alert on stale backups reads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ark.backup import archive
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
        argv = [sys.executable, "-m", "ark", "backup", "--data-dir", str(settings.data_dir)]
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
            log.info("backup: made in %.0f s: %s", time.time() - started, out.decode(errors="replace").strip()[:300])
            return
        why = err.decode(errors="replace").strip()[-_ERROR_TAIL:]
        self.state = Status("backup", "failed", f"the last backup failed: {why}", ready=True)
        log.error("backup: failed: %s", why)

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
        return [family]
