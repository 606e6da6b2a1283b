"""In-flight limits with priority and fair shares between tenants.

A slot is held from a key's submit until its outcome, globally, per endpoint and per tenant,
so a bulk run can fill the provider's queue only as far as the limits allow. When a slot
frees up it goes, in this order:

1. to the best priority that has work waiting (`normal` ahead of `low`);
2. within it, to the tenant furthest below its share: its weight's part of the slots held
   (weights from settings, 1 by default) minus the slots it holds; between tenants equally
   far below, to the one granted least so far for its weight (so a share that is not a whole
   number of slots, 7.5 of 10, alternates between 7 and 8). A tenant with nothing waiting is
   not a candidate, so its share is lent to the others until it has work again. Under
   saturation the slots held, and so the completions, follow the weights, and a tenant that
   starts sending behind another's flood gets the next free slots, not a place behind it;
3. within the tenant, to the earliest deadline, then the earliest arrival.

A waiter blocked only by its endpoint's or its tenant's own limit is passed over: one
saturated endpoint or tenant never holds back the others. Work without a tenant is one more
tenant (named "") for sharing. The choice is deterministic: the same arrivals and releases
always grant the same slots.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from genrelay.consumer.provider.provider import Priority

_RANK = {Priority.NORMAL: 0, Priority.LOW: 1}
_NO_TENANT = ""


@dataclass(order=True)
class _Waiter:
    due: float  # the request's deadline (epoch seconds; none: infinity): earlier goes first
    seq: int
    endpoint: str = field(compare=False)
    tenant: str | None = field(compare=False)
    future: asyncio.Future[None] = field(compare=False)


class Slots:
    """Counting limits (global, per endpoint, per tenant) with fair queues of waiters."""

    def __init__(
        self,
        total: int,
        per_endpoint: int,
        per_tenant: int | None = None,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        self.total = total
        self.per_endpoint = per_endpoint
        self.per_tenant = per_tenant
        self._weights = dict(weights or {})
        self._used = 0
        self._by_endpoint: Counter[str] = Counter()
        self._by_tenant: Counter[str] = Counter()  # slots held, "" for work without a tenant
        self._granted: Counter[str] = Counter()  # slots ever granted, per tenant
        # Waiters by priority rank, tenant and endpoint, each a heap by (deadline, arrival), so
        # a grant costs one look per tenant and endpoint whatever the backlog behind them.
        self._queues: dict[int, dict[str, dict[str, list[_Waiter]]]] = {}
        self._waiting: Counter[str] = Counter()
        self._seq = itertools.count()

    @property
    def used(self) -> int:
        return self._used

    @property
    def waiting(self) -> int:
        return sum(self._waiting.values())

    def in_use(self, endpoint: str) -> int:
        return self._by_endpoint[endpoint]

    def by_endpoint(self) -> dict[str, int]:
        return dict(self._by_endpoint)

    def by_tenant(self) -> dict[str, int]:
        """Slots held per tenant ("" for work without one)."""
        return dict(self._by_tenant)

    def waiting_by_tenant(self) -> dict[str, int]:
        return dict(self._waiting)

    def granted_by_tenant(self) -> dict[str, int]:
        """Slots granted so far per tenant, held or since released."""
        return dict(self._granted)

    def shares(self) -> dict[str, float]:
        """Each tenant's share of the slots now: its weight over the weights of the tenants
        holding or waiting for slots (those with neither lend theirs)."""
        active = set(self._by_tenant) | set(self._waiting)
        total = sum(self.weight(t) for t in active)
        return {t: self.weight(t) / total for t in active} if total else {}

    def weight(self, tenant: str) -> float:
        return self._weights.get(tenant, 1.0)

    def available(self, endpoint: str, tenant: str | None = None) -> bool:
        """Whether `acquire` would grant a slot at once."""
        return not self._waiting and self._free(endpoint, tenant)

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
        """Wait for a slot (see the module's rules for who is served first)."""
        if self.try_acquire(endpoint, tenant):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        due = math.inf if deadline is None else deadline
        waiter = _Waiter(due, next(self._seq), endpoint, tenant, future)
        name = tenant or _NO_TENANT
        tenants = self._queues.setdefault(_RANK[priority], {})
        heapq.heappush(tenants.setdefault(name, {}).setdefault(endpoint, []), waiter)
        self._waiting[name] += 1
        self._wake()
        try:
            await future
        except asyncio.CancelledError:
            if future.cancelled():
                _decrement(self._waiting, name)  # left the queue; swept out when reached
            else:
                self.release(endpoint, tenant)  # granted while being cancelled: hand it back
            raise

    def force(self, endpoint: str, tenant: str | None = None) -> None:
        """Count a slot without waiting: a job restored from the ledger is already in flight
        at the provider. Over a limit, new work waits until enough of it has finished."""
        self._take(endpoint, tenant)

    def release(self, endpoint: str, tenant: str | None = None) -> None:
        self._used -= 1
        _decrement(self._by_endpoint, endpoint)
        _decrement(self._by_tenant, tenant or _NO_TENANT)
        self._wake()

    def _free(self, endpoint: str, tenant: str | None) -> bool:
        return self._used < self.total and not self._blocked(endpoint, tenant)

    def _blocked(self, endpoint: str, tenant: str | None) -> bool:
        """Whether the endpoint's or the tenant's own limit holds this work back."""
        return self._by_endpoint[endpoint] >= self.per_endpoint or self._tenant_full(tenant)

    def _tenant_full(self, tenant: str | None) -> bool:
        limit = self.per_tenant
        return tenant is not None and limit is not None and self._by_tenant[tenant] >= limit

    def _take(self, endpoint: str, tenant: str | None) -> None:
        self._used += 1
        self._by_endpoint[endpoint] += 1
        self._by_tenant[tenant or _NO_TENANT] += 1
        self._granted[tenant or _NO_TENANT] += 1

    def _wake(self) -> None:
        while self._used < self.total and (waiter := self._next()) is not None:
            _decrement(self._waiting, waiter.tenant or _NO_TENANT)
            self._take(waiter.endpoint, waiter.tenant)
            waiter.future.set_result(None)

    def _next(self) -> _Waiter | None:
        """Take the waiter the next free slot goes to off its queue, if any may have it."""
        active = set(self._by_tenant) | set(self._waiting)
        # Each tenant's share of the slots held once this one is granted, per unit of weight.
        per_weight = (self._used + 1) / sum(self.weight(t) for t in active or {_NO_TENANT})
        for rank in sorted(self._queues):
            tenants = self._queues[rank]
            heads = {name: head for name in list(tenants) if (head := _head(tenants, name))}
            for name in sorted(heads, key=lambda t: self._turn(t, heads[t], per_weight)):
                waiter = self._pop_eligible(name, tenants[name])
                if not tenants[name]:
                    del tenants[name]
                if waiter is not None:
                    return waiter
            if not tenants:
                del self._queues[rank]
        return None

    def _turn(self, tenant: str, head: _Waiter, per_weight: float) -> tuple[float, float, _Waiter]:
        # Furthest below its share first (rounded: equal shortfalls must compare equal), then
        # granted least for its weight, then the earlier deadline, then the earlier arrival.
        weight = self.weight(tenant)
        shortfall = round(per_weight * weight - self._by_tenant[tenant], 9)
        return -shortfall, self._granted[tenant] / weight, head

    def _pop_eligible(self, tenant: str, endpoints: dict[str, list[_Waiter]]) -> _Waiter | None:
        """Take the tenant's first waiter whose endpoint has room (none if the tenant is at
        its own limit): one look per endpoint, however many wait behind a full one."""
        if self._tenant_full(tenant or None):
            return None
        open_heads = [
            heap
            for endpoint, heap in endpoints.items()
            if heap and self._by_endpoint[endpoint] < self.per_endpoint
        ]
        if not open_heads:
            return None
        heap = min(open_heads, key=lambda h: h[0])
        waiter = heapq.heappop(heap)
        if not heap:
            del endpoints[waiter.endpoint]
        return waiter


def _head(tenants: dict[str, dict[str, list[_Waiter]]], name: str) -> _Waiter | None:
    """The tenant's first waiter still waiting, after sweeping off the ones that gave up
    (dropping emptied queues); None, and the tenant dropped, when nobody is left."""
    endpoints = tenants[name]
    for endpoint in list(endpoints):
        heap = endpoints[endpoint]
        while heap and heap[0].future.done():
            heapq.heappop(heap)
        if not heap:
            del endpoints[endpoint]
    if not endpoints:
        del tenants[name]
        return None
    return min(heap[0] for heap in endpoints.values())


def _decrement(counts: Counter[str], name: str) -> None:
    counts[name] -= 1
    if counts[name] <= 0:
        del counts[name]
