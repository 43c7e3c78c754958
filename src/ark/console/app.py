"""The console's routes: sign-in page, sign-in, sign-out, Nginx's ``auth_request`` check, landing page.

The contract Nginx relies on (docs/security.md):

    GET  /auth/login?rd=URL   the sign-in form (sets the CSRF cookie its value is bound to:
                              __Host-ark_csrf with a domain, ark_csrf without)
    POST /auth/login          username, password, totp (optional), csrf, rd -> 303 to rd + ark_session
    POST /auth/logout         csrf -> 303 to /auth/login, session deleted, cookie cleared
    GET  /auth/verify?site=S  200 + identity headers for a live session whose role may open site S,
                              401 without one, 403 when the role is too low or S is no site of the sign-in
    GET  /                    who is signed in and links to the sites (303 to sign in otherwise)

Every page carries no-store, no-framing and a script-free CSP; every form post needs its CSRF value
and, when the browser says where it comes from, the console's own origin.
"""

from __future__ import annotations

import functools
import hmac
import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from ark.auth.access import site_access, visible_sites
from ark.auth.passwords import MAX_LENGTH as MAX_PASSWORD
from ark.auth.service import AuthService
from ark.auth.users import Session
from ark.config import Settings
from ark.console import pages, web
from ark.console.api import PREFIX as API_PREFIX
from ark.console.api import ConsoleApi, Gateway
from ark.console.web import BadInput
from ark.edge.sites import LINKED
from ark.wire import Request, Responder, Router

log = logging.getLogger("ark.console")

SESSION_COOKIE = "ark_session"
# The sign-in's CSRF cookie. Over https at D: __Host-, which a browser only takes host-only, Secure and
# for Path=/, so no other site under D can set or replace it (Domain=.D cookie tossing). Without a
# domain (http://127.0.0.1:8080, no sibling sites) the plain name, as before.
CSRF_COOKIE = "ark_csrf"
HOST_CSRF_COOKIE = "__Host-ark_csrf"
_CSRF_MAX_AGE = 3600 * 12
_HTML = [("content-type", "text/html; charset=utf-8"), *web.SECURITY_HEADERS]
_TEXT = [("content-type", "text/plain; charset=utf-8"), ("cache-control", "no-store")]
_JSON = [("content-type", "application/json"), ("cache-control", "no-store"), ("x-content-type-options", "nosniff")]
_SCRIPTED = web.security_headers(script=True)  # the overview page: ARK's own scripts may run


_STATIC = Path(__file__).with_name("static")
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
# the files /static/ serves: those shipped in the package, by name (a name is never a path)
STATIC_FILES = frozenset(p.name for p in _STATIC.iterdir() if p.suffix in _TYPES)


@functools.cache
def _static(name: str) -> bytes:
    """A file of ARK's own scripts and style, read once (they ship with the package)."""
    return (_STATIC / name).read_bytes()


Overview = Callable[[], dict[str, Any]]
_LOGIN_FIELDS = {"username": 256, "password": MAX_PASSWORD, "totp": 16, "csrf": 256, "rd": 2048}
_WRONG = "Wrong user name, password or code."


