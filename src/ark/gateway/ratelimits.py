"""Requests per minute, tokens per minute and requests at once, per key, per team and per person.

rpm and tpm are token buckets that refill continuously (a full minute's worth
at most). A request needs one request-token and a tokens bucket that is not in
debt; what it used is taken from the tokens bucket when it ends, so a long
answer can put the bucket in debt and make the next request wait. The state is
owned by the event loop: no locks. Headers follow OpenAI's ``x-ratelimit-*``.

When several gateways share the database (``shared``), the buckets live there
(ark/store/allotments.py): a process's rpm bucket holds only the request-tokens it
took from the shared one, its tpm bucket is the shared level minus what it has
not charged yet, and it runs as many requests at once as it holds slots.
``admit`` answers with a :class:`Shortfall` when any of them is short; the
caller asks the database and calls again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ark.errors import ApiError
from ark.store import Key, Team
from ark.store.keys import Person, limit_accounts


class RateLimited(ApiError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


@dataclass(slots=True)
class Bucket:
    capacity: float
    level: float
    stamp: float
    rate: float = field(init=False)  # per second
    ms_per_unit: float = field(init=False)  # milliseconds to refill one
    limit_text: str = field(init=False)  # for the x-ratelimit-limit-* header

    def __post_init__(self) -> None:
        self.rate = self.capacity / 60.0
        self.ms_per_unit = 60_000.0 / self.capacity
        self.limit_text = f"{self.capacity:.0f}"

    def wait_for(self, amount: float) -> float:
        """Seconds until the level reaches ``amount``."""
        return max(0.0, (amount - self.level) / self.rate)


@dataclass(slots=True)
class RateState:
    name: str
    alias: str  # the metrics label
    rpm: Bucket | None
    tpm: Bucket | None
    max_parallel: int | None
    parallel: int = 0
    template: bytes = b""  # the x-ratelimit-* header lines, to fill in
    # shared database only
    slots: int = 0  # requests at once this process may run
    uncharged: int = 0  # tokens used here and not yet charged to the shared tpm bucket
    shared_requests: float = 0.0  # the shared rpm bucket when last seen
    used_at: float = 0.0  # monotonic: the last admission or finish


@dataclass(slots=True)
class Admission:
    states: list[RateState] = field(default_factory=list)
    finished: bool = False


@dataclass(slots=True)
class Shortfall:
    """What to ask the database for: [(subject, state, request-tokens, refresh tpm, slots)]."""

    needs: list[tuple[str, RateState, int, bool, int]]


def _bucket(limit: int | None, old: Bucket | None, now: float, level: float | None = None) -> Bucket | None:
    if limit is None:
        return None
    if old is not None and old.capacity == limit:
        return old
    return Bucket(float(limit), float(limit) if level is None else level, now)


class RateLimits:
    def __init__(self, on_refusal: Callable[[str, str], None] | None = None, *, shared: bool = False) -> None:
        self.shared = shared
        self.states: dict[str, RateState] = {}
        self.by_key: dict[str, list[tuple[str, RateState]]] = {}  # key id -> its state and its team's
        self.by_person: dict[str, tuple[str, RateState]] = {}  # user id -> the person's state
        self._on_refusal = on_refusal or (lambda alias, limit: None)

    def sync(self, keys: Iterable[Key], teams: Iterable[Team], now: float, people: Iterable[Person] = ()) -> None:
        fresh: dict[str, RateState] = {}
        keys, people = list(keys), list(people)
        for ident, name, alias, limits in limit_accounts(keys, teams, people):
            if limits.rpm_limit is None and limits.tpm_limit is None and limits.max_parallel_requests is None:
                continue
            state = self.states.get(ident)
            if state is None:
                state = RateState(name, alias, None, None, None)
            # updated in place: requests in flight hold this object and count themselves out of it
            state.name, state.alias = name, alias
            state.rpm = _bucket(limits.rpm_limit, state.rpm, now, 0.0 if self.shared else None)
            state.tpm = _bucket(limits.tpm_limit, state.tpm, now, 0.0 if self.shared else None)
            state.max_parallel = limits.max_parallel_requests
            state.template = _template(state.rpm, state.tpm)
            fresh[ident] = state
        self.states = fresh
        self.by_key = {}
        for k in keys:
            pairs = [(i, fresh[i]) for i in (f"key:{k.id}", f"team:{k.team_id}") if i in fresh]
            if pairs:
                self.by_key[k.id] = pairs
        self.by_person = {p.id: (f"user:{p.id}", fresh[f"user:{p.id}"]) for p in people if f"user:{p.id}" in fresh}

    def admit(self, key: Key | None, now: float, person: str | None = None) -> Admission | Shortfall | None:
        """Admit a request of ``key`` (and its team), made for ``person`` (a user id) when a UI says so (the
        master key has no limits of its own; a person it calls for has theirs)."""
        pairs = self.by_key.get(key.id) if key is not None else None
        if person is not None and person in self.by_person:
            pairs = [*(pairs or ()), self.by_person[person]]
        if not pairs:
            return None
        states = [state for _, state in pairs] if len(pairs) > 1 else [pairs[0][1]]
        if self.shared:
            needs = [
                (
                    subject,
                    s,
                    1 if s.rpm is not None and s.rpm.level < 1 else 0,
                    s.tpm is not None and s.tpm.level <= 0,
                    1 if s.max_parallel is not None and s.parallel >= s.slots else 0,
                )
                for subject, s in pairs
            ]
            needs = [need for need in needs if need[2] or need[3] or need[4]]
            if needs:
                return Shortfall(needs)
            for state in states:
                if state.rpm is not None:
                    state.rpm.level -= 1
                state.parallel += 1
                state.used_at = now
            return Admission(states)
        for state in states:  # the hot path: refills written out
            rpm, tpm = state.rpm, state.tpm
            if rpm is not None:
                level = rpm.level + (now - rpm.stamp) * rpm.rate
                rpm.level, rpm.stamp = (level if level < rpm.capacity else rpm.capacity), now
                if rpm.level < 1:
                    self.refuse(state, "rpm", rpm.wait_for(1))
            if tpm is not None:
                level = tpm.level + (now - tpm.stamp) * tpm.rate
                tpm.level, tpm.stamp = (level if level < tpm.capacity else tpm.capacity), now
                if tpm.level <= 0:
                    self.refuse(state, "tpm", tpm.wait_for(1))
            if state.max_parallel is not None and state.parallel >= state.max_parallel:
                self.refuse(state, "parallel", 1.0)
        for state in states:
            if state.rpm is not None:
                state.rpm.level -= 1
            state.parallel += 1
        return Admission(states)

    def refuse(self, state: RateState, limit: str, retry_after: float) -> None:
        what = {
            "rpm": f"{state.rpm.capacity if state.rpm else 0:.0f} requests per minute",
            "tpm": f"{state.tpm.capacity if state.tpm else 0:.0f} tokens per minute",
            "parallel": f"{state.max_parallel} requests at once",
        }[limit]
        self._on_refusal(state.alias, limit)
        raise RateLimited(
            f"Rate limit reached for the {state.name}: {what}. Retry in {retry_after:.1f} s.",
            retry_after=max(1.0, math.ceil(retry_after)),
            headers=[(n, v) for n, _, v in (line.partition(": ") for line in headers(state).decode().splitlines())],
        )

    @staticmethod
    def finish(admission: Admission | None, tokens: int, now: float = 0.0) -> None:
        if admission is None or admission.finished:
            return
        admission.finished = True
        for state in admission.states:
            state.parallel -= 1
            state.used_at = now
            if state.tpm is not None:
                state.tpm.level -= tokens
                state.uncharged += tokens


def _template(rpm: Bucket | None, tpm: Bucket | None) -> bytes:
    """The x-ratelimit-* header lines with the limits filled in and %d for remaining and reset (ms)."""
    out = b""
    for kind, bucket in ((b"requests", rpm), (b"tokens", tpm)):
        if bucket is not None:
            out += b"x-ratelimit-limit-%s: %s\r\nx-ratelimit-remaining-%s: %%d\r\nx-ratelimit-reset-%s: %%dms\r\n" % (
                kind,
                bucket.limit_text.encode(),
                kind,
                kind,
            )
    return out


def headers(state: RateState | None) -> bytes:
    """OpenAI's x-ratelimit-* header lines for the key's own limits (or its team's when the key has none)."""
    if state is None:
        return b""
    rpm, tpm = state.rpm, state.tpm  # %d truncates the floats
    if rpm is not None:
        # shared database: the rpm bucket here holds what this process took; the rest is in the database
        level = rpm.level + state.shared_requests
        requests = (level if level > 0 else 0, max(0.0, (rpm.capacity - level) * rpm.ms_per_unit))
        if tpm is None:
            return state.template % requests
        return state.template % (
            *requests,
            tpm.level if tpm.level > 0 else 0,
            (tpm.capacity - tpm.level) * tpm.ms_per_unit,
        )
    if tpm is not None:
        return state.template % (tpm.level if tpm.level > 0 else 0, (tpm.capacity - tpm.level) * tpm.ms_per_unit)
    return b""
