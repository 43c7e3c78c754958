"""Which sessions are still live, for the gateway's identity check: a small cache over ``user_sessions``.

An X-Ark-Identity token names the session it was minted for, and the gateway attributes usage only
while that session is live. The database is the truth: `ark users disable` and `passwd` write it from
another process, and gateways on a shared database each have a console. Asking it on every API request
would put a query on the hot path, so answers are kept:

- "live" for ``live_s`` (2 s), then asked again: a session ended elsewhere stops counting within that;
- "ended" for good: an ended session never comes back (its row is deleted, never re-inserted).

The console in the same process (`ark up`) reports what it learns at once: :meth:`ended` at sign-out
and whenever a check finds a signed cookie's session gone, :meth:`seen` when a check finds it live. A
sign-out at this console is therefore refused from the very next request.

Owned by the event loop: only loop code touches ``_live``, ``_ended`` and ``_pending``; lookups run on
a worker thread and their answers are stored back on the loop. At most one lookup per session is in
flight; requests that need the same answer wait for it, but for ``wait_s`` (0.25 s) at most: the header
only attributes usage, so a slow database (an exhausted pool waits up to 30 s for a connection) must
not hold API requests back. A request that stops waiting, or whose lookup failed, gets None
("unchecked"): it goes on unattributed and nothing is cached for it; a lookup still running finishes in
the background and fills the cache for the requests after it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

log = logging.getLogger("ark.auth")

LIVE_S = 2.0  # how long a "live" answer is trusted: the longest a revocation made elsewhere goes unseen
WAIT_S = 0.25  # the longest a request waits for a lookup before it goes on unattributed
MAX_ENTRIES = 10_000  # per kind; only ids from tokens we signed get here, so this bounds real sessions
_COMPLAIN_EVERY_S = 60.0


class LiveSessions:
    """``await is_live(session_id)``; ``lookup(session_id) -> bool`` is blocking (the database)."""

    def __init__(
        self,
        lookup: Callable[[str], bool],
        *,
        live_s: float = LIVE_S,
        wait_s: float = WAIT_S,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._live_s = live_s
        self._wait_s = wait_s
        self._max = max_entries
        self._clock = clock
        self._live: dict[str, float] = {}  # session id -> trusted until (clock), oldest first
        self._ended: dict[str, None] = {}  # an ordered set: final, oldest first
        self._pending: dict[str, asyncio.Task[bool | None]] = {}
        self._complained = -_COMPLAIN_EVERY_S
        self.lookups = 0  # database lookups made (tests, debugging)

    async def is_live(self, session_id: str) -> bool | None:
        """Whether the session is live; None when that is unknown: the lookup failed, or took over ``wait_s``."""
        if session_id in self._ended:
            return False
        until = self._live.get(session_id)
        if until is not None and until > self._clock():
            return True
        task = self._pending.get(session_id)
        if task is None:
            task = asyncio.create_task(self._ask(session_id), name="ark-session-lookup")
            self._pending[session_id] = task
        # shielded: neither a request that goes away nor one that stops waiting cancels the lookup, which
        # others may wait for and which fills the cache when it ends
        try:
            async with asyncio.timeout(self._wait_s):
                return await asyncio.shield(task)
        except TimeoutError:
            return None

    def seen(self, session_id: str) -> None:
        """The console just read this session from the database: live (unless it ended meanwhile)."""
        if session_id not in self._ended:
            self._remember_live(session_id)

    def ended(self, session_id: str) -> None:
        """Signed out here, or found gone: refused from now on, whatever a lookup in flight answers."""
        self._live.pop(session_id, None)
        self._ended[session_id] = None
        if len(self._ended) > self._max:
            del self._ended[next(iter(self._ended))]  # forgotten, not revived: the database says ended too

    async def _ask(self, session_id: str) -> bool | None:
        try:
            self.lookups += 1
            live = await asyncio.to_thread(self._lookup, session_id)
        except Exception as exc:  # attribution only: the request goes on unattributed, nothing is cached
            now = self._clock()
            if now - self._complained >= _COMPLAIN_EVERY_S:
                self._complained = now
                log.warning("identity: cannot check a session (%s); requests go unattributed meanwhile", exc)
            return None
        finally:
            self._pending.pop(session_id, None)
        if session_id in self._ended:  # ended while we asked: ended wins
            return False
        if live:
            self._remember_live(session_id)
        else:
            self.ended(session_id)
        return live

    def _remember_live(self, session_id: str) -> None:
        self._live.pop(session_id, None)  # re-inserted at the end: the dict stays oldest first
        self._live[session_id] = self._clock() + self._live_s
        if len(self._live) > self._max:
            del self._live[next(iter(self._live))]
