"""In-flight slots: bounded globally and per endpoint, normal work ahead of low."""

from __future__ import annotations

import asyncio

import pytest

from genrelay.consumer.provider import Priority
from genrelay.consumer.slots import Slots


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
