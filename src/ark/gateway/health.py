"""Health and metrics (a component): ``/health/live``, ``/health/ready``, ``/metrics``, ``/admin/services``."""

from __future__ import annotations

import orjson

from ark.edge.forwarded import direct_local
from ark.errors import AdminOnly, ApiError
from ark.gateway.exchange import JSON_HEADERS, send_error
from ark.runtime import Component, Runtime
from ark.wire import Request, Responder


class HealthApi(Component):
    name = "health"

    async def start(self, rt: Runtime) -> None:
        self.rt = rt
        rt.http.add("GET", "/health/live", self.live)
        rt.http.add("GET", "/health/ready", self.ready)
        rt.http.add("GET", "/metrics", self.prometheus)
        rt.http.add("GET", "/admin/services", rt.front.admin(self.list_services, "see the services"))

    async def live(self, request: Request, responder: Responder) -> None:
        await responder.send(200, b'{"status":"ok"}', JSON_HEADERS)

    async def ready(self, request: Request, responder: Responder) -> None:
        """503 until the engines were probed and every component part that must run does."""
        models = self.rt.models
        engines = {
            name: {"up": s.up, "models": s.models, **({"error": s.error} if s.error else {})}
            for name, s in models.state.items()
        }
        parts = self.rt.status()
        ready = self.rt.started and models.ready.is_set() and all(part.ready for part in parts)
        components = {part.name: {"state": part.state, **({"why": part.why} if part.why else {})} for part in parts}
        body = {"status": "ready" if ready else "starting", "engines": engines, "components": components}
        await responder.send(200 if ready else 503, orjson.dumps(body), JSON_HEADERS)

    async def prometheus(self, request: Request, responder: Responder) -> None:
        # Prometheus scrapes locally; anyone else, and anything through Nginx (llm.D), needs the master key
        if not direct_local(request):
            try:
                if self.rt.front.authenticate(request) is not None:
                    raise AdminOnly("Only the master key may read /metrics from another host or through a proxy.")
            except ApiError as exc:
                await send_error(responder, exc)
                return
        await responder.send(200, self.rt.metrics.render(), [("content-type", "text/plain; version=0.0.4")])

    async def list_services(self, request: Request, responder: Responder) -> None:
        """The components' parts and the services `ark up` runs: running (pid, restarts), failed, absent and why."""
        await responder.send(200, orjson.dumps({"services": self.rt.services()}), JSON_HEADERS)
