"""Admission: may this key's request start now (rate limits, parallel slots), and what may it cost
(a budget reservation). One object for both cases, so the request path does not branch on them:

- :class:`LocalAdmission`: one gateway, its limits in memory (``RateLimits``, ``Budgets``) — the
  answer is immediate, a refusal raises;
- :class:`ark.gateway.allotments.Allotments`: several gateways on one database — the same in-memory
  limits, grown from the database's shared totals when they run short.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from ark.clock import Clock
from ark.gateway.budgets import Budgets, Price, Reservation
from ark.gateway.budgets import Shortfall as BudgetShortfall
from ark.gateway.ratelimits import Admission, RateLimits
from ark.gateway.ratelimits import Shortfall as RateShortfall
from ark.store import Key


class Gate(Protocol):
    """``person``: the user id a request is made for (a UI's trusted header), whose limits apply too."""

    async def admit(self, key: Key | None, person: str | None = None) -> Admission | None: ...

    async def reserve(
        self,
        key: Key | None,
        price: Price,
        prompt: int,
        completion: int | None,
        seconds: float,
        now: datetime,
        person: str | None = None,
    ) -> Reservation | None: ...


class LocalAdmission:
    """One gateway: the limits in memory are the whole truth (a shortfall is a refusal, raised there)."""

    def __init__(self, rates: RateLimits, budgets: Budgets, clock: Clock) -> None:
        self.rates, self.budgets, self.clock = rates, budgets, clock

    async def admit(self, key: Key | None, person: str | None = None) -> Admission | None:
        result = self.rates.admit(key, self.clock.monotonic(), person)
        if isinstance(result, RateShortfall):  # only limits built with shared=True answer so
            raise TypeError("shared rate limits need the database's admission (Allotments)")
        return result

    async def reserve(
        self,
        key: Key | None,
        price: Price,
        prompt: int,
        completion: int | None,
        seconds: float,
        now: datetime,
        person: str | None = None,
    ) -> Reservation | None:
        result = self.budgets.reserve(key, price, prompt, completion, seconds, now, person)
        if isinstance(result, BudgetShortfall):
            raise TypeError("shared budgets need the database's admission (Allotments)")
        return result
