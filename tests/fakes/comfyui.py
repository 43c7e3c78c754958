"""A stand-in for ComfyUI's HTTP and websocket API, as its server.py, execution.py and main.py behave
(Comfy-Org/ComfyUI 0.38: server.py 5e14d79, execution.py 04e2a91, main.py 02018c7). Each route is also
served under ``/api``, as there.

* ``GET /system_stats``: ``{"system": {...}, "devices": [{"name", "type", "index", "vram_total",
  "vram_free", "torch_vram_total", "torch_vram_free"}]}`` in bytes.
* ``POST /free`` with ``{"unload_models": bool, "free_memory": bool}`` only sets flags and answers 200
  with an empty body at once; the prompt worker unloads later, and not before the job it is running
  ends. So a caller must poll ``/system_stats`` to see the memory come back.
* ``GET /prompt``: ``{"exec_info": {"queue_remaining": n}}``, the running job included.
* ``POST /prompt`` ``{"prompt", "client_id", "prompt_id", "number", "front", "extra_data"}``: checked as
  ``validate_prompt`` does, 400 ``{"error": {"type", "message", "details", "extra_info"}, "node_errors"}``
  (``no_prompt``, ``invalid_prompt_id``, ``missing_node_type``, ``prompt_no_outputs``, or
  ``prompt_outputs_failed_validation`` with each failing node's errors); else 200 ``{"prompt_id",
  "number", "node_errors"}``, queued. A prompt id already queued: 409. Bad JSON: aiohttp's 500.
* ``GET /ws?clientId=`` (none: one is made up): JSON text frames ``{"type", "data"}``, ``status`` with
  ``sid`` first; a job's messages go to its ``client_id`` in ``send_sync``'s order (see ``_execute``).
  Binary frames are previews: 4-byte event 1 (PREVIEW_IMAGE), 4-byte image type (2: PNG), the image.
* ``GET /history``, ``GET /history/{prompt_id}``: ``{id: {"prompt": [number, id, graph, extra_data,
  outputs], "outputs", "status": {"status_str", "completed", "messages"}, "meta"}}``; ``{}`` until it ends.
* ``GET /view?filename=&subfolder=&type=``: 400 for ``..`` or a leading ``/`` in the name or an unknown
  type, 403 for a subfolder outside its directory, 404 for no such file.
* ``POST /interrupt``, body optional (``{"prompt_id"}``: only if that one is running).
* ``GET /queue``: ``{"queue_running", "queue_pending"}``; ``POST /queue`` ``{"delete": [ids]}`` or
  ``{"clear": true}`` takes pending jobs out.

As in ComfyUI's ``model_management``: ``vram_free`` is the whole device's free memory
(``torch.cuda.mem_get_info``, so other processes on the GPU count) plus what its own allocator
keeps cached; ``torch_vram_total`` is what its PyTorch allocator has reserved (its models and
caches) and ``torch_vram_free`` the reserved part not in use.

Controls: ``idle`` (what the CUDA context keeps), ``models`` (what loaded checkpoints take), ``others``
(memory of other processes on the same GPU), ``busy`` (a job is running), ``free_delay`` (how long the
worker takes to notice the flags), ``checkpoints`` (what ``ckpt_name`` may be), ``step_delay`` (seconds a
sampler step), ``fail_node_class`` (that class raises), ``hang`` (the sampler's last step waits for an
interrupt), ``job_memory`` (``models`` grows to it as a checkpoint loads; ``peak_models``), ``padding``
(bytes of text added to each image: a real one is megabytes), ``die()``.
Records: ``frees``, ``jobs`` (each graph POSTed, as it came), ``interrupts`` (POST /interrupt calls).

Run as a script (or ``main()`` from a ComfyUI folder's main.py), it serves as ``python main.py --listen
HOST --port PORT`` does, until SIGTERM or SIGINT. The node classes, ``validate_prompt`` and the PNGs are in
``comfyui_graph``.

Left out: ComfyUI's output cache (``execution_cached`` is always empty, a graph sent twice runs twice),
the ``feature_flags`` handshake, uploads, ``/object_info``, ``/api/jobs``, annotated filenames in ``/view``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import heapq
import json
import posixpath
import random
import signal
import struct
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from tests.fakes.comfyui_graph import comfy_error, execution_order, node_classes, png, type_name, validate_prompt

GIB = 1024**3
DIRS = {"input": "/comfyui/input", "output": "/comfyui/output", "temp": "/comfyui/temp"}  # files live in memory
Item = tuple[float, str, dict[str, Any], dict[str, Any], list[str]]  # number, prompt_id, graph, extra_data, outputs


class _Interrupted(Exception):
    """model_management.InterruptProcessingException."""


@dataclass
class _Run:
    """One job as PromptExecutor runs it: the status messages it keeps, the outputs so far."""

    prompt_id: str
    client: str | None  # server.client_id: where the job's messages go
    messages: list[list[Any]] = field(default_factory=list)
    results: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    ui: dict[str, Any] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)


class FakeComfyUI:
    def __init__(self, *, vram_total: int = 32 * GIB, idle: int = 3 * GIB // 4, models: int = 6 * GIB) -> None:
        self.vram_total, self.idle, self.models = vram_total, idle, models
        self.others = 0
        self.busy = False
        self.free_delay = 0.2
        self.frees: list[dict[str, bool]] = []
        self.url = ""
        self.checkpoints = ["sd_xl_base_1.0.safetensors"]
        self.step_delay = 0.01
        self.fail_node_class: str | None = None
        self.hang = False
        self.job_memory = 6 * GIB
        self.padding = 0
        self.peak_models = models
        self.jobs: list[Any] = []
        self.interrupts = 0
        self._flags: dict[str, bool] = {}
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._interrupted = asyncio.Event()  # nodes.interrupt_processing(); each job clears it as it starts
        self._queue: list[Item] = []  # a heap, as PromptQueue keeps it
        self._running: Item | None = None
        self._run: _Run | None = None
        self._history: dict[str, dict[str, Any]] = {}
        self._files: dict[str, bytes] = {}  # a path under DIRS -> PNG
        self._sockets: dict[str, web.WebSocketResponse] = {}
        self._messages: asyncio.Queue[tuple[Any, Any, str | None]] = asyncio.Queue()  # send_sync's
        self._number = 0
        self._last_node_id: str | None = None

    @property
    def used(self) -> int:
        return self.idle + self.models

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host``:``port`` (0: a free port); ``url`` then has the port bound."""
        app = web.Application()
        for prefix in ("", "/api"):
            for method, path, handler in [
                ("GET", "/system_stats", self._stats),
                ("POST", "/free", self._free),
                ("GET", "/prompt", self._prompt),
                ("POST", "/prompt", self._post_prompt),
                ("GET", "/ws", self._ws),
                ("GET", "/history", self._get_history),
                ("GET", "/history/{prompt_id}", self._get_history),
                ("GET", "/view", self._view),
                ("POST", "/interrupt", self._interrupt),
                ("GET", "/queue", self._get_queue),
                ("POST", "/queue", self._post_queue),
            ]:
                app.router.add_route(method, prefix + path, handler)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.url = f"http://{host}:{self._runner.addresses[0][1]}"
        self._tasks = [asyncio.create_task(self._prompt_worker()), asyncio.create_task(self._publish())]

    async def stop(self) -> None:
        await self._stop_tasks()
        if self._runner is not None:
            await self._runner.cleanup()

    async def die(self) -> None:
        """ComfyUI killed: it stops listening, and every connection (websockets too) drops without a goodbye."""
        await self._stop_tasks()
        assert self._runner is not None and self._runner.server is not None
        for site in list(self._runner.sites):
            await site.stop()
        for handler in self._runner.server.connections:
            if handler.transport is not None:
                handler.transport.abort()

    async def _stop_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

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

    def _queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": len(self._queue) + (1 if self.busy else 0)}}

    async def _prompt(self, request: web.Request) -> web.Response:
        return web.json_response(self._queue_info())

    async def _post_prompt(self, request: web.Request) -> web.Response:
        body = await request.json()  # bad JSON: aiohttp's 500, as in ComfyUI
        if "number" in body:
            number = float(body["number"])
        else:  # counted even for a prompt then refused
            number, self._number = (-self._number if body.get("front") else self._number), self._number + 1
        if "prompt" not in body:
            error = comfy_error("no_prompt", "No prompt provided", "No prompt provided")
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        self.jobs.append(copy.deepcopy(body["prompt"]))
        prompt_id = body.get("prompt_id")
        prompt_id = str(uuid.uuid4()) if prompt_id is None else prompt_id
        if not _canonical_uuid(prompt_id):
            why = "prompt_id must be a UUID string in canonical lowercase hyphenated form; "
            why += "omit it to let the server generate one"
            error = comfy_error("invalid_prompt_id", "prompt_id must be a valid UUID", why)
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        valid, error, outputs, node_errors = validate_prompt(body["prompt"], node_classes(self.checkpoints))
        if not valid:
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        extra = body.get("extra_data", {})
        extra.update({"client_id": body["client_id"]} if "client_id" in body else {})
        for key in ("auth_token_comfy_org", "api_key_comfy_org"):  # kept out of the queue and the history
            extra.pop(key, None)
        extra["create_time"] = int(time.time() * 1000)
        if any(item[1] == prompt_id for item in [*self._queue, *filter(None, [self._running])]):
            return web.json_response({"error": "prompt_id already exists"}, status=409)
        heapq.heappush(self._queue, (number, prompt_id, body["prompt"], extra, outputs))
        self._queue_updated()
        self._wake.set()
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    async def _get_queue(self, request: web.Request) -> web.Response:
        running = [list(self._running)] if self._running else []
        return web.json_response({"queue_running": running, "queue_pending": [list(item) for item in self._queue]})

    async def _post_queue(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self._queue = []
            self._queue_updated()
        for prompt_id in body.get("delete", []):
            kept = [item for item in self._queue if item[1] != prompt_id]
            if len(kept) < len(self._queue):
                self._queue = kept
                heapq.heapify(self._queue)
                self._queue_updated()
        return web.Response(status=200)

    async def _interrupt(self, request: web.Request) -> web.Response:
        self.interrupts += 1
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = {}
        prompt_id = body.get("prompt_id")
        if not prompt_id or (self._running is not None and self._running[1] == prompt_id):
            self._interrupted.set()  # with nothing running, lost: the next job clears it as it starts
        return web.Response(status=200)

    async def _get_history(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info.get("prompt_id")
        if prompt_id is not None:
            return web.json_response({prompt_id: self._history[prompt_id]} if prompt_id in self._history else {})
        items, max_items = list(self._history.items()), request.query.get("max_items")
        offset = int(request.query.get("offset", -1))
        if offset < 0 and max_items is not None:
            offset = len(items) - int(max_items)
        items = items[max(offset, 0) :]
        return web.json_response(dict(items if max_items is None else items[: int(max_items)]))

    async def _view(self, request: web.Request) -> web.Response:
        query = request.query
        if "filename" not in query:
            return web.Response(status=404)
        filename, root = query["filename"], DIRS.get(query.get("type", "output"))
        if not filename or filename[0] == "/" or ".." in filename or root is None:
            return web.Response(status=400)
        directory = posixpath.normpath(posixpath.join(root, query.get("subfolder", "")))
        if posixpath.commonpath((directory, root)) != root:
            return web.Response(status=403)
        name = posixpath.basename(filename)
        if (data := self._files.get(posixpath.join(directory, name))) is None:
            return web.Response(status=404)
        headers = {"Content-Disposition": f'filename="{name}"', "X-Content-Type-Options": "nosniff"}
        return web.Response(body=data, content_type="image/png", headers=headers)

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.query.get("clientId", "") or uuid.uuid4().hex
        self._sockets[sid] = ws  # a reconnect with the same id takes the old socket's place
        try:
            await self._send("status", {"status": self._queue_info(), "sid": sid}, sid)
            if self._run is not None and self._run.client == sid and self._last_node_id is not None:
                await self._send("executing", {"node": self._last_node_id}, sid)
            async for _ in ws:  # what clients send is read, and ignored here
                pass
        finally:
            if self._sockets.get(sid) is ws:
                del self._sockets[sid]
        return ws

    def _send_sync(self, event: Any, data: Any, sid: str | None) -> None:
        self._messages.put_nowait((event, data, sid))

    def _queue_updated(self) -> None:
        self._send_sync("status", {"status": self._queue_info()}, None)

    async def _publish(self) -> None:
        while True:
            await self._send(*await self._messages.get())

    async def _send(self, event: Any, data: Any, sid: str | None) -> None:
        sockets = list(self._sockets.values()) if sid is None else [self._sockets[sid]] if sid in self._sockets else []
        for ws in sockets:
            with contextlib.suppress(aiohttp.ClientError, ConnectionError):  # as send_socket_catch_exception
                if isinstance(data, bytes):
                    await ws.send_bytes(struct.pack(">I", event) + data)
                else:
                    await ws.send_json({"type": event, "data": data})

    async def _prompt_worker(self) -> None:
        """main.py's loop: run the queued jobs one at a time, and between jobs act on the flags (free_memory
        implies unloading the models). While ``busy`` is set from outside, someone else's job runs."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.busy:
                continue
            if self._queue:
                self._running, self.busy = heapq.heappop(self._queue), True
                self._queue_updated()
                await self._execute(self._running)
                self._wake.set()
            if self._flags:
                await asyncio.sleep(self.free_delay)
                flags, self._flags = self._flags, {}
                if flags.get("unload_models", flags.get("free_memory", False)):
                    self.models = 0

    def _message(self, event: str, data: dict[str, Any], broadcast: bool = False) -> None:
        """PromptExecutor.add_message: kept for the history and sent, with a timestamp in ms."""
        assert self._run is not None
        data = {**data, "timestamp": int(time.time() * 1000)}
        self._run.messages.append([event, data])
        if self._run.client is not None or broadcast:
            self._send_sync(event, data, self._run.client)

    async def _execute(self, item: Item) -> None:
        """PromptExecutor.execute_async, then the worker's task_done and its last ``executing``:
        ``execution_start``, ``execution_cached``; for each node ``progress_state``, ``executing``, ``progress``
        for each sampler step (a binary preview after the first), ``executed`` for an output node,
        ``progress_state``; then ``execution_success`` (or ``execution_error``, ``execution_interrupted``),
        ``status`` to all, and ``executing`` with node null."""
        _, prompt_id, prompt, extra, outputs = item
        self._interrupted.clear()
        run = self._run = _Run(prompt_id, extra.get("client_id"))
        self._message("execution_start", {"prompt_id": prompt_id})
        self._message("execution_cached", {"nodes": [], "prompt_id": prompt_id})  # this fake caches nothing
        for node_id in execution_order(prompt, outputs):
            class_type, inputs = prompt[node_id]["class_type"], prompt[node_id]["inputs"]
            self._progress_state(node_id, "running", 0.0, 1.0)
            if run.client is not None:
                self._last_node_id = node_id
                self._send_sync(
                    "executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id}, run.client
                )
            got = {k: run.results[v[0]][v[1]] if isinstance(v, list) else v for k, v in inputs.items()}
            try:
                if self._interrupted.is_set():  # nodes.before_node_execution()
                    raise _Interrupted
                if class_type == self.fail_node_class:
                    raise RuntimeError(f"{class_type} failed (FakeComfyUI.fail_node_class)")
                run.results[node_id], output = await self._run_node(class_type, got, node_id, prompt)
            except _Interrupted:
                failure = {"prompt_id": prompt_id, "node_id": node_id, "node_type": class_type}
                self._message("execution_interrupted", failure | {"executed": list(run.executed)}, broadcast=True)
                break
            except Exception as exc:
                failure = {"prompt_id": prompt_id, "node_id": node_id, "node_type": class_type}
                failure |= {
                    "executed": list(run.executed),
                    "exception_message": f"{exc}\n",
                    "exception_type": type_name(exc),
                }
                current = {k: [v if v is None or isinstance(v, int | float | str) else str(v)] for k, v in got.items()}
                failure |= {"traceback": traceback.format_tb(exc.__traceback__), "current_inputs": current}
                self._message("execution_error", failure | {"current_outputs": list(prompt)})
                break
            if output is not None:
                run.ui[node_id] = output
                if run.client is not None:
                    executed = {"node": node_id, "display_node": node_id, "output": output, "prompt_id": prompt_id}
                    self._send_sync("executed", executed, run.client)
            self._progress_state(node_id, "finished", run.progress[node_id]["max"], run.progress[node_id]["max"])
            run.executed.append(node_id)
        else:
            self._message("execution_success", {"prompt_id": prompt_id})
        success = run.messages[-1][0] == "execution_success"
        status = {"status_str": "success" if success else "error", "completed": success, "messages": run.messages}
        meta = {n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n} for n in run.ui}
        self._history[prompt_id] = {"prompt": list(item), "outputs": run.ui, "status": status, "meta": meta}
        self._running, self.busy, self._last_node_id = None, False, None
        self._queue_updated()
        if run.client is not None:
            self._send_sync("executing", {"node": None, "prompt_id": prompt_id}, run.client)

    def _progress_state(self, node_id: str, state: str, value: float, top: float) -> None:
        """WebUIProgressHandler: the state of every node started so far, at each start, step and finish."""
        assert self._run is not None
        ids = {"node_id": node_id, "prompt_id": self._run.prompt_id, "display_node_id": node_id}
        self._run.progress[node_id] = {"value": value, "max": top, "state": state, **ids, "parent_node_id": None}
        self._run.progress[node_id]["real_node_id"] = node_id
        nodes = {n: dict(s) for n, s in self._run.progress.items()}
        self._send_sync("progress_state", {"prompt_id": self._run.prompt_id, "nodes": nodes}, self._run.client)

    async def _run_node(self, class_type: str, inputs: dict[str, Any], node_id: str, prompt: Any) -> Any:
        """What each class's FUNCTION returns, and its ``ui`` (None for a node that shows nothing)."""
        if class_type == "CheckpointLoaderSimple":  # loaded for good: after the job too, until /free
            self.models = max(self.models, self.job_memory)
            self.peak_models = max(self.peak_models, self.models)
            return ({"ckpt_name": inputs["ckpt_name"]},) * 3, None
        if class_type == "CLIPTextEncode":
            return ({"text": inputs["text"]},), None
        if class_type == "EmptyLatentImage":
            return (dict(inputs),), None
        if class_type == "KSampler":
            await self._sample(inputs["steps"], node_id)
            made = {k: inputs[k] for k in ("seed", "steps", "cfg", "sampler_name", "scheduler", "denoise")}
            texts = {"positive": inputs["positive"]["text"], "negative": inputs["negative"]["text"]}
            return ({**inputs["latent_image"], **made, **texts, "ckpt_name": inputs["model"]["ckpt_name"]},), None
        if class_type == "VAEDecode":
            return ([{**inputs["samples"], "batch_index": i} for i in range(inputs["samples"]["batch_size"])],), None
        if class_type == "SaveImage":
            return (inputs["images"],), {
                "images": self._save(inputs["images"], inputs["filename_prefix"], "output", prompt)
            }
        temp = "ComfyUI_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
        return (inputs["images"],), {"images": self._save(inputs["images"], temp, "temp", prompt)}

    async def _sample(self, steps: int, node_id: str) -> None:
        """The sampler's steps: ComfyUI's progress hook checks for an interrupt before it reports each one."""
        assert self._run is not None
        for step in range(1, steps + 1):
            if self.hang and step == steps:
                await self._interrupted.wait()
            else:
                await asyncio.sleep(self.step_delay)
            if self._interrupted.is_set():
                raise _Interrupted
            self._progress_state(node_id, "running", step, steps)
            progress = {"value": step, "max": steps, "prompt_id": self._run.prompt_id, "node": node_id}
            self._send_sync("progress", progress, self._run.client)
            if step == 1:  # the event, then the image's type (2: PNG)
                self._send_sync(1, struct.pack(">I", 2) + png(8, 8, (128, 128, 128), {}), self._run.client)

    def _save(self, images: list[dict[str, Any]], prefix: str, kind: str, prompt: Any) -> list[dict[str, str]]:
        """SaveImage.save_images and folder_paths.get_save_image_path: ``{prefix}_{counter:05}_.png``, the
        counter one past the highest of the files already there; PNG text ``prompt``, and ``parameters``
        (this fake's: what the image was made from)."""
        subfolder, filename = posixpath.split(posixpath.normpath(prefix))
        folder = posixpath.normpath(posixpath.join(DIRS[kind], subfolder))
        if posixpath.commonpath((DIRS[kind], folder)) != DIRS[kind]:
            raise Exception(
                "**** ERROR: Saving image outside the output folder is not allowed."
                f"\n full_output_folder: {folder}\n         output_dir: {DIRS[kind]}"
            )
        names = [posixpath.basename(path) for path in self._files if posixpath.dirname(path) == folder]
        counter = max((_counter(n[len(filename) + 1 :]) for n in names if n.startswith(filename + "_")), default=0)
        results = []
        for image in images:
            counter += 1
            name, seed = f"{filename}_{counter:05}_.png", image.get("seed") or 0
            made = {k: image.get(k) for k in ("width", "height", "seed", "steps", "positive", "negative", "ckpt_name")}
            text = {
                "prompt": json.dumps(prompt),
                "parameters": json.dumps(made | {"batch_index": image["batch_index"]}),
                **({"padding": "x" * self.padding} if self.padding else {}),
            }
            scale = -(-max(image["width"], image["height"]) // 64)  # at most 64 pixels a side
            size = (max(1, image["width"] // scale), max(1, image["height"] // scale))
            self._files[posixpath.join(folder, name)] = png(*size, (seed % 256, seed // 256 % 256, 200), text)
            results.append({"filename": name, "subfolder": subfolder, "type": kind})
        return results


def _counter(rest: str) -> int:
    try:
        return int(rest.split(".")[0].split("_")[0])
    except ValueError:
        return 0


def _canonical_uuid(value: Any) -> bool:
    try:
        return isinstance(value, str) and str(uuid.UUID(value)) == value
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> None:
    """Run as ComfyUI's main.py is run: ``--listen HOST`` (bare: 0.0.0.0), ``--port PORT``; its other
    flags (``--disable-auto-launch`` among them) are accepted and ignored. Serves, with no models loaded and
    quick sampler steps, until SIGTERM or SIGINT, then stops and returns."""
    parser = argparse.ArgumentParser(description="A stand-in for ComfyUI's main.py")
    parser.add_argument("--listen", nargs="?", const="0.0.0.0", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8188)
    args, _ = parser.parse_known_args(argv)
    asyncio.run(_serve(args.listen, args.port))


async def _serve(host: str, port: int) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    comfy = FakeComfyUI(models=0)
    comfy.step_delay = 0.001
    await comfy.start(host, port)
    print(f"To see the GUI go to: {comfy.url}", flush=True)  # as ComfyUI's main.py says it
    try:
        await stopping.wait()
    finally:
        await comfy.stop()


if __name__ == "__main__":
    main()
