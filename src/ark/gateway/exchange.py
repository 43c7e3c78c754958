"""What one API request did, kept while it runs and recorded (metrics, access log) when it ends."""

from __future__ import annotations

import functools
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from ark.arbiter.leases import Lease
from ark.errors import ApiError
from ark.gateway.budgets import FREE, Price, Reservation
from ark.gateway.ratelimits import Admission
from ark.store.keys import Key
from ark.store.ledger import UsageRow
from ark.wire import Responder

ErrorShape = Callable[[ApiError], bytes]  # an API's error body: OpenAI's, Ollama's...
UNKNOWN_MODEL = "unknown"  # the metrics label of requests that named no servable model
JSON_HEADERS = [("content-type", "application/json")]


async def send_error(responder: Responder, exc: ApiError, shape: ErrorShape | None = None) -> None:
    """An error answered in OpenAI's shape (or ``shape``'s), with its Retry-After and extra headers."""
    headers = [*JSON_HEADERS, *exc.headers]
    if exc.retry_after is not None:
        headers.append(("retry-after", str(max(1, round(exc.retry_after)))))
    await responder.send(exc.status, (shape or error_body)(exc), headers)


def error_body(exc: ApiError) -> bytes:
    """The one place that shapes errors: OpenAI's ``{"error": {message, type, param, code}}``."""
    error = {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}
    return orjson.dumps({"error": error})


@functools.lru_cache(maxsize=4)
def _utc_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def utc_iso(now: float) -> str:
    """``datetime.fromtimestamp(now, UTC).isoformat()`` with microseconds, at a fraction of its cost."""
    return f"{_utc_second(int(now))}.{int(now * 1_000_000) % 1_000_000:06d}+00:00"


_REQUEST_IDS = itertools.count()
_ID_PREFIX = os.urandom(6).hex()  # this process's; the counter makes each id unique within it


def request_id() -> str:
    """24 hex digits, unique across processes (48 random bits each) without a system call per request."""
    return f"{_ID_PREFIX}{next(_REQUEST_IDS) & 0xFFFFFFFFFFFF:012x}"


@dataclass(slots=True)
class Exchange:
    path: str
    started: float  # time.perf_counter() at arrival
    request_id: str = ""  # answered as x-request-id, kept in the ledger and the access log
    key: Key | None = None  # None: the master key
    authenticated: bool = False
    price: Price = FREE
    reservation: Reservation | None = None
    lease: Lease | None = None  # the request's lease on its model (GPU arbiter)
    admission: Admission | None = None
    cost: float = 0.0
    model: str = UNKNOWN_MODEL
    alias: str | None = None
    status: int = 200
    stream: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_estimate: int = 0  # tokens charged for the prompt when the engine never says (a stream cut short)
    ttft: float | None = None
    error: str | None = None
    prompt: Any = None
    output: str | None = None
    person: str | None = None  # whom a UI called for: X-Ark-Identity's user, or a trusted key's person header
    person_id: str | None = None  # that person's user id when ARK knows them (their limits apply)
    kind: str = "text"  # what the request makes: text, or image (the ledger's kind)
    images: int = 0  # images made

    @property
    def key_label(self) -> str:
        """The key's alias (or prefix) for metrics and logs; "master" for the master key."""
        return "master" if self.key is None else (self.key.key_alias or self.key.key_prefix)

    def usage_row(self, elapsed: float) -> UsageRow:
        key = self.key
        return UsageRow(
            request_id=self.request_id,
            time=utc_iso(time.time()),
            path=self.path,
            status=self.status,
            latency_ms=round(elapsed * 1000, 3),
            ttft_ms=None if self.ttft is None else round(self.ttft * 1000, 3),
            key_id=key.id if key else None,
            key_alias=key.key_alias if key else None,
            team_id=key.team_id if key else None,
            user_id=key.user_id if key else None,
            model_requested=self.alias or (self.model if self.model != UNKNOWN_MODEL else None),
            model_served=self.model if self.model != UNKNOWN_MODEL else None,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cost=self.cost,
            person=self.person,
            person_id=self.person_id,
            kind=self.kind,
            images=self.images,
        )

    def fail(self, exc: ApiError) -> None:
        self.status, self.error = exc.status, exc.code

    def record(self, elapsed: float, with_text: bool) -> dict[str, Any]:
        now = time.time()
        record: dict[str, Any] = {
            "time": f"{_utc_second(int(now))}.{int(now * 1000) % 1000:03d}Z",
            "request_id": self.request_id,
            "key": self.key_label,
            "path": self.path,
            "model": self.model,
            "alias": self.alias,
            "status": self.status,
            "stream": self.stream,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "latency_ms": round(elapsed * 1000, 3),
            "ttft_ms": None if self.ttft is None else round(self.ttft * 1000, 3),
        }
        if self.person:
            record["person"] = self.person
        if self.images:
            record["images"] = self.images
        if self.error:
            record["error"] = self.error
        if with_text:
            record["prompt"] = self.prompt
            record["output"] = self.output
        return record
