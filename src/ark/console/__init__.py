"""ARK's web console on :8080: sign-in, sessions, Nginx's auth_request check, the landing page.

Served by :class:`ark.wire.Server` in the gateway's process (``ark up``); see docs/security.md.
"""

from __future__ import annotations

from ark.console.app import CSRF_COOKIE, HOST_CSRF_COOKIE, SESSION_COOKIE, Console
from ark.console.server import ConsoleServer
from ark.errors import ConsoleError

__all__ = ["CSRF_COOKIE", "HOST_CSRF_COOKIE", "SESSION_COOKIE", "Console", "ConsoleError", "ConsoleServer"]
