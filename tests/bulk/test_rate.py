"""The rate limiter paces sends; time is a fake clock, so nothing here sleeps."""

from __future__ import annotations

import pytest

from genrelay.producers.bulk.rate import RateLimiter, parse_rate


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.mark.parametrize(
    ("text", "per_second"),
    [("20", 20.0), ("20/s", 20.0), ("2.5/sec", 2.5), ("600/min", 10.0), ("7200 / h", 2.0)],
)
def test_rates_are_read_per_second_minute_or_hour(text: str, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["", "0/s", "-1", "fast", "10/day", "1e3"])
def test_rates_that_are_not_positive_numbers_per_unit_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="rate"):
        parse_rate(text)


def test_slots_are_spaced_by_the_rate_after_the_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10, burst=2, clock=clock)
    assert [limiter.reserve() for _ in range(5)] == pytest.approx([0, 0, 0.1, 0.2, 0.3])


def test_idle_time_refills_the_bucket_but_only_up_to_the_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10, burst=2, clock=clock)
    limiter.reserve()
    limiter.reserve()
    clock.now += 60
    assert [limiter.reserve() for _ in range(3)] == pytest.approx([0, 0, 0.1])


async def test_acquire_sleeps_so_the_average_rate_holds() -> None:
    clock = FakeClock()
    limiter = RateLimiter(50, clock=clock, sleep=clock.sleep)
    start = clock.now
    for _ in range(101):
        await limiter.acquire()
    assert clock.now - start == pytest.approx(2.0)
    assert all(delay == pytest.approx(0.02) for delay in clock.slept)


async def test_a_late_caller_is_not_made_to_wait_for_time_already_passed() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1, clock=clock, sleep=clock.sleep)
    await limiter.acquire()
    clock.now += 5  # e.g. the caller was busy
    await limiter.acquire()
    assert clock.slept == []


def test_a_rate_or_burst_that_cannot_pace_anything_is_refused() -> None:
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(0)
    with pytest.raises(ValueError, match="burst"):
        RateLimiter(1, burst=0)
