"""Images as a component: ``POST /v1/images/generations`` on ComfyUI, under the GPU arbiter, charged to the
key and the person like any request (docs/images.md).

A request is checked (:mod:`ark.images.request`), allowed for its key and person, and reserved on their
budgets at the most it can cost (every image it asks, and the job's whole time limit at the price of a GPU
second). It then waits for a memory hold from the arbiter, sized from the model (its ``memory_gb``, or
what ComfyUI was seen to take during an earlier job of it), so that an image job and a large model load
are never resident together beyond the GPU's capacity; the hold's priority (low by default) lets chat go
first. The job runs on ComfyUI (:mod:`ark.images.comfyui`); the hold ends however it ends. What is
charged is what was made: each image at its price by size and steps, and the seconds ComfyUI ran.
``response_format=url`` images are kept under DATA/images behind signed, expiring URLs
(:mod:`ark.images.files`).

With ``[images] comfyui_path`` `ark up` runs ComfyUI itself, under the supervisor.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson
from prometheus_client import Counter, Gauge, Histogram

from ark.arbiter.policy import GB, Priority
from ark.errors import ApiError, NotFound, PermissionDenied, QueueFull
from ark.gateway import requests as parse_json
from ark.gateway.budgets import FREE, Price
from ark.gateway.exchange import JSON_HEADERS, Exchange, send_error
from ark.images import request as image_request
from ark.images.comfyui import ComfyClient, Job
from ark.images.files import PATH, ImageFiles, base_url
from ark.images.request import ImageModel, ImageRequest
from ark.images.workflow import load
from ark.periodic import every
from ark.runtime import Component, Runtime, Status
from ark.supervisor import Health, ServiceSpec
from ark.wire import Request, Responder

log = logging.getLogger("ark.images")
_PRUNE_EVERY_S = 600.0
_HOLD_SLACK_S = 60.0  # a hold outlives its job's time limit by this much: the interrupt and the images' fetch
_JOB_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
_MEASURABLE = 256 * 1024**2  # growth below this: the checkpoint was loaded already
_GPU_ENV = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "PYTORCH_CUDA_ALLOC_CONF", "HF_HOME")


class Images(Component):
    name = "images"

    def __init__(self) -> None:
        self.models: dict[str, ImageModel] = {}
        self.measured: dict[str, int] = {}  # model -> the most ComfyUI was seen to hold after one of its jobs
        self.pending = 0  # image requests accepted and not yet answered
        self.url = ""
        self.client: ComfyClient | None = None
        self._one_job = asyncio.Lock()  # ComfyUI runs one job at a time: so do we (holds match what runs)

    async def start(self, rt: Runtime) -> None:
        self.rt = rt
        settings = rt.settings.images
        self.url = settings.comfyui()
        if self.url:
            self.client = ComfyClient(self.url)
            for model in rt.settings.image_models:  # checked at load: this reads them once more
                self.models[model.id] = ImageModel(model, load(Path(model.workflow), model.places()))
        assert rt.secret is not None
        folder = rt.settings.data_dir / "images"
        self.files = ImageFiles(folder, rt.secret, settings.url_ttl_s, settings.retention_hours * 3600)
        self._metrics(rt)
        api = rt.front.api
        for prefix in ("/v1", ""):
            rt.http.add("POST", prefix + "/images/generations", api(self.generate))
        rt.http.add("GET", PATH + "{name}", self.serve_file)
        rt.other_models.append(self.listed)
        prune = every(_PRUNE_EVERY_S, self._prune, log=log, failure="images: pruning old files failed", at_once=True)
        rt.background(prune, "ark-images-prune")

    def _metrics(self, rt: Runtime) -> None:
        registry = rt.metrics.registry
        self.generated = Counter("ark_images_generated", "Images made, by model.", ["model"], registry=registry)
        self.failures = Counter(
            "ark_image_failures",
            "Image requests that failed after they were accepted, by model and reason "
            "(rejected, node_error, timeout, interrupted, comfyui_down, gpu, cancelled).",
            ["model", "reason"],
            registry=registry,
        )
        self.job_seconds = Histogram(
            "ark_image_job_seconds", "Seconds ComfyUI ran a job.", ["model"], buckets=_JOB_BUCKETS, registry=registry
        )
        depth = Gauge("ark_image_queue_depth", "Image requests waiting or running.", registry=registry)
        depth.set_function(lambda: self.pending)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()

    def listed(self) -> list[dict[str, Any]]:
        return [{"id": name, "kind": "image", "created": 0, "owned_by": "comfyui"} for name in self.models]

    # -- the API ----------------------------------------------------------------------------------
    async def generate(self, request: Request, responder: Responder, ex: Exchange) -> None:
        ex.kind = "image"
        req = image_request.parse(parse_json.parse_body(request.body), self.models)
        rt, settings = self.rt, self.rt.settings.images
        rt.front.permit(ex, req.model.id, req.model.id)
        per_image = req.model.cost_per_image(req.width, req.height, req.steps)
        per_second = req.model.settings.cost_per_gpu_second
        await rt.front.reserve(ex, Price(fixed=per_image * req.n, gpu_second=per_second), 0, 0, settings.job_timeout_s)
        ex.price = FREE  # nothing is charged until the images are out
        if self.pending >= settings.max_queue:
            raise QueueFull(f"{self.pending} image requests are waiting for ComfyUI; retry shortly.", retry_after=5.0)
        self.pending += 1
        try:
            pictures, seconds = await self._make(req)
        except ApiError as exc:
            self.failures.labels(req.model.id, getattr(exc, "reason", "gpu")).inc()
            raise
        except asyncio.CancelledError:
            self.failures.labels(req.model.id, "cancelled").inc()
            raise
        finally:
            self.pending -= 1
        pictures = pictures[: req.n]  # a template that saves more than it was asked: only what was paid for
        body = orjson.dumps(await self._answer(req, pictures, request))
        ex.images = len(pictures)
        ex.price = Price(fixed=per_image * len(pictures) + seconds * per_second)  # at most what was reserved
        self.generated.labels(req.model.id).inc(len(pictures))
        self.job_seconds.labels(req.model.id).observe(seconds)
        await responder.send(200, body, JSON_HEADERS)

    async def _make(self, req: ImageRequest) -> tuple[list[bytes], float]:
        """The images of ``req`` and the seconds ComfyUI ran, one job at a time (ComfyUI runs one: a request
        waiting here holds no GPU memory and uses none of its time limit), under a memory hold when the
        arbiter is on."""
        assert self.client is not None  # no ComfyUI: no models, and parse() refused the request
        async with self._one_job:
            gpu, hold = self.rt.gpu, None
            limit = self.rt.settings.images.job_timeout_s
            try:
                if gpu is not None:
                    memory = self._memory(req.model)
                    priority = Priority.parse(req.model.settings.priority)
                    holder = f"image job ({req.model.id})"
                    hold = await gpu.arbiter.hold(holder, memory, priority, limit + _HOLD_SLACK_S, in_comfyui=True)
                before = await self.client.reserved() if self._measures(req.model) else None
                pictures, seconds = await self._run(req, limit)
                if before is not None and gpu is not None:
                    await self._measure(req.model, before, gpu.arbiter.capacity)
                return pictures, seconds
            finally:
                if hold is not None:
                    hold.release()

    async def _run(self, req: ImageRequest, limit: float) -> tuple[list[bytes], float]:
        """One job, or one per image for a template without a place for the batch size (the seed moving on),
        all within ``limit`` seconds."""
        assert self.client is not None
        runs = 1 if "batch_size" in req.model.template.bindings else req.n
        deadline = asyncio.get_running_loop().time() + limit
        pictures: list[bytes] = []
        seconds = 0.0
        for run in range(runs):
            values = req.values()
            if "seed" in values:
                values["seed"] = (req.seed + run) % image_request.SEED_LIMIT
            job = Job()
            left = max(deadline - asyncio.get_running_loop().time(), 0.001)
            pictures += await self.client.run(req.model.template.render(values), job, left)
            seconds += job.seconds
        return pictures, seconds

    def _memory(self, model: ImageModel) -> int:
        if model.settings.memory_gb is not None:
            return int(model.settings.memory_gb * GB)
        return self.measured.get(model.id) or int(self.rt.settings.images.memory_gb * GB)

    def _measures(self, model: ImageModel) -> bool:
        return model.settings.memory_gb is None and self.rt.gpu is not None

    async def _measure(self, model: ImageModel, before: int, capacity: int) -> None:
        """What a job of ``model`` added to ComfyUI's allocator (its checkpoint, loaded for it): the next
        hold's size. A job that found it loaded already adds nothing and teaches nothing."""
        assert self.client is not None
        after = await self.client.reserved()
        grown = (after or 0) - before
        if grown >= _MEASURABLE:
            self.measured[model.id] = min(grown, capacity)
            log.info("images: a job of %s took %.1f GB of GPU memory: its next jobs hold that", model.id, grown / GB)

    async def _answer(self, req: ImageRequest, pictures: list[bytes], request: Request) -> dict[str, Any]:
        data: list[dict[str, str]]
        now = self.rt.clock.now().timestamp()
        if req.response_format == "b64_json":
            data = [{"b64_json": base64.b64encode(p).decode()} for p in pictures]
        else:
            names = await asyncio.to_thread(lambda: [self.files.save(p) for p in pictures])
            fallback = f"http://{self.rt.settings.gateway.listen.local()}"
            base = base_url(request.headers.get("host"), request.headers.get("x-forwarded-proto"), fallback)
            data = [{"url": self.files.url(base, name, now)} for name in names]
        return {"created": int(now), "data": data, "size": req.size, "quality": req.quality, "output_format": "png"}

    async def serve_file(self, request: Request, responder: Responder) -> None:
        """An image by its signed URL: no key needed (the URL is the grant), nothing but that one file."""
        now = self.rt.clock.now().timestamp()
        verdict = self.files.check(request.params["name"], dict(parse_qsl(request.query)), now)
        if verdict.path is None:
            error = NotFound(verdict.why) if verdict.status == 404 else PermissionDenied(verdict.why)
            error.code = "image_not_found" if verdict.status == 404 else "image_url_refused"
            await send_error(responder, error)
            return
        try:
            data = await asyncio.to_thread(verdict.path.read_bytes)
        except FileNotFoundError:  # pruned a moment ago
            await send_error(responder, NotFound("this image is gone"))
            return
        headers = [
            ("content-type", "image/png"),
            ("cache-control", "private, max-age=3600"),
            ("x-content-type-options", "nosniff"),
        ]
        await responder.send(200, data, headers)

    async def _prune(self) -> None:
        deleted = await asyncio.to_thread(self.files.prune, time.time())
        if deleted:
            log.info("images: deleted %d images older than %g hours", deleted, self.rt.settings.images.retention_hours)

    # -- ComfyUI ----------------------------------------------------------------------------------
    def services(self, rt: Runtime) -> Sequence[ServiceSpec]:
        spec = comfyui_service(rt)
        return [spec] if spec is not None else []

    def status(self) -> list[Status]:
        settings = self.rt.settings.images
        if settings.comfyui_url:
            return [Status("comfyui", "running", f"at {self.url}, not run by ARK")]
        if not settings.comfyui_path:
            return [Status("comfyui", "absent", "no image models: set [images] comfyui_path or comfyui_url")]
        return [Status("comfyui", "starting")]


def comfyui_service(rt: Runtime) -> ServiceSpec | None:
    """ComfyUI run from ``[images] comfyui_path`` on loopback, unless a ComfyUI of its own is configured."""
    settings = rt.settings.images
    if settings.comfyui_url or not settings.comfyui_path:
        return None
    folder = Path(settings.comfyui_path).expanduser()
    python = settings.comfyui_python or next(
        (str(p) for p in (folder / "venv" / "bin" / "python", folder / ".venv" / "bin" / "python") if p.exists()),
        "python3",
    )
    listen = settings.comfyui_listen
    argv = [python, "main.py", "--listen", listen.host, "--port", str(listen.port), "--disable-auto-launch"]
    env = {name: os.environ[name] for name in _GPU_ENV if name in os.environ}
    health = Health(url=f"{settings.comfyui()}/system_stats", timeout_s=300)  # its first start loads custom nodes
    return ServiceSpec("comfyui", argv, health, env=env, cwd=folder, inherit_env=False)
