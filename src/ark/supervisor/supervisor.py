"""The supervisor: one asyncio task per child watches it and restarts it; see the package's docstring."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import aiohttp

from ark.errors import ArkError

log = logging.getLogger("ark.supervisor")

MAX_BACKOFF_S = 60.0  # the longest pause between two restarts of a crashing child
STABLE_S = 60.0  # a child that ran this long before it died starts again from the shortest pause
_POLL_S = 0.1  # how often a starting child's health check is tried
_PAUSES_KEPT = 16
_LOG_TAIL = 2000  # bytes of a failed child's log quoted in the error
_BASE_ENV = frozenset({"PATH", "HOME", "USER", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR"})


class StartFailed(ArkError):
    """A child exited, or never became healthy, while it was being started."""


@dataclass(frozen=True)
class Health:
    """How to tell that a child serves: an HTTP GET answered 2xx (``url``), or a TCP port accepting."""

    url: str | None = None
    tcp: tuple[str, int] | None = None
    timeout_s: float = 30.0  # how long a start may take before the child counts as failed

    async def check(self) -> bool:
        try:
            if self.url is not None:
                async with (
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
                    session.get(self.url) as response,
                ):
                    return 200 <= response.status < 300
            if self.tcp is not None:
                async with asyncio.timeout(2):
                    _, writer = await asyncio.open_connection(*self.tcp)
                writer.close()
                return True
        except (OSError, aiohttp.ClientError, TimeoutError):
            return False
        return True  # nothing to check: running is enough


@dataclass(frozen=True)
class ServiceSpec:
    name: str  # also the log file's name: letters, digits, "-" and "_"
    argv: Sequence[str]
    health: Health | None = None
    env: Mapping[str, str] | None = None  # added to ARK's own environment
    cwd: Path | None = None
    grace_s: float = 10.0  # from SIGTERM to SIGKILL
    # False: only PATH, HOME, locale and temp of ARK's environment, then ``env`` (a third-party service that
    # must see neither ARK's secrets, ARK_MASTER_KEY..., nor stray settings of its own in ARK's environment)
    inherit_env: bool = True

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_" for c in self.name):
            raise ValueError(f"service name {self.name!r}: letters, digits, '-' and '_' only")
        if not self.argv:
            raise ValueError(f"service {self.name}: no command")


@dataclass(eq=False)
class Supervised:
    """One child and what is known of it; ``describe()`` is what `ark status` shows."""

    spec: ServiceSpec
    log_path: Path
    state: str = "starting"  # starting, running, backoff, stopped, failed
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    restarts: int = 0
    last_exit: int | None = None
    backoff: float = 0.0
    pauses: list[float] = field(default_factory=list)  # the latest pauses before restarts (at most _PAUSES_KEPT)
    stopping: bool = False
    watcher: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "state": self.state,
            "pid": self.pid if self.state in ("starting", "running") else None,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "uptime_s": round(time.monotonic() - self.started_at, 1) if self.state == "running" else None,
            "log": str(self.log_path),
        }


class Supervisor:
    def __init__(
        self,
        logs_dir: Path,
        *,
        backoff_s: float = 1.0,
        max_backoff_s: float = MAX_BACKOFF_S,
        stable_s: float = STABLE_S,
    ) -> None:
        self.logs_dir = logs_dir
        self.backoff_s, self.max_backoff_s, self.stable_s = backoff_s, max_backoff_s, stable_s
        self.services: dict[str, Supervised] = {}
        setpriv = shutil.which("setpriv")  # util-linux: the kernel signals the child if ARK dies
        self._prefix = (setpriv, "--pdeathsig", "TERM", "--") if setpriv else ()

    async def start(self, spec: ServiceSpec) -> Supervised:
        """Launch ``spec`` and return once its health check passes; StartFailed (and nothing left
        running) when it exits or stays unhealthy past ``health.timeout_s``."""
        if spec.name in self.services:
            raise ValueError(f"service {spec.name} is already supervised")
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        service = Supervised(spec, self.logs_dir / f"{spec.name}.log", backoff=self.backoff_s)
        try:
            await self._launch(service)
            await self._until_healthy(service)
        except BaseException:
            await self._terminate(service)
            service.state = "failed"
            raise
        self.services[spec.name] = service
        service.watcher = asyncio.create_task(self._watch(service), name=f"ark-supervise-{spec.name}")
        return service

    def status(self) -> list[dict[str, Any]]:
        return [s.describe() for s in self.services.values()]

    async def stop(self, name: str) -> None:
        service = self.services.pop(name)
        await self._terminate(service)

    async def close(self) -> None:
        """Stop every child, all at once (each gets its grace period)."""
        services, self.services = list(self.services.values()), {}
        await asyncio.gather(*(self._terminate(s) for s in services))

    # -- one child ----------------------------------------------------------------------------------
    async def _launch(self, service: Supervised) -> None:
        spec = service.spec
        base = os.environ if spec.inherit_env else {k: v for k, v in os.environ.items() if k in _BASE_ENV}
        env = {**base, **(spec.env or {})}
        if shutil.which(spec.argv[0], path=env.get("PATH")) is None:  # setpriv would exec it: say it here
            raise StartFailed(f"{spec.name}: could not start {spec.argv[0]}: not found or not executable")
        with service.log_path.open("ab") as out:
            _stamp(out, f"starting {' '.join(spec.argv)}")
            try:
                service.process = await asyncio.create_subprocess_exec(
                    *self._prefix,
                    *spec.argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    cwd=spec.cwd,
                    env=env,
                    start_new_session=True,  # its own process group: its children are stopped with it
                )
            except OSError as exc:
                _stamp(out, f"could not start: {exc}")
                raise StartFailed(f"{spec.name}: could not start {spec.argv[0]}: {exc}") from exc
        if self._prefix:  # the death signal is armed by setpriv just before it becomes the program: wait for that
            await _armed(service.process.pid, self._prefix[0])
        service.state, service.started_at = "starting", time.monotonic()
        log.info("supervisor: %s started (pid %d)", spec.name, service.process.pid)

    async def _until_healthy(self, service: Supervised) -> None:
        spec, process = service.spec, service.process
        assert process is not None
        deadline = time.monotonic() + (spec.health.timeout_s if spec.health else 0.0)
        while True:
            if process.returncode is not None:
                service.last_exit = process.returncode
                raise StartFailed(
                    f"{spec.name} exited with {process.returncode} while starting; its log ends:\n"
                    + _tail(service.log_path)
                )
            if spec.health is None or await spec.health.check():
                service.state = "running"
                return
            if time.monotonic() >= deadline:
                raise StartFailed(
                    f"{spec.name} did not become healthy in {spec.health.timeout_s:g} s; its log ends:\n"
                    + _tail(service.log_path)
                )
            await asyncio.sleep(_POLL_S)

    async def _watch(self, service: Supervised) -> None:
        """Wait for the child to die; unless it is being stopped, start it again after a pause."""
        while True:
            process = service.process
            assert process is not None
            code = await process.wait()
            if service.stopping:
                return
            await _kill_group(process.pid)  # what it left behind must not hold its port
            service.last_exit, service.state = code, "backoff"
            if time.monotonic() - service.started_at >= self.stable_s:
                service.backoff = self.backoff_s
            pause = service.backoff
            service.backoff = min(service.backoff * 2, self.max_backoff_s)
            service.pauses = [*service.pauses[-(_PAUSES_KEPT - 1) :], pause]
            log.warning("supervisor: %s exited with %s; starting it again in %.1f s", service.spec.name, code, pause)
            await asyncio.sleep(pause)
            try:
                await self._launch(service)
                service.restarts += 1
                await self._until_healthy(service)
            except StartFailed as exc:
                log.error("supervisor: %s", exc)
                if service.process is not None and service.process.returncode is None:
                    await _stop_process(service.process, service.spec.grace_s)

    async def _terminate(self, service: Supervised) -> None:
        service.stopping = True
        if service.watcher is not None:
            service.watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await service.watcher
        if service.process is not None:
            await _stop_process(service.process, service.spec.grace_s)
            service.last_exit = service.process.returncode
            log.info("supervisor: %s stopped (%s)", service.spec.name, service.last_exit)
        service.state = "stopped"


async def _stop_process(process: asyncio.subprocess.Process, grace_s: float) -> None:
    """SIGTERM to the child's process group, SIGKILL when it has not gone after ``grace_s``."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(grace_s):
                await process.wait()
        except TimeoutError:
            log.warning("supervisor: pid %d ignored SIGTERM for %.0f s: killing it", process.pid, grace_s)
    await _kill_group(process.pid)
    await process.wait()


