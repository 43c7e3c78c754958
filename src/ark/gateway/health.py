"""Health and metrics (a component): ``/health/live``, ``/health/ready``, ``/metrics``, ``/admin/services``
and ``/admin/services/log`` (the end of a supervised service's log)."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs

import orjson

from ark.edge.forwarded import direct_local
from ark.errors import AdminOnly, ApiError, InvalidRequest, NotFound
from ark.gateway.exchange import JSON_HEADERS, send_error
from ark.runtime import Component, Runtime
from ark.supervisor.supervisor import log_tail
from ark.wire import Request, Responder

LOG_LINES, LOG_MAX_LINES = 200, 2000  # /admin/services/log: lines by default, and at most
_LOG_BYTES_PER_LINE = 512  # read at most this much per line asked for (a log with huge lines is cut)


class HealthApi(Component):
    name = "health"

    async def start(self, rt: Runtime) -> None:
        self.rt = rt
        rt.http.add("GET", "/health/live", self.live)
        rt.http.add("GET", "/health/ready", self.ready)
        rt.http.add("GET", "/metrics", self.prometheus)
        rt.http.add("GET", "/admin/services", rt.front.admin(self.list_services, "see the services"))
        rt.http.add("GET", "/admin/services/log", rt.front.admin(self.service_log, "read the services' logs"))

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
        """The components' parts and the services `ark up` runs: running (pid, restarts), failed, absent and why;
        ``core``: the gateway and each engine."""
        body = {"services": self.rt.services(), "core": self.rt.core_parts()}
        await responder.send(200, orjson.dumps(body), JSON_HEADERS)

    async def service_log(self, request: Request, responder: Responder) -> None:
        """``?name=SERVICE&lines=N``: the last lines of a service the supervisor runs (only those: a name is
        never a path)."""
        query = {k: v[-1] for k, v in parse_qs(request.query).items()}
        name = query.get("name", "")
        service = self.rt.supervisor.services.get(name)
        if service is None:
            known = ", ".join(sorted(self.rt.supervisor.services)) or "none"
            raise NotFound(f"No supervised service {name[:64]!r} (these are: {known}).", param="name")
        text = query.get("lines", str(LOG_LINES))
        if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= LOG_MAX_LINES:
            raise InvalidRequest(f"'lines' must be a whole number from 1 to {LOG_MAX_LINES}.", param="lines")
        wanted = int(text)
        tail = await asyncio.to_thread(log_tail, service.log_path, wanted * _LOG_BYTES_PER_LINE, whole_lines=True)
        lines = tail.removesuffix("\n").split("\n")[-wanted:] if tail else []
        body = {"name": name, "log": str(service.log_path), "lines": lines}
        await responder.send(200, orjson.dumps(body), JSON_HEADERS)
