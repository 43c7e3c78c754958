"""Whether a request came straight from this machine, or through a proxy that stands for someone else.

Behind Nginx every request's peer is 127.0.0.1, so a loopback address proves nothing about who is
asking. Nginx's proxied locations always set ``X-Real-IP`` and ``X-Forwarded-For``
(:func:`ark.edge.nginx.render_site`); a request that carries any forwarding header is the remote request
it stands for, and no exception made for local callers (Prometheus's scrape) applies to it.
"""

from __future__ import annotations

from ark.wire import Request

LOOPBACK = frozenset({"127.0.0.1", "::1"})
# Nginx sets the X-* ones on every proxied request; Forwarded (RFC 7239) is what other proxies send
FORWARDING_HEADERS = ("x-real-ip", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "forwarded")


def direct_local(request: Request) -> bool:
    """A request from a process on this machine that no proxy passed on (present but empty counts too)."""
    return request.client in LOOPBACK and not any(name in request.headers for name in FORWARDING_HEADERS)
