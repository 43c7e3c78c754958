"""Which engine serves a model name: aliases, configured models and what each engine lists.

The table is rebuilt off the request path (at start, every ``model_refresh_s``
and, rate-limited, when a client asks for a name nobody listed), so routing a
request is one dictionary lookup.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ark.config import Settings
from ark.engines.base import Engine, ModelInfo
from ark.errors import ApiError, ModelNotFound

log = logging.getLogger("ark.gateway")

_MISS_REFRESH_INTERVAL_S = 1.0  # a flood of unknown names must not become a flood of engine probes
_LIST_TIMEOUT_S = 10.0
_NAMES_SHOWN = 5  # model names in an engine's start-up line; an Ollama with forty models says "and 35 more"


@dataclass(frozen=True, slots=True)
class Route:
    requested: str  # what the client asked for (an alias or a model id); answered back in "model"
    model: str  # the engine's own model id
    engine: Engine


@dataclass(frozen=True, slots=True)
class EngineState:
    up: bool
    models: int
    error: str = ""


class ModelRouter:
    def __init__(self, engines: Sequence[Engine], settings: Settings, *, announce: bool = False) -> None:
        self.engines = list(engines)
        self._announce = announce  # log what the first look at each engine found (`ark up`; `ark status` prints it)
        self._by_name = {e.name: e for e in self.engines}
        self._configured = {m.id: m.engine for m in settings.models}
        self._aliases = dict(settings.aliases)
        self._routes: dict[str, Route] = {}
        self.models: list[ModelInfo] = []
        self.state: dict[str, EngineState] = {}
        self.refreshed_at = 0.0
        self.ready = asyncio.Event()
        self._refreshing: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        """Re-list every engine; callers that arrive while a refresh runs share it."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._refresh())
        await asyncio.shield(self._refreshing)

    async def _refresh(self) -> None:
        results = await asyncio.gather(*(self._list(e) for e in self.engines))
        if self._announce and not self.ready.is_set():  # one line per engine, before /health/ready says 200
            for listed, lister in zip(results, self.engines, strict=True):
                log.log(*first_look(lister, self.state[lister.name], [m.id for m in listed]))
        found: dict[str, ModelInfo] = {}
        for models in results:
            for info in models:
                found.setdefault(info.id, info)  # engines earlier in the config win
        routes: dict[str, Route] = {}
        for model_id, info in found.items():
            routes[model_id] = Route(model_id, model_id, self._by_name[info.engine])
        for model_id, engine_name in self._configured.items():
            engine = self._by_name.get(engine_name) if engine_name else None
            if engine is not None:  # configured models are routable even while their engine is down
                routes[model_id] = Route(model_id, model_id, engine)
        for alias, target in self._aliases.items():
            if target in routes:
                routes[alias] = Route(alias, target, routes[target].engine)
        self._routes = routes
        self.models = list(found.values())
        self.refreshed_at = time.monotonic()
        self.ready.set()

    async def _list(self, engine: Engine) -> list[ModelInfo]:
        try:
            async with asyncio.timeout(_LIST_TIMEOUT_S):
                models = await engine.list_models()
        except (ApiError, TimeoutError, OSError) as exc:
            message = getattr(exc, "message", None) or f"no answer in {_LIST_TIMEOUT_S:g}s"
            before = self.state.get(engine.name)
            if before is not None and before.up:  # a change; at the first look, first_look() says it
                log.warning("engine %s is not available: %s", engine.name, message)
            self.state[engine.name] = EngineState(False, 0, message)
            return []
        self.state[engine.name] = EngineState(True, len(models))
        return models

    async def resolve(self, name: str) -> Route:
        route = self._routes.get(name)
        if route is None and time.monotonic() - self.refreshed_at > _MISS_REFRESH_INTERVAL_S:
            await self.refresh()
            route = self._routes.get(name)
        if route is None:
            raise ModelNotFound(name)
        return route

    def names(self) -> list[tuple[str, ModelInfo | None, str | None]]:
        """Every name a client may use: (name, model info, alias target)."""
        out: list[tuple[str, ModelInfo | None, str | None]] = [(m.id, m, None) for m in self.models]
        listed = {m.id for m in self.models}
        out += [
            (model_id, None, None)
            for model_id in self._configured
            if model_id in self._routes and model_id not in listed
        ]
        out += [(alias, None, target) for alias, target in self._aliases.items() if alias in self._routes]
        return out


def first_look(engine: Engine, state: EngineState, models: Sequence[str]) -> tuple[int, str]:
    """The log level and line that say what the first look at ``engine`` found: where it is (its URL, or
    the folder it serves files from), and the models it serves, or why none."""
    settings = engine.settings
    where = f"engine {engine.name} ({settings.url})" if settings.url else f"engine {engine.name}"
    if not state.up:
        return logging.WARNING, f"{where}: not answering ({state.error}); its models are not served"
    source = "" if settings.url else f" in {settings.models_dir}"
    if not models:
        return logging.WARNING, f"{where}: no models{source}"
    names = ", ".join(models[:_NAMES_SHOWN]) + (
        f" and {len(models) - _NAMES_SHOWN} more" if len(models) > _NAMES_SHOWN else ""
    )
    return logging.INFO, f"{where}: {len(models)} model{'s' if len(models) > 1 else ''} ({names}){source}"
