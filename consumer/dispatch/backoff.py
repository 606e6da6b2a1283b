"""Waiting before trying again: one back-off rule and one `Retry-After` reader for all of genrelay.

Full jitter (a delay drawn uniformly below an exponentially growing ceiling) keeps replicas
and keys that failed together from retrying together; a server's `Retry-After` is a floor,
never shortened, but capped so a hostile or broken answer cannot park work for days.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime


def jittered(
    attempt: int, *, base: float, cap: float, retry_after: float | None = None, floor: float = 0.0
) -> float:
    """The delay before the `attempt`-th retry (1-based): uniform in [floor·ceiling, ceiling],
    ceiling = min(cap, base·2^(attempt-1)); at least `retry_after` (capped at `cap`)."""
    ceiling = min(cap, base * 2.0 ** max(0, attempt - 1))
    delay = random.uniform(floor * ceiling, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """`Retry-After` in seconds (delta-seconds or an HTTP date), or None when absent or bad.

    `headers` must be case-insensitive (httpx's) or use lowercase names.
    """
    value = headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
        return max(0.0, seconds)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


class Pacer:
    """Spaces calls at most `rate` per second (a burst of up to one second's worth passes at
    once), so a thousand timers that fire together become a steady stream of requests."""

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("the rate must be positive")
        self._interval = 1.0 / rate
        self._burst = 1.0  # seconds of calls that may go at once
        self._clock = clock
        self._next = 0.0  # when the next call may go, once the burst is used up

    def delay(self) -> float:
        """Reserve the next call's turn; how long to wait for it."""
        now = self._clock()
        start = max(self._next, now - self._burst)
        self._next = start + self._interval
        return max(0.0, start - now)

    async def wait(self) -> None:
        if (delay := self.delay()) > 0:
            await asyncio.sleep(delay)
