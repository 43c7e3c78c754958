"""One router for every listener: method + path, path parameters, prefix mounts.

``router.add("GET", "/v1/models/{model}", handler)``: a ``{name}`` segment matches one path segment
(``{name:path}`` the rest of the path, slashes included) and arrives in ``request.params``.
``router.mount("/admin", other)`` serves ``other``'s routes under the prefix. A path without
parameters is one dictionary lookup, so the hot path (``POST /v1/chat/completions``) costs what it
cost before routing was general; paths with parameters are tried in the order they were added.

An unknown path goes to ``not_found``; a known path asked with another method to ``not_allowed``
(with the methods it has), each in the interface's own error convention, chosen by whoever builds
the router.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from ark.wire.server import Request, Responder

Handler = Callable[[Request, Responder], Awaitable[None]]
Refusal = Callable[[Request, Responder, tuple[str, ...]], Awaitable[None]]


class RouteError(ValueError):
    """A route that cannot be added: a bad pattern, or one that is there already."""


@dataclass(frozen=True, slots=True)
class _Pattern:
    method: str
    pattern: str
    parts: tuple[str, ...]  # literal segments, or "{name}" / "{name:path}"
    handler: Handler

    def match(self, segments: list[str]) -> dict[str, str] | None:
        params: dict[str, str] = {}
        for index, part in enumerate(self.parts):
            if part.endswith(":path}"):
                rest = "/".join(segments[index:])
                if not rest:
                    return None
                params[part[1:-6]] = rest
                return params
            if index >= len(segments):
                return None
            if part.startswith("{"):
                if not segments[index]:
                    return None
                params[part[1:-1]] = segments[index]
            elif part != segments[index]:
                return None
        return params if len(segments) == len(self.parts) else None


def _parse(pattern: str) -> tuple[str, ...]:
    if not pattern.startswith("/"):
        raise RouteError(f"{pattern!r}: a route starts with /")
    parts = tuple(pattern[1:].split("/"))
    for index, part in enumerate(parts):
        if "{" in part or "}" in part:
            name = part[1:-1].removesuffix(":path")
            if not (part.startswith("{") and part.endswith("}") and name.isidentifier()):
                raise RouteError(f"{pattern!r}: a parameter is a whole segment, {{name}} or {{name:path}}")
            if part.endswith(":path}") and index != len(parts) - 1:
                raise RouteError(f"{pattern!r}: {{{name}:path}} can only end a route")
    return parts


async def _plain_not_found(request: Request, responder: Responder, allowed: tuple[str, ...]) -> None:
    await responder.send(404, b"not found", [("content-type", "text/plain")])


async def _plain_not_allowed(request: Request, responder: Responder, allowed: tuple[str, ...]) -> None:
    await responder.send(405, b"method not allowed", [("content-type", "text/plain"), ("allow", ", ".join(allowed))])


class Router:
    """Calling it handles one request, as :class:`ark.wire.Server` expects of a handler."""

    def __init__(self, not_found: Refusal = _plain_not_found, not_allowed: Refusal | None = None) -> None:
        self._static: dict[tuple[str, str], Handler] = {}
        self._static_paths: dict[str, list[str]] = {}  # path -> its methods
        self._patterns: list[_Pattern] = []
        self.not_found = not_found
        self.not_allowed = not_allowed or (_plain_not_allowed if not_found is _plain_not_found else not_found)

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        parts = _parse(pattern)
        method = method.upper()
        if any("{" in part for part in parts):
            if any(p.method == method and p.pattern == pattern for p in self._patterns):
                raise RouteError(f"{method} {pattern}: added twice")
            self._patterns.append(_Pattern(method, pattern, parts, handler))
            return
        if (method, pattern) in self._static:
            raise RouteError(f"{method} {pattern}: added twice")
        self._static[(method, pattern)] = handler
        self._static_paths.setdefault(pattern, []).append(method)

    def mount(self, prefix: str, other: Router) -> None:
        """Every route of ``other`` (as it is now), under ``prefix``."""
        prefix = prefix.rstrip("/")
        _parse(prefix or "/")
        for (method, path), handler in other._static.items():
            self.add(method, prefix + path, handler)
        for pattern in other._patterns:
            self.add(pattern.method, prefix + pattern.pattern, pattern.handler)

    def routes(self) -> Iterable[tuple[str, str]]:
        """(method, pattern) of every route, in the order they were added (static ones first)."""
        yield from self._static
        yield from ((p.method, p.pattern) for p in self._patterns)

    def find(self, request: Request) -> Handler:
        """The handler for ``request`` (its ``params`` set); the server calls it without a frame of ours."""
        handler = self._static.get((request.method, request.path))
        if handler is not None:
            return handler
        segments = request.path[1:].split("/") if request.path.startswith("/") else [request.path]
        allowed: list[str] = list(self._static_paths.get(request.path, ()))
        for pattern in self._patterns:
            params = pattern.match(segments)
            if params is None:
                continue
            if pattern.method == request.method:
                request.params = params
                return pattern.handler
            allowed.append(pattern.method)
        if request.method == "HEAD" and "GET" in allowed:  # HEAD is GET without the body (the wire drops it)
            request.method = "GET"
            return self.find(request)
        refusal, methods = (self.not_allowed, tuple(dict.fromkeys(allowed))) if allowed else (self.not_found, ())

        async def refuse(request: Request, responder: Responder) -> None:
            await refusal(request, responder, methods)

        return refuse

    async def __call__(self, request: Request, responder: Responder) -> None:
        await self.find(request)(request, responder)
