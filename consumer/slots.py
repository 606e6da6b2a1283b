"""In-flight limits with priority: `normal` work is admitted ahead of `low` when slots are scarce.

A slot is held from a key's first submit until its outcome, globally and per endpoint, so a
bulk run can fill the provider's queue only as far as the limits allow and interactive
traffic overtakes it whenever a slot frees up.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import Counter
from dataclasses import dataclass, field

from genrelay.consumer.provider import Priority

_RANK = {Priority.NORMAL: 0, Priority.LOW: 1}


@dataclass(order=True)
class _Waiter:
    rank: int
    seq: int
    endpoint: str = field(compare=False)
    future: asyncio.Future[None] = field(compare=False)


class Slots:
    """Counting limits (global and per endpoint) with a priority queue of waiters."""

    def __init__(self, total: int, per_endpoint: int) -> None:
        self.total = total
        self.per_endpoint = per_endpoint
        self._used = 0
        self._by_endpoint: Counter[str] = Counter()
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()

    @property
    def used(self) -> int:
        return self._used

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.future.done())

    def in_use(self, endpoint: str) -> int:
        return self._by_endpoint[endpoint]

    def by_endpoint(self) -> dict[str, int]:
        return dict(self._by_endpoint)

    def available(self, endpoint: str) -> bool:
        """Whether `acquire` would grant a slot at once."""
        return not self._waiters and self._free(endpoint)

    def try_acquire(self, endpoint: str) -> bool:
        """Take a slot if one is free without waiting (nobody is queued ahead)."""
        if not self.available(endpoint):
            return False
        self._take(endpoint)
        return True

    async def acquire(self, endpoint: str, priority: Priority) -> None:
        """Wait for a slot; normal-priority waiters are served before low-priority ones."""
        if not self._waiters and self._free(endpoint):
            self._take(endpoint)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, _Waiter(_RANK[priority], next(self._seq), endpoint, future))
        self._wake()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(endpoint)  # granted while being cancelled: hand it back
            raise

    def force(self, endpoint: str) -> None:
        """Take a slot without waiting (a job restored from the ledger is already in flight)."""
        self._take(endpoint)

    def release(self, endpoint: str) -> None:
        self._used -= 1
        self._by_endpoint[endpoint] -= 1
        if self._by_endpoint[endpoint] <= 0:
            del self._by_endpoint[endpoint]
        self._wake()

    def _free(self, endpoint: str) -> bool:
        return self._used < self.total and self._by_endpoint[endpoint] < self.per_endpoint

    def _take(self, endpoint: str) -> None:
        self._used += 1
        self._by_endpoint[endpoint] += 1

    def _wake(self) -> None:
        # Serve waiters in priority order; one blocked only by its endpoint's limit is skipped
        # over, so a saturated endpoint cannot hold back work for the others.
        blocked: list[_Waiter] = []
        while self._waiters and self._used < self.total:
            waiter = heapq.heappop(self._waiters)
            if waiter.future.done():
                continue
            if self._by_endpoint[waiter.endpoint] >= self.per_endpoint:
                blocked.append(waiter)
                continue
            self._take(waiter.endpoint)
            waiter.future.set_result(None)
        for waiter in blocked:
            heapq.heappush(self._waiters, waiter)
