"""A token-bucket rate limiter with an injectable clock, and the `--rate` syntax (`20/s`)."""

import asyncio
import re
import time
from collections.abc import Awaitable, Callable

_RATE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(?:/\s*(s|sec|m|min|h|hour))?\s*$")
_SECONDS_PER_UNIT = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0}


def parse_rate(text: str) -> float:
    """Events per second from `N`, `N/s`, `N/min` or `N/h`; raise ValueError otherwise."""
    match = _RATE.match(text)
    if match is None or float(match[1]) <= 0:
        raise ValueError(f"rate {text!r} is not a positive number per s, min or h (e.g. 20/s)")
    return float(match[1]) / _SECONDS_PER_UNIT[match[2] or "s"]


class RateLimiter:
    """At most `rate` acquisitions per second on average, and bursts of at most `burst`.

    `reserve()` books the next slot and says how long to wait for it; slots are booked in
    call order, so concurrent callers share the rate instead of each getting it.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._updated = clock()

    def reserve(self) -> float:
        """Book one slot; return the seconds until it is due (0 when it is due now)."""
        now = self._clock()
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
        self._updated = now
        # Tokens may go negative: that is the debt of slots booked ahead of time.
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self._rate

    async def acquire(self) -> None:
        """Wait until the next slot is due."""
        delay = self.reserve()
        if delay > 0:
            await self._sleep(delay)
