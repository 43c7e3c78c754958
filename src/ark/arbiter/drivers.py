"""Drivers carry the arbiter's actions out against the engines, and confirm them instead of trusting them.

Ollama (``OllamaDriver``), as its API and ``server/sched.go`` behave:

* load: ``POST /api/generate`` with no prompt loads a model; an embedding model answers 400
  "does not support generate" and is loaded with ``POST /api/embed`` and no input instead. ``keep_alive``
  is -1 (forever): the arbiter, not Ollama's timer, decides when a model goes.
* unload: ``keep_alive: 0`` with no prompt answers at once while the runner is still being torn down,
  so the driver polls ``GET /api/ps`` until the model is gone.
* what a load took: ``/api/ps`` gives ``size`` and ``size_vram``; ``size_vram < size`` means Ollama put
  part of the model on the CPU (it does that silently when VRAM is short). The driver reports the
  VRAM part to the arbiter and remembers the split (``offloaded(model)``).

The embedded llama.cpp engine (``EmbeddedDriver``) runs each model in a worker process: a load starts
the worker and loads the model in it, an unload ends the process (its memory comes back for certain),
both confirmed by what the engine then holds. A worker that dies by itself is reported through
``watch``: the arbiter forgets the model and its memory at once.

Every call has a deadline; a driver that misses one raises :class:`DriverError`. The Ollama driver talks
through its engine's own client (``JsonUpstream``: one connection pool per engine) and reads ``/api/ps``
with the engine's parser (``parse_ps``); given a URL alone (tests, ComfyUI), a driver makes its own client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any, Protocol

import orjson

from ark.arbiter.catalog import Architecture, Facts, gguf_metadata
from ark.engines._http import Endpoint, JsonUpstream
from ark.engines.ollama import Loaded, parse_ps
from ark.errors import ApiError, ArkError

log = logging.getLogger("ark.arbiter")


class DriverError(ArkError):
    """An engine did not carry an action out (load, unload, free, restart), or not within its deadline."""


class Driver(Protocol):
    """Carries actions out against the engines and returns once they are confirmed."""

    async def load(self, model: str) -> int | None:
        """Load ``model``; return the memory the engine reports it took, when it says."""
        ...

    async def unload(self, model: str) -> None: ...

    async def free_comfy(self) -> None: ...

    def offloaded(self, model: str) -> tuple[int, int] | None:
        """(size, bytes on the GPU) when the engine put part of the loaded model on the CPU."""
        ...

    async def heal(self, model: str) -> set[str] | None:
        """None when the engine serving ``model`` answers; else restart it and return the models it had
        (gone with it). Raises DriverError when it cannot be restarted."""
        ...


class EngineDriver(Protocol):
    """What the arbiter needs of one engine: carry out, confirm, probe, restart."""

    name: str
    probe_timeout: float

    async def facts(self, known: Collection[str] = ...) -> dict[str, Facts]: ...

    async def load(self, model: str) -> int | None: ...

    async def unload(self, model: str) -> None: ...

    def offloaded(self, model: str) -> tuple[int, int] | None: ...

    async def alive(self) -> bool: ...

    async def restart(self) -> None: ...

    def watch(self, lost: Callable[[str], None]) -> None:
        """Have ``lost(model)`` called when the engine loses a model by itself (a worker that died)."""
        ...

    async def close(self) -> None: ...


class EmbeddedEngine(Protocol):
    name: str
    on_lost: Callable[[str], None] | None

    async def catalog(self) -> dict[str, Path]: ...

    def loaded_models(self) -> set[str]: ...

    async def load(self, model: str) -> None: ...

    async def unload(self, model: str) -> None: ...


class EmbeddedDriver:
    """llama.cpp in worker processes: a load starts one, an unload ends it, confirmed by what the engine holds.

    The engine answers whenever ARK does (a dead worker is replaced at the next load), so it is never
    "restarted"; a load that fails is the model's fault (a corrupt file, too little memory) or its worker
    died, and its requests get 503.
    """

    probe_timeout = 0.0

    def __init__(self, engine: EmbeddedEngine, *, n_ctx: int, deadline: float = 300.0) -> None:
        self.engine, self.name, self.n_ctx, self.deadline = engine, engine.name, n_ctx, deadline

    async def facts(self, known: Collection[str] = ()) -> dict[str, Facts]:
        """Weights from the file size, architecture from the GGUF header (the weights are not read);
        ``known`` models without their header."""

        def read(path: Path, model: str) -> Facts:
            if model in known:
                return Facts(path.stat().st_size)
            try:
                arch = Architecture.from_metadata(gguf_metadata(path))
            except (OSError, ValueError) as exc:
                log.warning("arbiter: cannot read the GGUF header of %s: %s", path, exc)
                arch = None
            return Facts(path.stat().st_size, arch, self.n_ctx)

        catalog = await self.engine.catalog()
        return {model: await asyncio.to_thread(read, path, model) for model, path in catalog.items()}

    async def load(self, model: str) -> int | None:
        try:
            async with asyncio.timeout(self.deadline):
                await self.engine.load(model)
        except TimeoutError:
            await self.engine.unload(model)  # its worker goes: no memory held that the arbiter does not count
            raise DriverError(f"llama.cpp did not load {model} within {self.deadline:g} s") from None
        except Exception as exc:  # llama.cpp's ValueError/RuntimeError, wrapped by the engine
            raise DriverError(f"llama.cpp could not load {model}: {exc}") from exc
        if model not in self.engine.loaded_models():
            raise DriverError(f"the embedded engine said it loaded {model}, but does not hold it")
        return None

    async def unload(self, model: str) -> None:
        try:
            async with asyncio.timeout(self.deadline):
                await self.engine.unload(model)
        except TimeoutError:
            raise DriverError(f"llama.cpp did not free {model} within {self.deadline:g} s") from None
        if model in self.engine.loaded_models():
            raise DriverError(f"the embedded engine still holds {model} after unloading it")

    def offloaded(self, model: str) -> tuple[int, int] | None:
        return None

    async def alive(self) -> bool:
        return True

    async def restart(self) -> None:
        raise DriverError(f"engine {self.name} runs inside ARK: restart ARK to restart it")

    def watch(self, lost: Callable[[str], None]) -> None:
        self.engine.on_lost = lost

    async def close(self) -> None:
        pass


class _JsonService:
    """An engine's HTTP API as a driver talks to it: JSON in and out, a deadline on every call, every failure
    a DriverError. The client is the engine's own (one connection pool per upstream) or, given a URL, the
    driver's."""

    service = "engine"

    def __init__(self, http: JsonUpstream | str, *, deadline: float, poll: float) -> None:
        self._owned = isinstance(http, str)  # a client the driver made is the driver's to close
        self.http = JsonUpstream(Endpoint(self.service, http.rstrip("/"))) if isinstance(http, str) else http
        self.deadline = deadline
        self.poll = poll

    async def close(self) -> None:
        if self._owned:
            self.http.close()

    async def _until(self, done: Callable[[], Awaitable[bool]]) -> None:
        """Poll ``done`` every ``poll`` seconds until it is true (the caller bounds the time)."""
        while True:  # the engine has no event for it: polling is the only way to know
            if await done():
                return
            await asyncio.sleep(self.poll)

    async def _call(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        """One request, bounded by ``deadline`` (a load, an unload or a probe bounds its whole action too)."""
        try:
            async with asyncio.timeout(self.deadline):
                return await self.http.call(method, path, body)
        except TimeoutError:
            raise DriverError(f"{self.service} {path}: no answer within {self.deadline:g} s") from None
        except ApiError as exc:  # the transport's failure, in the client's words (engine and URL)
            raise DriverError(exc.message) from exc

    async def _get(self, path: str) -> dict[str, Any]:
        status, raw = await self._call("GET", path)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise DriverError(f"{self.service} {path}: HTTP {status}, not JSON") from None
        if status != 200:
            raise DriverError(f"{self.service} {path}: HTTP {status}: {_error(data)}")
        if not isinstance(data, dict):
            raise DriverError(f"{self.service} {path}: not a JSON object")
        return data

    async def _post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        status, raw = await self._call("POST", path, body)
        try:
            data = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            data = {"error": raw[:200].decode(errors="replace")}
        return status, data if isinstance(data, dict) else {}


def _error(data: Any) -> Any:
    return data.get("error", data) if isinstance(data, dict) else data


class OllamaDriver(_JsonService):
    service = "Ollama"

    def __init__(
        self,
        http: JsonUpstream | str,
        *,
        deadline: float = 300.0,
        poll: float = 0.1,
        name: str = "ollama",
        restart_command: str = "",
        restart_timeout: float = 120.0,
        probe_timeout: float = 5.0,
    ) -> None:
        super().__init__(http, deadline=deadline, poll=poll)
        self.splits: dict[str, tuple[int, int]] = {}  # model -> (size, size_vram) when partly on the CPU
        self.name, self.restart_command, self.restart_timeout = name, restart_command, restart_timeout
        self.probe_timeout = probe_timeout

    async def alive(self) -> bool:
        """Whether Ollama's scheduler answers: ``/api/ps`` within ``probe_timeout`` (its HTTP server may
        still answer ``/api/version`` while a runner hangs, so that proves nothing)."""
        try:
            async with asyncio.timeout(self.probe_timeout):
                await self.ps()
        except (DriverError, TimeoutError):
            return False
        return True

    def watch(self, lost: Callable[[str], None]) -> None:
        """Ollama loses models only by hanging or being restarted, which ``heal`` finds and reports."""

    async def restart(self) -> None:
        """Run the configured restart command, then wait until Ollama answers again."""
        if not self.restart_command:
            raise DriverError(f"engine {self.name} has no restart_command: it cannot be restarted")
        self.http.close()  # idle connections to the hung server are no use any more
        started = asyncio.get_running_loop().time()
        log.warning("arbiter: restarting engine %s: %s", self.name, self.restart_command)
        try:
            async with asyncio.timeout(self.restart_timeout):
                process = await asyncio.create_subprocess_shell(
                    self.restart_command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
                )
                _, err = await process.communicate()
                if process.returncode != 0:
                    tail = err.decode(errors="replace").strip()[-300:]
                    raise DriverError(f"the restart command of {self.name} exited with {process.returncode}: {tail}")
                await self._until(self.alive)  # up again: Ollama has no event for it
        except TimeoutError:
            raise DriverError(
                f"engine {self.name} did not answer {self.restart_timeout:g} s after its restart"
            ) from None
        self.splits.clear()
        log.warning(
            "arbiter: engine %s answers again, %.1f s after the restart",
            self.name,
            asyncio.get_running_loop().time() - started,
        )

    async def ps(self) -> dict[str, Loaded]:
        """The models Ollama has in memory, by name."""
        return parse_ps(await self._get("/api/ps"))

    async def load(self, model: str) -> int | None:
        try:
            async with asyncio.timeout(self.deadline):
                status, data = await self._post("/api/generate", {"model": model, "keep_alive": -1})
                if status == 400 and "does not support generate" in str(data.get("error", "")):
                    status, data = await self._post("/api/embed", {"model": model, "input": [], "keep_alive": -1})
                if status != 200:
                    raise DriverError(f"Ollama could not load {model}: HTTP {status}: {data.get('error', data)}")
                loaded = (await self.ps()).get(model)
        except TimeoutError:
            raise DriverError(f"Ollama did not load {model} within {self.deadline:g} s") from None
        if loaded is None:
            raise DriverError(f"Ollama said it loaded {model}, but /api/ps does not list it")
        size, vram = loaded.size, loaded.size_vram
        if vram < size:
            self.splits[model] = (size, vram)
            log.warning("arbiter: Ollama put %s partly on the CPU (%d of %d bytes on the GPU)", model, vram, size)
        else:
            self.splits.pop(model, None)
        return vram or None

    async def unload(self, model: str) -> None:
        try:
            async with asyncio.timeout(self.deadline):
                status, data = await self._post("/api/generate", {"model": model, "keep_alive": 0})
                if status != 200:
                    raise DriverError(f"Ollama could not unload {model}: HTTP {status}: {data.get('error', data)}")
                # the answer comes before the runner is gone: poll, Ollama has no event for it
                await self._until(lambda: self._gone(model))
        except TimeoutError:
            raise DriverError(f"Ollama still lists {model} {self.deadline:g} s after unloading it") from None
        self.splits.pop(model, None)

    async def _gone(self, model: str) -> bool:
        return model not in await self.ps()

    def offloaded(self, model: str) -> tuple[int, int] | None:
        """(size, bytes on the GPU) when Ollama put part of the loaded model on the CPU."""
        return self.splits.get(model)

    async def facts(self, known: Collection[str] = (), n_ctx: int = 4096) -> dict[str, Facts]:
        """What the catalog needs of every installed model: ``/api/tags`` sizes, ``/api/show`` architecture
        (``model_info`` carries the GGUF keys), ``/api/ps`` sizes of the loaded ones. ``n_ctx``: the
        context Ollama loads models with (its default is 4096). ``known`` models are listed without
        their architecture (no ``/api/show``): the catalog has them already."""
        tags = await self._get("/api/tags")
        loaded = await self.ps()
        out: dict[str, Facts] = {}
        for model in tags.get("models") or []:
            name = model.get("name") if isinstance(model, dict) else None
            if not isinstance(name, str):
                continue
            arch = None
            if name not in known:
                status, shown = await self._post("/api/show", {"model": name})
                arch = Architecture.from_metadata(shown.get("model_info") or {}) if status == 200 else None
            running = loaded.get(name)
            reported = (running.size_vram or running.size) if running else None
            out[name] = Facts(int(model.get("size") or 0), arch, n_ctx, reported or None)
        return out


class ComfyDriver(_JsonService):
    """ComfyUI: ``GET /system_stats`` for its memory, ``POST /free`` to unload its models.

    What ComfyUI holds is its CUDA context (``idle``, from the config: nothing reports it) plus what its
    PyTorch allocator has reserved, ``torch_vram_total``. Its ``vram_total - vram_free`` is no use here:
    ``vram_free`` is the whole device's free memory, so every other process on the GPU is in it.
    ``/free`` only sets flags that ComfyUI's prompt worker acts on between jobs, so the driver polls
    ``/system_stats`` until the reserved memory has come back (to within ``slack``).
    """

    service = "ComfyUI"

    def __init__(
        self,
        url: str,
        *,
        idle: int,
        deadline: float = 120.0,
        poll: float = 0.1,
        slack: int = 256 * 1024**2,
    ) -> None:
        super().__init__(url, deadline=deadline, poll=poll)
        self.idle, self.slack = idle, slack

    async def used(self) -> int:
        """Bytes ComfyUI's process holds on its device: its context plus its allocator's reservation."""
        devices = (await self._get("/system_stats")).get("devices") or []
        if not devices or not isinstance(devices[0], dict):
            raise DriverError("ComfyUI /system_stats lists no device")
        reserved = devices[0].get("torch_vram_total", 0)
        if isinstance(reserved, bool) or not isinstance(reserved, int | float) or reserved < 0:
            raise DriverError(f"ComfyUI /system_stats: torch_vram_total is {reserved!r}")
        return self.idle + int(reserved)

    async def _back_to_idle(self) -> bool:
        return await self.used() <= self.idle + self.slack

    async def busy(self) -> bool:
        info = (await self._get("/prompt")).get("exec_info") or {}
        return int(info.get("queue_remaining") or 0) > 0

    async def free_comfy(self) -> None:
        try:
            async with asyncio.timeout(self.deadline):
                status, _ = await self._post("/free", {"unload_models": True, "free_memory": True})
                if status != 200:
                    raise DriverError(f"ComfyUI /free: HTTP {status}")
                await self._until(self._back_to_idle)  # it frees between jobs, later: ComfyUI has no event
        except TimeoutError:
            raise DriverError(f"ComfyUI still holds its models {self.deadline:g} s after /free") from None
