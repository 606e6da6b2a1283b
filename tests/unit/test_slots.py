"""In-flight slots: bounded globally, per endpoint and per tenant, normal work ahead of low,
shared between tenants by weight."""

from __future__ import annotations

import asyncio
import sys
from types import FrameType

import pytest
from pydantic import ValidationError

from genrelay.consumer.dispatch import slots as slots_module
from genrelay.consumer.dispatch.slots import Slots
from genrelay.consumer.provider.provider import Priority
from genrelay.consumer.service.config import Settings


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


# --- fair shares between tenants ------------------------------------------------------------


class Saturated:
    """Slots kept full: every job runs equally long, so the oldest holder finishes first."""

    def __init__(self, slots: Slots) -> None:
        self.slots = slots
        self.holders: list[str] = []  # tenants holding a slot, oldest first
        self.granted: list[str] = []  # every grant, in order
        self.tasks: list[asyncio.Task[None]] = []

    def queue(self, tenant: str, n: int, priority: Priority = Priority.NORMAL) -> None:
        async def take() -> None:
            await self.slots.acquire("e", priority, tenant)
            self.holders.append(tenant)
            self.granted.append(tenant)

        self.tasks += [asyncio.create_task(take()) for _ in range(n)]

    async def settle(self) -> None:
        for _ in range(3):
            await asyncio.sleep(0)

    async def finish_one(self) -> None:
        self.slots.release("e", self.holders.pop(0))
        await self.settle()

    def cancel_all(self) -> None:
        for task in self.tasks:
            task.cancel()


async def test_a_tenant_sending_behind_anothers_flood_is_served_by_its_share_not_after_it() -> None:
    run = Saturated(Slots(total=20, per_endpoint=20))
    run.queue("bulk", 5_000)
    await run.settle()
    assert run.holders == ["bulk"] * 20
    run.queue("shop", 50)
    await run.settle()
    finished = 0
    while run.granted.count("shop") < 50:
        await run.finish_one()
        finished += 1
    # Equal weights: shop takes every free slot until it holds half, then every other one.
    # Its 50 requests are all running after 10 + 2 x 40 = 90 jobs finished, not 5,000.
    assert finished == 90
    run.cancel_all()


@pytest.mark.parametrize("total", [40, 10])  # a share of 30 slots; and of 7.5
async def test_under_saturation_slots_follow_the_weights(total: int) -> None:
    run = Saturated(Slots(total=total, per_endpoint=total, weights={"gold": 3.0}))
    run.queue("gold", 2_000)
    run.queue("silver", 2_000)
    await run.settle()
    before = len(run.granted)
    for _ in range(800):
        await run.finish_one()
    completed = run.granted[before:]
    ratio = completed.count("gold") / completed.count("silver")
    assert 2.7 <= ratio <= 3.3  # within 10 % of 3:1
    assert run.slots.shares() == {"gold": 0.75, "silver": 0.25}
    assert run.holders.count("gold") in (total * 3 // 4, (total * 3 + 3) // 4)
    run.cancel_all()


async def test_a_tenant_with_nothing_waiting_lends_its_share() -> None:
    run = Saturated(Slots(total=10, per_endpoint=10, weights={"idle": 9.0}))
    run.queue("busy", 100)
    await run.settle()
    for _ in range(30):
        await run.finish_one()
    assert run.holders == ["busy"] * 10
    assert run.slots.shares() == {"busy": 1.0}
    run.cancel_all()


async def test_priority_comes_before_a_tenants_share() -> None:
    run = Saturated(Slots(total=4, per_endpoint=4))
    run.queue("heavy", 4)
    await run.settle()
    run.queue("light", 3, Priority.LOW)
    run.queue("heavy", 3)
    await run.settle()
    for _ in range(3):
        await run.finish_one()
    # light holds nothing but waits at low priority: heavy's normal work goes first.
    assert run.granted[4:] == ["heavy"] * 3
    for _ in range(3):
        await run.finish_one()
    assert run.granted[7:] == ["light"] * 3
    assert run.slots.waiting == 0


async def test_a_waiter_that_gives_up_leaves_no_trace_in_the_shares() -> None:
    slots = Slots(total=1, per_endpoint=1)
    await slots.acquire("e", Priority.NORMAL, "a")
    gone = asyncio.create_task(slots.acquire("e", Priority.NORMAL, "b"))
    await _started(gone)
    assert slots.waiting_by_tenant() == {"b": 1}
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert slots.waiting_by_tenant() == {}
    assert slots.shares() == {"a": 1.0}
    slots.release("e", "a")
    assert slots.used == 0
    assert slots.by_tenant() == {}


async def _calls_to_queue_one_and_grant_one(backlog: int) -> int:
    """Calls the scheduler makes to queue one more waiter behind a full endpoint and to hand
    a slot of another endpoint on, with `backlog` waiters already queued behind the full one."""
    slots = Slots(total=10, per_endpoint=1)
    await slots.acquire("busy", Priority.NORMAL)
    waiters = [asyncio.create_task(slots.acquire("busy", Priority.NORMAL)) for _ in range(backlog)]
    await asyncio.sleep(0)
    await slots.acquire("other", Priority.NORMAL)
    calls = 0

    def count(frame: FrameType, event: str, arg: object) -> None:
        # Calls made by the scheduler's own code only: nothing else the loop runs meanwhile.
        nonlocal calls
        calls += event in ("call", "c_call") and frame.f_code.co_filename == slots_module.__file__

    one_more = asyncio.create_task(slots.acquire("busy", Priority.NORMAL))
    sys.setprofile(count)
    try:
        await asyncio.sleep(0)  # the new waiter queues (and looks for a free slot)
        slots.release("other")  # a slot frees up that nobody behind "busy" may take
    finally:
        sys.setprofile(None)
    assert slots.waiting == backlog + 1
    assert slots.used == 1
    for task in [*waiters, one_more]:
        task.cancel()
    await asyncio.gather(*waiters, one_more, return_exceptions=True)
    return calls


async def test_a_backlog_behind_a_full_endpoint_does_not_make_each_grant_slower() -> None:
    # Counted, not timed: queueing and granting look at one waiter per tenant and endpoint,
    # not at every waiter behind a full endpoint (which made a bulk backlog halve throughput).
    small = await _calls_to_queue_one_and_grant_one(100)
    large = await _calls_to_queue_one_and_grant_one(10_000)
    assert large < small * 1.5, (small, large)


def test_tenant_weights_come_from_settings_and_must_be_positive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GENRELAY_TENANT_WEIGHTS", '{"shop": 3, "bulk": 0.5}')
    assert Settings(_env_file=None).tenant_weights == {"shop": 3.0, "bulk": 0.5}
    with pytest.raises(ValidationError, match="GENRELAY_TENANT_WEIGHTS"):
        Settings(_env_file=None, tenant_weights={"shop": 0})
