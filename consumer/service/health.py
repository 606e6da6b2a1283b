"""Readiness: is this replica able to do its work right now?

Ready means the ledger of its partitions is restored (it owns keys and knows their state),
and the broker, the object store and the provider answer a TCP connection. Dependency checks
are cached for a few seconds so a probe storm costs nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

Address = tuple[str, int]


def address_of(endpoint: str, default_port: int) -> Address:
    """`host:port`, `http(s)://host[:port]/…` or `h1:p1,h2:p2` (the first) as (host, port)."""
    first = endpoint.split(",")[0].strip()
    parts = urlsplit(first if "://" in first else f"//{first}")
    if parts.port is not None:
        port = parts.port
    elif parts.scheme == "https":
        port = 443
    elif parts.scheme == "http":
        port = 80
    else:
        port = default_port
    return parts.hostname or "127.0.0.1", port


class Readiness:
    """Cached reachability of named dependencies."""

    def __init__(
        self,
        targets: Mapping[str, Address],
        *,
        ttl: float = 5.0,
        timeout: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._targets = dict(targets)
        self._ttl = ttl
        self._timeout = timeout
        self._clock = clock
        self._checked_at: float | None = None
        self._last: dict[str, bool] = {}
        self._lock = asyncio.Lock()

    async def dependencies(self) -> dict[str, bool]:
        """Which dependencies accepted a connection (at most `ttl` seconds old)."""
        async with self._lock:
            now = self._clock()
            if self._checked_at is None or now - self._checked_at >= self._ttl:
                names = list(self._targets)
                answers = await asyncio.gather(*(self._reachable(self._targets[n]) for n in names))
                self._last = dict(zip(names, answers, strict=True))
                self._checked_at = now
            return dict(self._last)

    async def _reachable(self, address: Address) -> bool:
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(*address), timeout=self._timeout
            )
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True
