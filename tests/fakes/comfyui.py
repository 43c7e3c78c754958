"""A stand-in for ComfyUI's memory endpoints, as its server.py and main.py behave.

* ``GET /system_stats``: ``{"system": {...}, "devices": [{"name", "type", "index", "vram_total",
  "vram_free", "torch_vram_total", "torch_vram_free"}]}`` in bytes.
* ``POST /free`` with ``{"unload_models": bool, "free_memory": bool}`` only sets flags and answers 200
  with an empty body at once; the prompt worker unloads later, and not before the job it is running
  ends. So a caller must poll ``/system_stats`` to see the memory come back.
* ``GET /prompt``: ``{"exec_info": {"queue_remaining": n}}``.

As in ComfyUI's ``model_management``: ``vram_free`` is the whole device's free memory
(``torch.cuda.mem_get_info``, so other processes on the GPU count) plus what its own allocator
keeps cached; ``torch_vram_total`` is what its PyTorch allocator has reserved (its models and
caches) and ``torch_vram_free`` the reserved part not in use.

Controls: ``idle`` (what the CUDA context keeps), ``models`` (what loaded checkpoints take), ``others``
(memory of other processes on the same GPU), ``busy`` (a job is running), ``free_delay`` (how long the
worker takes to notice the flags).
"""

from __future__ import annotations

import asyncio
import json
import sys

from aiohttp import web

GIB = 1024**3


class FakeComfyUI:
    def __init__(self, *, vram_total: int = 32 * GIB, idle: int = 3 * GIB // 4, models: int = 6 * GIB) -> None:
        self.vram_total, self.idle, self.models = vram_total, idle, models
        self.others = 0
        self.busy = False
        self.free_delay = 0.2
        self.frees: list[dict[str, bool]] = []
        self.url = ""
        self._flags: dict[str, bool] = {}
        self._runner: web.AppRunner | None = None
        self._worker: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    @property
    def used(self) -> int:
        return self.idle + self.models

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/system_stats", self._stats)
        app.router.add_post("/free", self._free)
        app.router.add_get("/prompt", self._prompt)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        self._worker = asyncio.create_task(self._prompt_worker())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    def finish_job(self) -> None:
        self.busy = False
        self._wake.set()

    async def _stats(self, request: web.Request) -> web.Response:
        free = self.vram_total - self.used - self.others
        return web.json_response(
            {
                "system": {"os": "posix", "python_version": sys.version, "embedded_python": False},
                "devices": [
                    {
                        "name": "cuda:0 NVIDIA GeForce RTX 5090 : cudaMallocAsync",
                        "type": "cuda",
                        "index": 0,
                        "vram_total": self.vram_total,
                        "vram_free": free,
                        "torch_vram_total": self.models,
                        "torch_vram_free": 0,
                    }
                ],
            }
        )

    async def _free(self, request: web.Request) -> web.Response:
        body = json.loads(await request.text())  # bad JSON: aiohttp's 500, as in ComfyUI
        unload, free_memory = bool(body.get("unload_models", False)), bool(body.get("free_memory", False))
        self.frees.append({"unload_models": unload, "free_memory": free_memory})
        if unload:
            self._flags["unload_models"] = True
        if free_memory:
            self._flags["free_memory"] = True
        self._wake.set()
        return web.Response(status=200)

    async def _prompt(self, request: web.Request) -> web.Response:
        return web.json_response({"exec_info": {"queue_remaining": 1 if self.busy else 0}})

    async def _prompt_worker(self) -> None:
        """main.py's loop: between jobs, act on the flags (free_memory implies unloading the models)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.busy or not self._flags:
                continue
            await asyncio.sleep(self.free_delay)
            flags, self._flags = self._flags, {}
            if flags.get("unload_models", flags.get("free_memory", False)):
                self.models = 0
