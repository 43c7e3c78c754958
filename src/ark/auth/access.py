"""Which signed-in user may open which site behind Nginx: the least role per site, as plain data.

``[edge] site_roles`` maps every site behind the sign-in to the least role it needs; roles are ordered
(``ROLE_ORDER``, lowest first) and a role passes every site that needs it or a lower one. Nginx names
the site in its auth subrequest (``/auth/verify?site=NAME``, fixed in the rendered location); the
console asks :func:`site_access` (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

from ark.config.schema import ROLE_ORDER

Access = Literal["allowed", "role_too_low", "unknown_site"]


def rank(role: str) -> int:
    """A role's place in ``ROLE_ORDER``; -1 for a role ARK does not know, which passes no site."""
    return ROLE_ORDER.index(role) if role in ROLE_ORDER else -1


def site_access(role: str, site: str, site_roles: Mapping[str, str]) -> Access:
    """Whether a user with ``role`` may open ``site``; a site not in ``site_roles`` is nobody's."""
    needed = site_roles.get(site)
    if needed is None:
        return "unknown_site"
    return "allowed" if rank(role) >= rank(needed) >= 0 else "role_too_low"


def visible_sites(role: str, links: Iterable[tuple[str, str]], site_roles: Mapping[str, str]) -> list[tuple[str, str]]:
    """``links`` (site, title) without the sites behind the sign-in that ``role`` may not open: the
    console's home page. Sites guarded otherwise (API keys, basic auth) are not in ``site_roles`` and stay.
    """
    return [(s, title) for s, title in links if s not in site_roles or site_access(role, s, site_roles) == "allowed"]