async def _kill_group(pgid: int) -> None:
    """SIGKILL whatever is left in the process group (a child's own children)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _stamp(out: IO[bytes], text: str) -> None:
    out.write(f"--- {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} ark supervisor: {text}\n".encode())
    out.flush()


def _tail(path: Path) -> str:
    return log_tail(path, _LOG_TAIL) or "(no log)"


def log_tail(path: Path, max_bytes: int, *, whole_lines: bool = False) -> str:
    """The last ``max_bytes`` of a service's log as text (bad UTF-8 replaced); "" when there is none.
    ``whole_lines``: without the first line when the read began inside it."""
    try:
        with path.open("rb") as f:
            start = max(0, os.fstat(f.fileno()).st_size - max_bytes)
            f.seek(start)
            data = f.read(max_bytes)
    except OSError:
        return ""
    if whole_lines and start > 0:
        data = data.partition(b"\n")[2]
    return data.decode(errors="replace")


async def _armed(pid: int, setpriv: str, timeout_s: float = 5.0) -> None:
    """Until ``pid`` is no longer setpriv (it has armed the death signal and exec'd the program), or is gone.

    Until then, an ARK killed at once would leave the child running: setpriv had not yet asked the kernel to
    signal it. A few milliseconds at most, more on a loaded machine."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            first = _program(pid)
        except OSError:  # exited already (the health check says why), or no /proc here
            return
        if first and first != setpriv:
            return
        await asyncio.sleep(0.002)


def _program(pid: int) -> str:
    """The first word of a process's command line (a read of /proc: memory, it never waits on a disk)."""
    return os.fsdecode(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0])
