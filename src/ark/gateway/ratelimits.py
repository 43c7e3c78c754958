"""Requests per minute, tokens per minute and requests at once, per key and per team.

rpm and tpm are token buckets that refill continuously (a full minute's worth
at most). A request needs one request-token and a tokens bucket that is not in
debt; what it used is taken from the tokens bucket when it ends, so a long
answer can put the bucket in debt and make the next request wait. The state is
owned by the event loop: no locks. Headers follow OpenAI's ``x-ratelimit-*``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ark.errors import ApiError
from ark.store import Key, Team
from ark.store.keys import Limits


class RateLimited(ApiError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


@dataclass(slots=True)
class Bucket:
    capacity: float
    level: float
    stamp: float

    @property
    def rate(self) -> float:  # per second
        return self.capacity / 60.0

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until the level reaches ``amount``."""
        return max(0.0, (amount - self.level) / self.rate)

    def reset_in(self) -> float:
        return max(0.0, (self.capacity - self.level) / self.rate)


@dataclass(slots=True)
class RateState:
    name: str
    alias: str  # the metrics label
    rpm: Bucket | None
    tpm: Bucket | None
    max_parallel: int | None
    parallel: int = 0


@dataclass(slots=True)
class Admission:
    states: list[RateState] = field(default_factory=list)
    finished: bool = False


def _bucket(limit: int | None, old: Bucket | None, now: float) -> Bucket | None:
    if limit is None:
        return None
    if old is not None and old.capacity == limit:
        return old
    return Bucket(float(limit), float(limit), now)


class RateLimits:
    def __init__(self, on_refusal: Callable[[str, str], None] | None = None) -> None:
        self.states: dict[str, RateState] = {}
        self._on_refusal = on_refusal or (lambda alias, limit: None)

    def sync(self, keys: Iterable[Key], teams: Iterable[Team], now: float) -> None:
        fresh: dict[str, RateState] = {}
        entries: list[tuple[str, str, str, Limits]] = [
            *((f"key:{k.id}", f"key {k.key_prefix}…", k.key_alias or k.key_prefix, k) for k in keys),
            *((f"team:{t.id}", f"team {t.alias or t.id}", t.alias or t.id, t) for t in teams),
        ]
        for ident, name, alias, limits in entries:
            if limits.rpm_limit is None and limits.tpm_limit is None and limits.max_parallel_requests is None:
                continue
            state = self.states.get(ident)
            if state is None:
                state = RateState(name, alias, None, None, None)
            # updated in place: requests in flight hold this object and count themselves out of it
            state.name, state.alias = name, alias
            state.rpm = _bucket(limits.rpm_limit, state.rpm, now)
            state.tpm = _bucket(limits.tpm_limit, state.tpm, now)
            state.max_parallel = limits.max_parallel_requests
            fresh[ident] = state
        self.states = fresh

    def admit(self, key: Key | None, now: float) -> Admission | None:
        if key is None:
            return None
        states = [
            s
            for s in (self.states.get(f"key:{key.id}"), self.states.get(f"team:{key.team_id}") if key.team_id else None)
            if s
        ]
        if not states:
            return None
        for state in states:
            for bucket in (state.rpm, state.tpm):
                if bucket is not None:
                    bucket.refill(now)
            if state.rpm is not None and state.rpm.level < 1:
                self._refuse(state, "rpm", f"{state.rpm.capacity:.0f} requests per minute", state.rpm.wait_for(1))
            if state.tpm is not None and state.tpm.level <= 0:
                self._refuse(state, "tpm", f"{state.tpm.capacity:.0f} tokens per minute", state.tpm.wait_for(1))
            if state.max_parallel is not None and state.parallel >= state.max_parallel:
                self._refuse(state, "parallel", f"{state.max_parallel} requests at once", 1.0)
        for state in states:
            if state.rpm is not None:
                state.rpm.level -= 1
            state.parallel += 1
        return Admission(states)

    def _refuse(self, state: RateState, limit: str, what: str, retry_after: float) -> None:
        self._on_refusal(state.alias, limit)
        raise RateLimited(
            f"Rate limit reached for the {state.name}: {what}. Retry in {retry_after:.1f} s.",
            retry_after=max(1.0, math.ceil(retry_after)),
            headers=headers(state),
        )

    @staticmethod
    def finish(admission: Admission | None, tokens: int) -> None:
        if admission is None or admission.finished:
            return
        admission.finished = True
        for state in admission.states:
            state.parallel -= 1
            if state.tpm is not None:
                state.tpm.level -= tokens


def headers(state: RateState | None) -> list[tuple[str, str]]:
    """OpenAI's x-ratelimit-* headers for the key's own limits (or its team's when the key has none)."""
    if state is None:
        return []
    out = []
    for kind, bucket in (("requests", state.rpm), ("tokens", state.tpm)):
        if bucket is not None:
            out += [
                (f"x-ratelimit-limit-{kind}", f"{bucket.capacity:.0f}"),
                (f"x-ratelimit-remaining-{kind}", f"{max(0, math.floor(bucket.level))}"),
                (f"x-ratelimit-reset-{kind}", f"{bucket.reset_in():.3f}s"),
            ]
    return out
