"""The GPU arbiter's HTTP API (a component, master key only): what it holds, load and unload, memory
holds for external jobs (a render, a ComfyUI job), freeing ComfyUI.

``/admin/gpu/leases`` is the old path of ``/admin/gpu/holds``, from before "lease" meant only a request's
lease on its model; it is kept as an alias (docs/api.md)."""

from __future__ import annotations

import orjson

from ark.arbiter.drivers import DriverError
from ark.arbiter.policy import GB
from ark.errors import InvalidRequest, ModelNotFound, NotFound, UpstreamError
from ark.gateway import requests as parse
from ark.gateway.exchange import JSON_HEADERS
from ark.runtime import Component, Runtime
from ark.wire import Request, Responder


class GpuApi(Component):
    name = "gpu-api"

    async def start(self, rt: Runtime) -> None:
        self.rt = rt
        admin = rt.front.admin
        what = "manage the GPU"
        rt.http.add("GET", "/admin/gpu", admin(self.gpu_status, what))
        rt.http.add("POST", "/admin/gpu/load", admin(self.gpu_load, what))
        rt.http.add("POST", "/admin/gpu/unload", admin(self.gpu_unload, what))
        for holds in ("/admin/gpu/holds", "/admin/gpu/leases"):  # the second: the old name, an alias
            rt.http.add("POST", holds, admin(self.gpu_hold, what))
            rt.http.add("DELETE", holds + "/{id}", admin(self.gpu_release, what))
        rt.http.add("POST", "/admin/gpu/free-comfyui", admin(self.gpu_free_comfy, what))

    async def gpu_status(self, request: Request, responder: Responder) -> None:
        """The arbiter's view (master key): resident models, memory holds, queue, counters."""
        status = self.rt.gpu.status() if self.rt.gpu is not None else {"enabled": False, "models": []}
        await responder.send(200, orjson.dumps(status), JSON_HEADERS)

    async def gpu_load(self, request: Request, responder: Responder) -> None:
        await self._gpu_action(request, responder, "load")

    async def gpu_unload(self, request: Request, responder: Responder) -> None:
        await self._gpu_action(request, responder, "unload")

    async def _gpu_action(self, request: Request, responder: Responder, action: str) -> None:
        body = parse.parse_body(request.body)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("'model' must be the name of a model.", param="model")
        if self.rt.gpu is None or model not in self.rt.gpu.arbiter.catalog:
            raise ModelNotFound(model)  # the arbiter manages no such model
        result = await (self.rt.gpu.load(model) if action == "load" else self.rt.gpu.unload(model))
        await responder.send(200, orjson.dumps(result), JSON_HEADERS)

    async def gpu_hold(self, request: Request, responder: Responder) -> None:
        """A memory hold for an external job (a render, a ComfyUI job): answered once the memory is set aside."""
        body = parse.parse_body(request.body)
        if self.rt.gpu is None:
            raise InvalidRequest("The GPU arbiter is off: there is no memory to hold.")
        holder, memory_gb, priority, seconds = parse.gpu_hold(body)
        hold = await self.rt.gpu.arbiter.hold(holder, int(memory_gb * GB), priority, seconds)
        await responder.send(200, orjson.dumps(hold.describe(self.rt.gpu.arbiter.clock.now())), JSON_HEADERS)

    async def gpu_free_comfy(self, request: Request, responder: Responder) -> None:
        if self.rt.gpu is None or self.rt.gpu.drivers.comfy is None:
            raise InvalidRequest("No ComfyUI is configured: set [images] comfyui_url or comfyui_path.")
        try:
            result = await self.rt.gpu.free_comfy()
        except DriverError as exc:
            raise UpstreamError(f"Freeing ComfyUI failed: {exc}") from None
        await responder.send(200, orjson.dumps(result), JSON_HEADERS)

    async def gpu_release(self, request: Request, responder: Responder) -> None:
        hold_id = request.params["id"]
        hold = self.rt.gpu.arbiter.holds.get(hold_id) if self.rt.gpu is not None else None
        if hold is None:
            raise NotFound(f"No GPU memory hold '{hold_id[:40]}' (it may have expired).", param="id")
        hold.release()
        await responder.send(200, orjson.dumps({"id": hold.id, "released": True}), JSON_HEADERS)
