"""Waiting on conditions: the one way tests wait (never a bare sleep)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
) -> None:
    """Return once `condition()` holds; raise TimeoutError after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while True:
            outcome = condition()
            if outcome if isinstance(outcome, bool) else await outcome:
                return
            # Polling is deliberate: the state lives in other processes and servers.
            await asyncio.sleep(interval)
