"""The sites Nginx serves: one per name under ``[edge] domain``, each with how it is guarded.

access:
  session  auth_request to ARK's console (/auth/verify?site=NAME): a signed-in user whose role is at
           least the site's ([edge] site_roles); identity headers from it only
  key      the ARK gateway checks its own API keys; no auth_request (API clients have no cookie)
  basic    HTTP basic auth against the rendered htpasswd (Prometheus)
  console  ARK's console itself: the landing page and the login, which it guards on its own
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ark.config import Settings
from ark.edge.ports import PortMap
from ark.errors import ConfigError

Access = Literal["session", "key", "basic", "console"]
SMALL_BODY = 10 * 1024 * 1024

# subdomain ("" = the domain itself), upstream service, access, websocket, body ("upload", "api", "small"),
# and the title the console's home page links to it with
_TABLE: tuple[tuple[str, str, Access, bool, str, str], ...] = (
    ("", "console", "console", False, "small", "Console"),
    ("axl", "console", "console", False, "small", "Console"),
    ("chat", "chat", "session", True, "upload", "Chat (Open WebUI)"),
    ("llm", "llm", "key", False, "api", "API (OpenAI-compatible)"),
    ("art", "art", "session", True, "upload", "Images (ComfyUI)"),
    ("grafana", "grafana", "session", True, "small", "Dashboards (Grafana)"),
    ("n8n", "n8n", "session", True, "upload", "Workflows (n8n)"),
    ("prometheus", "prometheus", "basic", False, "small", "Metrics (Prometheus)"),
    ("chromadb", "chromadb", "session", False, "upload", "Vector store (ChromaDB)"),
)

# (subdomain, title) of the sites the console links to: all but the console's own names
LINKED: tuple[tuple[str, str], ...] = tuple(
    (sub, title) for sub, _, access, _, _, title in _TABLE if access != "console"
)

# The sites behind the console's sign-in: the names /auth/verify is asked about and site_roles sets
SESSION_SITES: tuple[str, ...] = tuple(sub for sub, _, access, _, _, _ in _TABLE if access == "session")

# Headers that carry who the user is. Nginx sets them on every proxied request: from the auth
# subrequest's answer on session sites, empty (= not sent) everywhere else, so a client can never
# send its own. (nginx header, variable auth_request_set fills, header /auth/verify answers with)
IDENTITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("X-Trusted-Email", "ark_email"),
    ("X-Trusted-Name", "ark_name"),
    ("X-WEBAUTH-USER", "ark_user"),
    ("X-Ark-Identity", "ark_identity"),
    ("X-Ark-User", "ark_user_name"),
    ("X-Ark-Role", "ark_role"),
)


@dataclass(frozen=True)
class Site:
    name: str  # the subdomain ("" = the domain itself); the site /auth/verify is asked about
    host: str  # server_name: chat.example.org
    upstream: str  # service name in the port map; also the upstream block's suffix
    port: int
    access: Access
    websocket: bool
    streaming: bool  # Server-Sent Events pass through unbuffered
    max_body: int  # client_max_body_size, bytes
    read_timeout_s: int

    @property
    def file_name(self) -> str:
        return self.host.replace(".", "_")


def edge_sites(settings: Settings, ports: PortMap) -> tuple[Site, ...]:
    """The sites of this configuration, in a stable order."""
    domain = settings.edge.domain
    if not domain:
        raise ConfigError('[edge] domain is empty: set it (e.g. domain = "example.org") to render the edge')
    bodies = {"upload": settings.edge.upload_max_bytes, "api": settings.gateway.max_body_bytes, "small": SMALL_BODY}
    longest = max((e.total_timeout for e in settings.engines), default=900.0)
    sites = []
    for sub, upstream, access, websocket, body, _ in _TABLE:
        streaming = upstream == "llm"
        # streams and websockets stay open far longer than a page load
        timeout = int(longest) + 60 if streaming else 3600 if websocket else 300
        sites.append(
            Site(
                name=sub,
                host=f"{sub}.{domain}" if sub else domain,
                upstream=upstream,
                port=ports.port(upstream),
                access=access,
                websocket=websocket,
                streaming=streaming,
                max_body=bodies[body],
                read_timeout_s=timeout,
            )
        )
    return tuple(sites)


def login_url(settings: Settings) -> str:
    """Where an unauthenticated browser is sent; ``rd`` brings it back after the login."""
    port = "" if settings.edge.https_port == 443 else f":{settings.edge.https_port}"
    return f"https://{settings.edge.domain}{port}/auth/login?rd=$scheme://$host{port}$request_uri"
