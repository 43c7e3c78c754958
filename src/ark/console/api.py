"""The console's pages talk to ARK through this: ``/console/api/PATH`` is the gateway's own ``PATH`` (the
API the CLI and every client use), served in this process, for the signed-in person.

Each call is checked here first, server-side, whatever the page shows: a live session, the role its path
needs (the management API, ``/key``, ``/team``, ``/user``, ``/spend``, ``/usage`` and ``/admin``, is for
admins; the OpenAI and Ollama APIs for every signed-in person), and, for anything but a read, the session's
CSRF value in ``X-CSRF-Token`` and the console's own origin. Then the request goes to the gateway's router
with the master key's authority and the person's identity (``X-Ark-Identity``): a person's chats and images
are charged to their budget and limited to their models, as they would be from Open WebUI; an admin's
management calls are recorded in the log with their name. Nothing is possible here that is not possible
with the API itself.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace

import orjson

from ark.auth.service import AuthService
from ark.auth.users import Session
from ark.console import web
from ark.wire import Request, Responder

log = logging.getLogger("ark.console")
PREFIX = "/console/api"
ADMIN_PATHS = ("/key/", "/team/", "/user/", "/spend/", "/usage/", "/admin/", "/metrics")
PERSON_PATHS = ("/v1/", "/api/", "/me/")
_READS = ("GET", "HEAD")
_JSON = [("content-type", "application/json"), ("cache-control", "no-store"), ("x-content-type-options", "nosniff")]
Gateway = Callable[[Request, Responder], Awaitable[None]]


def needs(path: str) -> str | None:
    """The role a gateway path needs through the console ("admin", "user"), or None: not served here."""
    if path.startswith(ADMIN_PATHS):
        return "admin"
    if path.startswith(PERSON_PATHS) or path == "/me":
        return "user"
    return None


class ConsoleApi:
    def __init__(self, auth: AuthService, gateway: Gateway, master_key: str, origins: frozenset[str]) -> None:
        self.auth, self.gateway, self.origins = auth, gateway, origins
        self._master = master_key

    async def __call__(self, request: Request, responder: Responder, session: tuple[Session, str] | None) -> None:
        path = request.path[len(PREFIX) :] or "/"
        role = needs(path)
        if role is None:
            await _refuse(responder, 404, "not_found", f"{path} is not served through the console.")
            return
        if session is None:
            await _refuse(responder, 401, "not_signed_in", "Sign in to ARK's console first.")
            return
        found, token = session
        user = found.user
        if role == "admin" and user.role != "admin":
            self.auth.count("api_forbidden")
            log.warning("console: %s (role %s) refused %s %s: admins only", user.name, user.role, request.method, path)
            await _refuse(responder, 403, "admin_only", "Only an admin may do this.")
            return
        if request.method not in _READS and not self._csrf_ok(request, token):
            self.auth.count("csrf_refused")
            await _refuse(responder, 403, "csrf", "This request was not sent by ARK's console page: reload it.")
            return
        if role == "admin" and request.method not in _READS:
            log.info("console: %s (admin) %s %s", user.name, request.method, path)
        headers = {
            name: value
            for name, value in request.headers.items()
            if name in ("content-type", "accept", "user-agent", "content-length")
        }
        headers["authorization"] = f"Bearer {self._master}"
        headers["x-ark-identity"] = self.auth.identity_token(found)
        await self.gateway(replace(request, path=path, headers=headers, params={}), responder)

    def _csrf_ok(self, request: Request, token: str) -> bool:
        sent = request.headers.get("x-csrf-token", "")
        expected = self.auth.session_csrf(token)
        return (
            bool(sent)
            and web.origin_allowed(request, self.origins)
            and hmac.compare_digest(expected.encode(), sent.encode())
        )


async def _refuse(responder: Responder, status: int, code: str, message: str) -> None:
    body = {"error": {"message": message, "type": "console_error", "param": None, "code": code}}
    await responder.send(status, orjson.dumps(body), _JSON)
