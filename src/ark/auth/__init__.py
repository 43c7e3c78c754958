"""ARK's own users: argon2id passwords, TOTP, sessions, sign-in throttling, identity tokens, and
which role may open which site.

HTTP lives in :mod:`ark.console`; this package holds the rules and the storage (docs/security.md).
"""

from __future__ import annotations

from ark.auth.access import rank, site_access, visible_sites
from ark.auth.identity import Identity, IdentityCollector, IdentityVerifier, mint
from ark.auth.revocation import LiveSessions
from ark.auth.service import AuthService, LoginResult
from ark.auth.signing import SecretFileError, load_secret
from ark.auth.throttle import Throttle
from ark.auth.users import ROLES, Session, User, UserError, UserStore

__all__ = [
    "ROLES",
    "AuthService",
    "Identity",
    "IdentityCollector",
    "IdentityVerifier",
    "LiveSessions",
    "LoginResult",
    "SecretFileError",
    "Session",
    "Throttle",
    "User",
    "UserError",
    "UserStore",
    "load_secret",
    "mint",
    "rank",
    "site_access",
    "visible_sites",
]
