"""The sections of ARK's events: how webhooks are delivered (``[events]``) and where (``[webhooks.NAME]``)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from ark.config.declare import Scope, section, setting, show
from ark.config.types import Float, Int, Secret, SecretStr, Str, Url
from ark.errors import ConfigError

SECRET_PREFIX = "whsec_"  # noqa: S105 - Standard Webhooks' form of a signing secret: whsec_ and base64


def _complete_events(values: dict[str, Any], scope: Scope) -> dict[str, Any]:
    parts = [part.strip() for part in values["budget_thresholds"].split(",") if part.strip()]
    if not all(part.isascii() and part.isdigit() and 0 < int(part) <= 1000 for part in parts):
        raise ConfigError(
            f"{scope.where('budget_thresholds')} = {show(values['budget_thresholds'])}: "
            "expected percentages, e.g. 50,80,100"
        )
    return values


@section(complete=_complete_events)
class EventsSettings:
    """ARK's events (budget thresholds, keys, engines, models) sent as signed webhooks (docs/automation.md)."""

    max_attempts: int = setting(
        Int(1, 100), 10, "Deliveries tried per event and webhook; then it goes to the dead letters."
    )
    retry_base_s: float = setting(
        Float(0.01), 10.0, "Seconds before the first retry; each next one waits twice as long (with jitter)."
    )
    retry_max_s: float = setting(Float(0.01), 3600.0, "The longest wait between two tries.")
    timeout_s: float = setting(Float(0.1, hi=300.0), 10.0, "Seconds a receiver has to answer a delivery.")
    budget_thresholds: str = setting(
        Str(),
        "50,80,100",
        "Percentages of a key's, team's or person's budget that send budget.threshold once per budget period.",
    )

    def thresholds(self) -> tuple[int, ...]:
        return tuple(sorted({int(part) for part in self.budget_thresholds.split(",") if part.strip()}))


def _complete_webhook(values: dict[str, Any], scope: Scope) -> dict[str, Any]:
    if len(values["name"]) > 64 or not all(c.isalnum() or c in "-_" for c in values["name"]):
        raise ConfigError(f"{scope.label}: a webhook's name is up to 64 letters, digits, '-' and '_'")
    secret = values["secret"].value
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True) if secret else b""
    except binascii.Error:
        key = b""
    if not secret.startswith(SECRET_PREFIX) or len(key) < 24:
        raise ConfigError(
            f"{scope.where('secret')}: expected a Standard Webhooks secret, whsec_ and 24 or more base64 bytes "
            "(`ark events secret` makes one)"
        )
    for pattern in _patterns(values["events"]):
        if not pattern or pattern.count("*") > 1 or ("*" in pattern and not pattern.endswith("*")):
            raise ConfigError(f"{scope.where('events')} = {show(values['events'])}: expected types or prefixes*")
    return values


def _patterns(text: str) -> list[str]:
    return [part.strip() for part in text.split(",")]


@section(complete=_complete_webhook)
class WebhookSettings:
    """A receiver of ARK's events: each delivery is a POST of the event, signed with ``secret``."""

    name: str  # NAME of [webhooks.NAME]
    url: str = setting(
        Url(), None, "Where events are POSTed (an n8n Webhook node's URL, a Slack relay...).", required=True
    )
    secret: Secret = setting(
        SecretStr(min_length=30, allow_empty=False),
        None,
        "The signing secret (whsec_...; `ark events secret` makes one); the receiver checks each delivery with it.",
        required=True,
    )
    events: str = setting(
        Str(non_empty=True),
        "*",
        'The events sent here: types and prefixes, comma-separated ("budget.*, key.revoked"); "*": every one.',
    )

    def wants(self, event_type: str) -> bool:
        return any(
            p == event_type or (p.endswith("*") and event_type.startswith(p[:-1])) for p in _patterns(self.events)
        )
