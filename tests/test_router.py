"""ark.wire.Router: static paths, {name} and {name:path} parameters, mounts, 404 and 405, HEAD as GET."""

from __future__ import annotations

import asyncio

import pytest

from ark.wire import Request, Responder, RouteError, Router


class Recorder:
    """A Responder stand-in that keeps what was sent (the router only calls ``send`` through handlers)."""

    def __init__(self) -> None:
        self.status = 0
        self.body = b""
        self.headers: list[tuple[str, str]] = []

    async def send(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        self.status, self.body, self.headers = status, body, headers


def request(method: str, path: str) -> Request:
    return Request(method=method, path=path, query="", headers={}, body=b"", client="127.0.0.1")


def call(router: Router, method: str, path: str) -> Recorder:
    out = Recorder()
    asyncio.run(router(request(method, path), out))  # type: ignore[arg-type]
    return out


def answering(text: str):  # type: ignore[no-untyped-def]
    async def handler(req: Request, responder: Responder) -> None:
        shown = ",".join(f"{k}={v}" for k, v in sorted(req.params.items()))
        await responder.send(200, f"{text} {req.method} {shown}".encode(), [])

    return handler


def test_static_routes_parameters_and_the_rest_of_a_path() -> None:
    router = Router()
    router.add("POST", "/v1/chat/completions", answering("chat"))
    router.add("GET", "/v1/models/{model:path}", answering("model"))
    router.add("DELETE", "/admin/gpu/holds/{hold}", answering("release"))
    assert call(router, "POST", "/v1/chat/completions").body == b"chat POST "
    assert call(router, "GET", "/v1/models/org/name:7b").body == b"model GET model=org/name:7b"
    assert call(router, "DELETE", "/admin/gpu/holds/h-1").body == b"release DELETE hold=h-1"
    assert call(router, "DELETE", "/admin/gpu/holds/").status == 404  # an empty segment is no parameter
    assert call(router, "DELETE", "/admin/gpu/holds/a/b").status == 404  # {name} is one segment
    assert call(router, "GET", "/v1/models/").status == 404


def test_a_known_path_with_another_method_is_405_with_the_methods_it_has() -> None:
    router = Router()
    router.add("POST", "/v1/embeddings", answering("embed"))
    router.add("GET", "/x/{id}", answering("x"))
    router.add("PUT", "/x/{id}", answering("x"))
    refused = call(router, "GET", "/v1/embeddings")
    assert refused.status == 405 and ("allow", "POST") in refused.headers
    assert ("allow", "GET, PUT") in call(router, "DELETE", "/x/1").headers


def test_the_interface_chooses_how_a_miss_is_answered() -> None:
    async def openai_style(req: Request, responder: Responder, allowed: tuple[str, ...]) -> None:
        await responder.send(404, f"Unknown request URL: {req.method} {req.path}.".encode(), [])

    router = Router(not_found=openai_style)
    router.add("POST", "/v1/completions", answering("c"))
    assert call(router, "GET", "/v1/completions").body == b"Unknown request URL: GET /v1/completions."
    assert call(router, "GET", "/nowhere").status == 404


def test_head_is_served_by_get() -> None:
    router = Router()
    router.add("GET", "/health/live", answering("live"))
    assert call(router, "HEAD", "/health/live").body == b"live GET "


def test_mounts_serve_another_routers_routes_under_a_prefix() -> None:
    admin = Router()
    admin.add("GET", "/keys", answering("keys"))
    admin.add("GET", "/keys/{key}", answering("key"))
    root = Router()
    root.mount("/admin/", admin)
    assert call(root, "GET", "/admin/keys").body == b"keys GET "
    assert call(root, "GET", "/admin/keys/k1").body == b"key GET key=k1"
    assert list(root.routes()) == [("GET", "/admin/keys"), ("GET", "/admin/keys/{key}")]


@pytest.mark.parametrize("pattern", ["nope", "/a/{b", "/a/x{b}", "/a/{b:path}/c", "/a/{1b}"])
def test_bad_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(RouteError):
        Router().add("GET", pattern, answering("x"))


def test_a_route_added_twice_is_refused() -> None:
    router = Router()
    router.add("GET", "/a", answering("a"))
    router.add("GET", "/b/{c}", answering("b"))
    with pytest.raises(RouteError, match="added twice"):
        router.add("GET", "/a", answering("a"))
    with pytest.raises(RouteError, match="added twice"):
        router.add("GET", "/b/{c}", answering("b"))
