"""X-Ark-Identity: a short-lived, signed statement "this request is on behalf of user N, signed in as session S".

``/auth/verify`` mints one for every request Nginx lets through; Nginx hands it to the application
behind it (Open WebUI...), which calls the gateway with its own API key. When such a call carries
the header, the gateway records the person in the ledger and the access log, so usage is counted
per person although the application uses one key.

Format: ``base64url(JSON payload) "." base64url(HMAC-SHA256(identity key, payload part))`` with the
payload ``{"u": user id, "n": name, "e": email, "s": session id, "x": expiry (Unix seconds)}``. The
session id is the ``user_sessions`` row's id (the SHA-256 of the cookie's token, never the token): a
token counts only while that session is live, so sign-out, `ark users disable` and `ark users passwd`
end it too (:mod:`ark.auth.revocation`). A token without one (minted before session ids) is refused.

The token grants nothing: the API key still decides what the request may do. A bad token (malformed,
tampered, expired, of an ended session) is only counted, by reason, and the request goes on unattributed;
so does a good one whose session could not be checked in time (``unchecked``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import orjson
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from ark.auth.revocation import LiveSessions
from ark.auth.signing import b64, derive, sign, unb64, unsign

MAX_TOKEN_CHARS = 2048
# unchecked: the session could not be checked in time (database slow or down): unattributed, not refused
OUTCOMES = ("accepted", "malformed", "bad_signature", "expired", "revoked", "unchecked")
_SESSION_ID = re.compile(r"^[0-9a-f]{64}$")  # ark.auth.users.session_id


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    name: str
    email: str
    session: str  # the user_sessions id it was minted for
    expires: int  # Unix seconds


def identity_key(secret: bytes) -> bytes:
    return derive(secret, "identity")


def mint(secret: bytes, identity: Identity, key: bytes | None = None) -> str:
    """The token for ``identity``; ``key`` (``identity_key(secret)``) saves deriving it on every call."""
    fields = {"u": identity.user_id, "n": identity.name, "e": identity.email, "s": identity.session}
    payload = b64(orjson.dumps({**fields, "x": identity.expires}))
    return sign(key or identity_key(secret), payload)


class IdentityVerifier:
    """Checks X-Ark-Identity tokens, and that their session is still live; counts the outcomes (for /metrics).

    ``sessions`` is shared with the console when both run in one process, so a sign-out there counts here
    at once; otherwise it asks the database, at most every couple of seconds per session.
    """

    def __init__(self, secret: bytes, sessions: LiveSessions, clock: Callable[[], float] = time.time) -> None:
        self._key = identity_key(secret)
        self.sessions = sessions
        self._clock = clock
        self.counts = dict.fromkeys(OUTCOMES, 0)

    async def verify(self, token: str) -> Identity | None:
        identity, outcome = self._check(token)
        if identity is not None:
            live = await self.sessions.is_live(identity.session)
            if live is None:
                identity, outcome = None, "unchecked"  # the lookup failed or is still running
            elif not live:
                identity, outcome = None, "revoked"  # signed out, disabled, password changed, or expired
        self.counts[outcome] += 1
        return identity

    def _check(self, token: str) -> tuple[Identity | None, str]:
        token = token.strip()
        if "." not in token or len(token) > MAX_TOKEN_CHARS:
            return None, "malformed"
        payload = unsign(self._key, token, MAX_TOKEN_CHARS)
        if payload is None:
            return None, "bad_signature"
        try:
            fields = orjson.loads(unb64(payload))
            identity = Identity(
                str(fields["u"]), str(fields["n"]), str(fields["e"]), str(fields["s"]), int(fields["x"])
            )
        except (ValueError, KeyError, TypeError):
            # signed by us but unreadable (a bug), or from before session ids ("s"): never trusted
            return None, "malformed"
        if not _SESSION_ID.match(identity.session):
            return None, "malformed"
        if identity.expires <= self._clock():
            return None, "expired"
        return identity, "accepted"


class IdentityCollector(Collector):
    """``ark_identity_tokens_total{outcome}`` from a verifier's counts, read at scrape time."""

    def __init__(self, verifier: Callable[[], IdentityVerifier | None]) -> None:
        self._verifier = verifier

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "ark_identity_tokens",
            "X-Ark-Identity headers seen by the gateway, by outcome (only accepted ones attribute usage).",
            labels=["outcome"],
        )
        verifier = self._verifier()
        if verifier is not None:
            for outcome, count in verifier.counts.items():
                family.add_metric([outcome], count)
        yield family
