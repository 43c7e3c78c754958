"""Background work that repeats: one loop for every "do this every N seconds, log and go on if it fails"."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable


async def every(
    seconds: float,
    step: Callable[[], Awaitable[object] | object],
    *,
    log: logging.Logger,
    failure: str,
    at_once: bool = False,
) -> None:
    """Run ``step`` every ``seconds`` until cancelled; a failure is logged and the next round comes as usual.

    ``at_once``: the first round runs now instead of after ``seconds``.
    """
    if not at_once:
        await asyncio.sleep(seconds)
    while True:
        try:
            result = step()
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception(failure)
        await asyncio.sleep(seconds)
