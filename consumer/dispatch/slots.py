"""In-flight limits with priority: `normal` work is admitted ahead of `low` when slots are scarce.

A slot is held from a key's first submit until its outcome, globally, per endpoint and per
tenant, so a bulk run can fill the provider's queue only as far as the limits allow and
interactive traffic overtakes it whenever a slot frees up. A waiter blocked only by its
endpoint's or its tenant's limit is skipped over: one saturated endpoint or tenant never holds
back the others.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections import Counter
from dataclasses import dataclass, field

from genrelay.consumer.provider.provider import Priority

_RANK = {Priority.NORMAL: 0, Priority.LOW: 1}


@dataclass(order=True)
class _Waiter:
    rank: int
    due: float  # the request's deadline (epoch seconds; none: infinity): earlier goes first
    seq: int
    endpoint: str = field(compare=False)
    tenant: str | None = field(compare=False)
    future: asyncio.Future[None] = field(compare=False)


class Slots:
    """Counting limits (global, per endpoint, per tenant) with a priority queue of waiters."""

    def __init__(self, total: int, per_endpoint: int, per_tenant: int | None = None) -> None:
        self.total = total
        self.per_endpoint = per_endpoint
        self.per_tenant = per_tenant
        self._used = 0
        self._by_endpoint: Counter[str] = Counter()
        self._by_tenant: Counter[str] = Counter()
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

    def available(self, endpoint: str, tenant: str | None = None) -> bool:
        """Whether `acquire` would grant a slot at once."""
        return not self._waiters and self._free(endpoint, tenant)

    def try_acquire(self, endpoint: str, tenant: str | None = None) -> bool:
        """Take a slot if one is free without waiting (nobody is queued ahead)."""
        if not self.available(endpoint, tenant):
            return False
        self._take(endpoint, tenant)
        return True

    async def acquire(
        self,
        endpoint: str,
        priority: Priority,
        tenant: str | None = None,
        deadline: float | None = None,
    ) -> None:
        """Wait for a slot; normal-priority waiters are served before low-priority ones, and
        within a priority, earlier deadlines first, then in arrival order."""
        if not self._waiters and self._free(endpoint, tenant):
            self._take(endpoint, tenant)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        due = math.inf if deadline is None else deadline
        waiter = _Waiter(_RANK[priority], due, next(self._seq), endpoint, tenant, future)
        heapq.heappush(self._waiters, waiter)
        self._wake()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(endpoint, tenant)  # granted while being cancelled: hand it back
            raise

    def force(self, endpoint: str, tenant: str | None = None) -> None:
        """Count a slot without waiting: a job restored from the ledger is already in flight
        at the provider. Over a limit, new work waits until enough of it has finished."""
        self._take(endpoint, tenant)

    def release(self, endpoint: str, tenant: str | None = None) -> None:
        self._used -= 1
        _decrement(self._by_endpoint, endpoint)
        if tenant is not None:
            _decrement(self._by_tenant, tenant)
        self._wake()

    def _free(self, endpoint: str, tenant: str | None) -> bool:
        return self._used < self.total and not self._blocked(endpoint, tenant)

    def _blocked(self, endpoint: str, tenant: str | None) -> bool:
        """Whether the endpoint's or the tenant's own limit holds this work back."""
        if self._by_endpoint[endpoint] >= self.per_endpoint:
            return True
        limit = self.per_tenant
        return tenant is not None and limit is not None and self._by_tenant[tenant] >= limit

    def _take(self, endpoint: str, tenant: str | None) -> None:
        self._used += 1
        self._by_endpoint[endpoint] += 1
        if tenant is not None:
            self._by_tenant[tenant] += 1

    def _wake(self) -> None:
        # Serve waiters in priority order, skipping those blocked by their own limits.
        blocked: list[_Waiter] = []
        while self._waiters and self._used < self.total:
            waiter = heapq.heappop(self._waiters)
            if waiter.future.done():
                continue
            if self._blocked(waiter.endpoint, waiter.tenant):
                blocked.append(waiter)
                continue
            self._take(waiter.endpoint, waiter.tenant)
            waiter.future.set_result(None)
        for waiter in blocked:
            heapq.heappush(self._waiters, waiter)


def _decrement(counts: Counter[str], name: str) -> None:
    counts[name] -= 1
    if counts[name] <= 0:
        del counts[name]