class Console:
    """The console's request handler (for :class:`ark.wire.Server`)."""

    def __init__(
        self, settings: Settings, auth: AuthService, overview: Overview | None = None, gateway: Gateway | None = None
    ) -> None:
        self.auth = auth
        self.domain = settings.edge.domain.strip().strip(".").lower()
        self.origins = web.console_origins(self.domain, settings.edge.https_port)
        self._csrf_cookie, self._csrf_path = (HOST_CSRF_COOKIE, "/") if self.domain else (CSRF_COOKIE, "/auth")
        self.site_roles = settings.edge.site_roles
        # where clients reach the API, for the code the pages show: https://llm.D through Nginx, else the gateway
        port = "" if settings.edge.https_port == 443 else f":{settings.edge.https_port}"
        self.api_base = (
            f"https://llm.{self.domain}{port}" if self.domain else f"http://{settings.gateway.listen.local()}"
        )
        self._warned_site = False
        self._overview = overview
        self.router = Router(not_found=self._not_found, not_allowed=self._not_allowed)
        for method, path, handler in (
            ("GET", "/", self.home),
            ("GET", "/api/overview", self.overview),
            ("GET", "/static/{name}", self.static),
            ("GET", "/favicon.ico", self.no_icon),
            ("GET", "/auth/login", self.login_page),
            ("POST", "/auth/login", self.login),
            ("POST", "/auth/logout", self.logout),
            ("GET", "/auth/verify", self.verify),
            ("GET", "/health/live", self.live),
        ):
            self.router.add(method, path, handler)
        for path, *_ in pages.PAGES[1:]:
            self.router.add("GET", path, self.app_page)
        # the gateway's API for the signed-in person, when the gateway runs in this process (ark.console.api)
        self.api = ConsoleApi(auth, gateway, settings.master_key.value, self.origins) if gateway else None
        for method in ("GET", "POST", "DELETE"):
            self.router.add(method, API_PREFIX + "/{path:path}", self.gateway_api)

    async def __call__(self, request: Request, responder: Responder) -> None:
        try:
            await self.router.find(request)(request, responder)
        except BadInput as exc:
            await self._page(responder, exc.status, pages.message("Cannot do that", str(exc)))
        except Exception:
            log.exception("console: %s %s failed", request.method, request.path)
            if not responder.started:
                await self._page(responder, 500, pages.message("Something went wrong", "ARK logged the error."))

    async def _not_found(self, request: Request, responder: Responder, allowed: tuple[str, ...]) -> None:
        raise BadInput("There is no such page.", 404)

    async def _not_allowed(self, request: Request, responder: Responder, allowed: tuple[str, ...]) -> None:
        raise BadInput(f"{request.method} is not allowed here.", 405)

    async def _page(
        self, responder: Responder, status: int, html: str, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        await responder.send(status, html.encode(), [*_HTML, *headers])

    # -- signing in -------------------------------------------------------------------------------
    def _csrf(self, request: Request) -> tuple[str, list[tuple[str, str]]]:
        """The sign-in form's CSRF value, bound to the nonce in the browser's cookie; a new nonce (and
        the cookie to set) when it has none of ours."""
        for nonce in web.cookies(request, self._csrf_cookie)[:4]:
            if (value := self.auth.login_csrf(nonce)) is not None:
                return value, []
        nonce = self.auth.new_login_nonce()
        cookie = web.set_cookie(self._csrf_cookie, nonce, max_age=_CSRF_MAX_AGE, path=self._csrf_path)
        return self.auth.login_csrf(nonce) or "", [cookie]

    def _csrf_matches(self, request: Request, sent: str) -> bool:
        if not sent or not web.origin_allowed(request, self.origins):
            return False
        for nonce in web.cookies(request, self._csrf_cookie)[:4]:
            expected = self.auth.login_csrf(nonce)
            if expected is not None and hmac.compare_digest(expected.encode(), sent.encode()):
                return True
        return False

    def _rd(self, request: Request, target: str) -> str:
        return web.safe_redirect(target, self.domain, request.headers.get("host", ""))

    async def login_page(self, request: Request, responder: Responder) -> None:
        csrf, headers = self._csrf(request)
        rd = self._rd(request, web.return_to(request))
        await self._page(responder, 200, pages.login(csrf=csrf, rd=rd), headers)

    async def login(self, request: Request, responder: Responder) -> None:
        fields = web.form(request, _LOGIN_FIELDS)
        rd = self._rd(request, fields.get("rd", "/"))
        username = fields.get("username", "")
        csrf, csrf_headers = self._csrf(request)

        async def again(status: int, error: str, extra: Iterable[tuple[str, str]] = ()) -> None:
            html = pages.login(csrf=csrf, rd=rd, username=username, error=error)
            await self._page(responder, status, html, [*csrf_headers, *extra])

        if not self._csrf_matches(request, fields.get("csrf", "")):
            self.auth.count("csrf_refused")
            await again(403, "This form expired or was not sent by ARK's sign-in page. Please sign in again.")
            return
        client = web.client_address(request)
        agent = request.headers.get("user-agent", "")
        result = await self.auth.login(username, fields.get("password", ""), fields.get("totp", ""), client, agent)
        if result.outcome == "throttled":
            seconds = math.ceil(result.retry_after)
            error = f"Too many failed sign-ins for this name or from this address. Try again in {seconds} s."
            await again(429, error, [("retry-after", str(seconds))])
            return
        if result.outcome != "ok" or result.expires is None:
            await again(401, _WRONG)
            return
        await self._end_old_sessions(request)  # a new session id at every sign-in: no fixation
        cookie = web.set_cookie(
            SESSION_COOKIE,
            self.auth.cookie_value(result.token),
            max_age=self.auth.expires_in(result.expires),
            domain=self.domain,
        )
        forget_csrf = web.set_cookie(self._csrf_cookie, "", max_age=0, path=self._csrf_path)
        await responder.send(303, b"", [("location", rd), cookie, forget_csrf, *web.SECURITY_HEADERS])

    async def _end_old_sessions(self, request: Request) -> None:
        await self.auth.logout_all(web.cookies(request, SESSION_COOKIE))

    # -- signed in --------------------------------------------------------------------------------
    async def _session(self, request: Request) -> tuple[Session, str] | None:
        return await self.auth.check(web.cookies(request, SESSION_COOKIE))

    async def logout(self, request: Request, responder: Responder) -> None:
        fields = web.form(request, {"csrf": 256})
        if not web.origin_allowed(request, self.origins):
            self.auth.count("csrf_refused")
            raise BadInput("This form was not sent by ARK's page. Go back, reload it and sign out again.", 403)
        found = await self._session(request)
        if found is not None:
            expected = self.auth.session_csrf(found[1])
            if not hmac.compare_digest(expected.encode(), fields.get("csrf", "").encode()):
                raise BadInput("This form was not sent by ARK's page. Go back, reload it and sign out again.", 403)
            await self.auth.logout(found[1])
        clear = [web.set_cookie(SESSION_COOKIE, "", max_age=0)]
        if self.domain:
            clear.append(web.set_cookie(SESSION_COOKIE, "", max_age=0, domain=self.domain))
        await responder.send(303, b"", [("location", "/auth/login"), *clear, *web.SECURITY_HEADERS])

    async def verify(self, request: Request, responder: Responder) -> None:
        """Nginx ``auth_request`` for one site: the session and the user's role are checked now, every time
        (a disabled user is out at once, a changed role counts at the next request).

        The site comes from ``?site=``, which only the rendered Nginx location sets (a client's own query
        never reaches this subrequest). No site, or one that is not behind the sign-in, is 403 before any
        lookup: a bundle rendered before site roles existed must fail closed, not open every site.
        """
        site = web.query(request, "site", 64)
        if site not in self.site_roles:
            self.auth.count("verify_unknown_site")
            if not self._warned_site:
                self._warned_site = True  # once: Nginx asks like this on every request
                log.warning(
                    "console: /auth/verify asked about site %r, not one of %s: run `ark render` and reload Nginx",
                    site,
                    ", ".join(self.site_roles),
                )
            await responder.send(403, b"unknown site\n", _TEXT)
            return
        found = await self._session(request)
        if found is None:
            self.auth.count("verify_denied")
            await responder.send(401, b"not signed in\n", _TEXT)
            return
        session = found[0]
        user = session.user
        if site_access(user.role, site, self.site_roles) != "allowed":
            self.auth.count("verify_forbidden")
            log.info(
                "console: %s (role %s) refused on %s, which needs %s", user.name, user.role, site, self.site_roles[site]
            )
            await responder.send(403, b"your role may not open this site\n", _TEXT)
            return
        self.auth.count("verify_ok")
        headers = [
            ("x-trusted-email", web.header_value(user.email)),
            ("x-trusted-name", web.header_value(user.display_name)),
            ("x-webauth-user", user.name),
            ("x-ark-user", user.name),
            ("x-ark-role", user.role),
            ("x-ark-identity", self.auth.identity_token(session)),
        ]
        await responder.send(200, b"", [*_TEXT, *headers])

    async def gateway_api(self, request: Request, responder: Responder) -> None:
        if self.api is None:
            raise BadInput("There is no such page.", 404)
        await self.api(request, responder, await self._session(request))

    async def home(self, request: Request, responder: Responder) -> None:
        found = await self._session(request)
        if found is None:
            await responder.send(303, b"", [("location", "/auth/login?rd=" + quote("/")), *web.SECURITY_HEADERS])
            return
        session, token = found
        html = pages.home(
            session.user,
            csrf=self.auth.session_csrf(token),
            domain=self.domain,
            overview=self._overview is not None,
            sites=visible_sites(session.user.role, LINKED, self.site_roles),
        )
        headers = [("content-type", "text/html; charset=utf-8"), *_SCRIPTED]
        await responder.send(200, html.encode(), headers)

    async def overview(self, request: Request, responder: Responder) -> None:
        """The live overview's numbers (JSON), for a signed-in user; polled by /static/overview.js."""
        if self._overview is None or await self._session(request) is None:
            body = b'{"error":"sign in first"}' if self._overview else b'{"error":"no overview here"}'
            await responder.send(401 if self._overview else 404, body, _JSON)
            return
        await responder.send(200, orjson.dumps(self._overview()), _JSON)

    async def no_icon(self, request: Request, responder: Responder) -> None:
        await responder.send(204, b"", [("cache-control", "max-age=86400")])  # browsers ask; there is none

    async def static(self, request: Request, responder: Responder) -> None:
        name = request.params.get("name", "")
        if name not in STATIC_FILES:
            raise BadInput("There is no such page.", 404)
        content_type = _TYPES[Path(name).suffix]
        await responder.send(200, _static(name), [("content-type", content_type), *_SCRIPTED])

    async def app_page(self, request: Request, responder: Responder) -> None:
        """A page of :data:`pages.PAGES`: to the sign-in without a session; 403 when the role may not open it
        (the API it calls refuses that role too, whatever a page shows)."""
        found = await self._session(request)
        if found is None:
            target = "/auth/login?rd=" + quote(request.path)
            await responder.send(303, b"", [("location", target), *web.SECURITY_HEADERS])
            return
        session, token = found
        if not pages.may_open(session.user, request.path):
            self.auth.count("page_forbidden")
            log.warning("console: %s (role %s) refused the page %s", session.user.name, session.user.role, request.path)
            raise BadInput("Only an admin may open this page.", 403)
        csrf = self.auth.session_csrf(token)
        html = pages.app_page(session.user, csrf=csrf, path=request.path, api_base=self.api_base)
        await responder.send(200, html.encode(), [("content-type", "text/html; charset=utf-8"), *_SCRIPTED])

    async def live(self, request: Request, responder: Responder) -> None:
        await responder.send(200, b'{"status":"ok"}', [("content-type", "application/json")])


class ConsoleCollector(Collector):
    """``ark_auth_events_total{event}``: sign-ins (ok, failed, throttled), CSRF refusals, verify answers
    (ok, denied: not signed in, forbidden: role too low, unknown_site)."""

    def __init__(self, auth: AuthService) -> None:
        self._auth = auth

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily("ark_auth_events", "Console sign-in and session events.", labels=["event"])
        for event, count in sorted(self._auth.counts.items()):
            family.add_metric([event], count)
        yield family
