"""Every key's pending timer in one heap: each fires once, in time order, unless replaced."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from genrelay.consumer.dispatch.timers import TIMER_CONTEXT, KeyTimers


@dataclass(eq=False)
class Owner:
    name: str
    timer: object | None = None


class Fired:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.changed = asyncio.Event()

    def __call__(self, owner: Owner, event: str) -> None:
        self.events.append((owner.name, event))
        self.changed.set()

    async def until(self, count: int) -> list[tuple[str, str]]:
        async with asyncio.timeout(30):
            while len(self.events) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.events


async def test_timers_fire_once_each_in_the_order_they_come_due() -> None:
    fired = Fired()
    timers: KeyTimers[Owner, str] = KeyTimers(fired)
    a, b, c = Owner("a"), Owner("b"), Owner("c")
    timers.set(c, 0.06, "poll")
    timers.set(a, 0.02, "poll")
    timers.set(b, 0.04, "retry")
    assert len(timers) == 3
    assert await fired.until(3) == [("a", "poll"), ("b", "retry"), ("c", "poll")]
    assert len(timers) == 0
    assert a.timer is b.timer is c.timer is None
    assert len(TIMER_CONTEXT) == 0


async def test_a_key_has_one_pending_timer_the_last_set() -> None:
    fired = Fired()
    timers: KeyTimers[Owner, str] = KeyTimers(fired)
    a, marker = Owner("a"), Owner("marker")
    timers.set(a, 0.01, "first")
    timers.set(a, 0.03, "second")
    timers.set(marker, 0.05, "after")
    assert len(timers) == 2
    assert await fired.until(2) == [("a", "second"), ("marker", "after")]


async def test_a_cancelled_timer_never_fires_and_later_ones_still_do() -> None:
    fired = Fired()
    timers: KeyTimers[Owner, str] = KeyTimers(fired)
    early, late = Owner("early"), Owner("late")
    timers.set(early, 0.01, "poll")
    timers.set(late, 0.03, "poll")
    timers.cancel(early)
    timers.cancel(early)  # twice is harmless
    assert early.timer is None
    # Had it fired, it would have come first: timers fire in the order they come due.
    assert await fired.until(1) == [("late", "poll")]


async def test_a_timer_cancelled_by_one_firing_before_it_does_not_fire() -> None:
    timers: KeyTimers[Owner, str]
    first, second, marker = Owner("first"), Owner("second"), Owner("marker")
    fired = Fired()

    def fire(owner: Owner, event: str) -> None:
        fired(owner, event)
        if owner is first:
            timers.cancel(second)

    timers = KeyTimers(fire)
    timers.set(first, 0.0, "poll")
    timers.set(second, 0.0, "poll")
    timers.set(marker, 0.05, "poll")
    assert await fired.until(2) == [("first", "poll"), ("marker", "poll")]


async def test_a_timer_set_for_now_while_timers_fire_waits_for_the_next_turn() -> None:
    timers: KeyTimers[Owner, str]
    again = Owner("again")
    fired = Fired()
    turns = 0

    def fire(owner: Owner, event: str) -> None:
        fired(owner, event)
        if len(fired.events) < 20:
            timers.set(owner, 0.0, "again")

    async def count_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    timers = KeyTimers(fire)
    counter = asyncio.get_running_loop().create_task(count_turns())
    timers.set(again, 0.0, "again")
    await fired.until(20)
    counter.cancel()
    assert turns >= 10  # the loop ran other work between the firings


async def test_cancelled_entries_are_dropped_once_they_are_most_of_the_heap() -> None:
    timers: KeyTimers[Owner, str] = KeyTimers(Fired())
    owners = [Owner(str(n)) for n in range(1_000)]
    for owner in owners:
        timers.set(owner, 3600, "poll")
    for owner in owners[:900]:
        timers.cancel(owner)
    assert len(timers) == 100
    assert timers.entries < 1_000
    for owner in owners[:500]:
        timers.set(owner, 3600, "poll")  # set again: replaced, not added beside
    assert len(timers) == 600
    assert timers.entries < 1_100


async def test_a_timer_that_fails_stops_no_other() -> None:
    fired = Fired()
    failures: list[BaseException] = []

    def fire(owner: Owner, event: str) -> None:
        fired(owner, event)
        if owner.name == "a":
            raise RuntimeError("boom")

    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: failures.append(context["exception"]))
    try:
        timers: KeyTimers[Owner, str] = KeyTimers(fire)
        a, b, c = Owner("a"), Owner("b"), Owner("c")
        timers.set(a, 0.0, "poll")
        timers.set(b, 0.0, "poll")
        timers.set(c, 0.05, "poll")
        assert await fired.until(3) == [("a", "poll"), ("b", "poll"), ("c", "poll")]
        later = Owner("later")
        timers.set(later, 0.0, "poll")
        assert await fired.until(4) == [*fired.events[:3], ("later", "poll")]
    finally:
        loop.set_exception_handler(None)
    assert [str(failure) for failure in failures] == ["boom"]
