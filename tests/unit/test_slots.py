"""In-flight slots: bounded globally and per endpoint, normal work ahead of low."""

from __future__ import annotations

import asyncio

import pytest

from genrelay.consumer.dispatch.slots import Slots
from genrelay.consumer.provider.provider import Priority


async def _started(task: asyncio.Task[None]) -> None:
    await asyncio.sleep(0)  # let the task reach its first await
    assert not task.done()


async def test_waiters_are_served_normal_first_then_in_arrival_order() -> None:
    slots = Slots(total=1, per_endpoint=10)
    await slots.acquire("e", Priority.NORMAL)
    served: list[str] = []

    async def take(name: str, priority: Priority) -> None:
        await slots.acquire("e", priority)
        served.append(name)

    tasks = [
        asyncio.create_task(take("low-1", Priority.LOW)),
        asyncio.create_task(take("low-2", Priority.LOW)),
        asyncio.create_task(take("normal-1", Priority.NORMAL)),
    ]
    for task in tasks:
        await _started(task)
    for _ in range(3):
        slots.release("e")
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert served == ["normal-1", "low-1", "low-2"]


async def test_a_saturated_endpoint_does_not_hold_back_another() -> None:
    slots = Slots(total=3, per_endpoint=1)
    await slots.acquire("busy", Priority.NORMAL)
    blocked = asyncio.create_task(slots.acquire("busy", Priority.NORMAL))
    await _started(blocked)
    await asyncio.wait_for(slots.acquire("other", Priority.LOW), timeout=1)
    assert slots.by_endpoint() == {"busy": 1, "other": 1}
    slots.release("busy")
    await asyncio.wait_for(blocked, timeout=1)
    assert slots.used == 2


async def test_a_cancelled_waiter_gives_its_slot_back() -> None:
    slots = Slots(total=1, per_endpoint=1)
    await slots.acquire("e", Priority.NORMAL)
    waiter = asyncio.create_task(slots.acquire("e", Priority.NORMAL))
    await _started(waiter)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    slots.release("e")
    assert slots.used == 0
    await asyncio.wait_for(slots.acquire("e", Priority.LOW), timeout=1)
    assert slots.used == 1


async def test_a_tenant_at_its_limit_waits_while_other_tenants_go_ahead() -> None:
    slots = Slots(total=10, per_endpoint=10, per_tenant=2)
    await slots.acquire("e", Priority.NORMAL, "bulk")
    await slots.acquire("e", Priority.NORMAL, "bulk")
    third = asyncio.create_task(slots.acquire("e", Priority.NORMAL, "bulk"))
    await _started(third)
    # Queued behind the blocked tenant, another tenant (and untenanted work) is served at once.
    await asyncio.wait_for(slots.acquire("e", Priority.LOW, "shop"), timeout=1)
    await asyncio.wait_for(slots.acquire("e", Priority.LOW), timeout=1)
    assert not third.done()
    slots.release("e", "bulk")
    await asyncio.wait_for(third, timeout=1)
    assert slots.used == 4


async def test_restored_work_counts_over_the_limit_and_new_work_waits_until_below_it() -> None:
    slots = Slots(total=2, per_endpoint=10, per_tenant=1)
    for _ in range(3):  # a failover brought three in-flight jobs of one tenant
        slots.force("e", "bulk")
    assert slots.used == 3
    assert not slots.try_acquire("e", "shop")  # over the global limit
    waiter = asyncio.create_task(slots.acquire("e", Priority.NORMAL, "shop"))
    await _started(waiter)
    slots.release("e", "bulk")
    await asyncio.sleep(0)
    assert not waiter.done()  # 2 of 2 still in use
    slots.release("e", "bulk")
    await asyncio.wait_for(waiter, timeout=1)
    assert not slots.try_acquire("e", "bulk")  # the tenant still has one of its one


async def test_within_a_priority_earlier_deadlines_are_served_first() -> None:
    slots = Slots(total=1, per_endpoint=10)
    await slots.acquire("e", Priority.NORMAL)
    served: list[str] = []

    async def take(name: str, priority: Priority, deadline: float | None) -> None:
        await slots.acquire("e", priority, deadline=deadline)
        served.append(name)

    tasks = [
        asyncio.create_task(take("no-deadline", Priority.NORMAL, None)),
        asyncio.create_task(take("late", Priority.NORMAL, 2_000.0)),
        asyncio.create_task(take("soon", Priority.NORMAL, 1_000.0)),
        asyncio.create_task(take("low-soonest", Priority.LOW, 10.0)),
    ]
    for task in tasks:
        await _started(task)
    for _ in range(4):
        slots.release("e")
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert served == ["soon", "late", "no-deadline", "low-soonest"]
