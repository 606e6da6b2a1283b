"""What the relay finished lately: the last few outcomes, per-second rates over a minute, and
the last hour minute by minute (the status page's trends).

Fed with each completion event as it is first published (and with dead letters and provider
calls); read by the status page. Memory is bounded: a fixed number of outcomes, one counter
per second of the rate window, and one small bucket per minute of the hour.
"""

from __future__ import annotations

import random
import statistics
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from genrelay.schemas.completions import CompletionEvent


@dataclass(frozen=True)
class Outcome:
    """One finished key, as the status page lists it."""

    idempotency_key: str
    status: str
    endpoint: str
    finished_at: datetime
    total_ms: int
    error: str | None = None


class RateWindow:
    """Counts named events in one-second buckets and reports per-second rates over a window."""

    def __init__(self, window_seconds: int = 60, clock: Callable[[], float] = time.time) -> None:
        self.window_seconds = window_seconds
        self._clock = clock
        self._buckets: deque[tuple[int, Counter[str]]] = deque()

    def mark(self, name: str, count: int = 1) -> None:
        """Count `count` events called `name` now."""
        second = int(self._clock())
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append((second, Counter()))
        self._buckets[-1][1][name] += count
        self._prune(second)

    def rates(self) -> dict[str, float]:
        """Events per second of each name, averaged over the whole window."""
        self._prune(int(self._clock()))
        totals: Counter[str] = Counter()
        for _, counts in self._buckets:
            totals.update(counts)
        return {name: total / self.window_seconds for name, total in sorted(totals.items())}

    def _prune(self, now: int) -> None:
        while self._buckets and self._buckets[0][0] <= now - self.window_seconds:
            self._buckets.popleft()


# End-to-end times kept per minute for its percentiles (a uniform sample beyond that).
_TIMES_PER_MINUTE = 512


@dataclass
class _Minute:
    start: int  # epoch seconds
    completions: int = 0
    failures: int = 0
    dead_letters: int = 0
    provider_calls: int = 0
    in_flight: int = 0  # the most seen during the minute
    seen: int = 0  # outcomes whose times were offered to the sample
    total_ms: list[int] = field(default_factory=list)

    def keep_time(self, total_ms: int) -> None:
        self.seen += 1
        if len(self.total_ms) < _TIMES_PER_MINUTE:
            self.total_ms.append(total_ms)
        elif (slot := random.randrange(self.seen)) < _TIMES_PER_MINUTE:
            self.total_ms[slot] = total_ms  # reservoir sampling: each time equally likely

    def point(self) -> dict[str, Any]:
        finished = self.completions + self.failures
        return {
            "at": datetime.fromtimestamp(self.start, UTC).isoformat(),
            "completions": self.completions,
            "failures": self.failures,
            "dead_letters": self.dead_letters,
            "in_flight": self.in_flight,
            "provider_calls": self.provider_calls,
            "provider_calls_per_job": (
                round(self.provider_calls / finished, 2) if finished else None
            ),
            "p50_ms": _quantile(self.total_ms, 50),
            "p99_ms": _quantile(self.total_ms, 99),
        }


def _quantile(values: list[int], q: int) -> float | None:
    if len(values) < 2:
        return float(values[0]) if values else None
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 1)


class MinuteSeries:
    """The last `minutes` minutes, one bucket each (minutes with nothing happening included)."""

    def __init__(self, minutes: int = 60, clock: Callable[[], float] = time.time) -> None:
        self.minutes = minutes
        self._clock = clock
        self._buckets: deque[_Minute] = deque()

    def now(self, in_flight: int | None = None) -> _Minute:
        """The current minute's bucket (noting the jobs in flight, when given)."""
        start = int(self._clock()) // 60 * 60
        if not self._buckets or self._buckets[-1].start != start:
            self._buckets.append(_Minute(start))
        while self._buckets and self._buckets[0].start <= start - 60 * self.minutes:
            self._buckets.popleft()
        bucket = self._buckets[-1]
        if in_flight is not None:
            bucket.in_flight = max(bucket.in_flight, in_flight)
        return bucket

    def points(self, in_flight: int | None = None) -> list[dict[str, Any]]:
        """One point per minute, oldest first, the current minute last."""
        current = self.now(in_flight).start
        kept = {bucket.start: bucket for bucket in self._buckets}
        starts = range(current - 60 * (self.minutes - 1), current + 1, 60)
        return [(kept.get(start) or _Minute(start)).point() for start in starts]


class RecentOutcomes:
    """The last `capacity` successes and failures, and the rate of each status."""

    def __init__(
        self,
        capacity: int = 20,
        window_seconds: int = 60,
        clock: Callable[[], float] = time.time,
        in_flight: Callable[[], int] = lambda: 0,
    ) -> None:
        self._clock = clock
        self.rate = RateWindow(window_seconds, clock)
        self.hour = MinuteSeries(60, clock)
        self._in_flight = in_flight
        # Failures keep their own ring, so a flood of successes cannot push them off the page.
        self._completions: deque[Outcome] = deque(maxlen=capacity)
        self._failures: deque[Outcome] = deque(maxlen=capacity)

    def add(self, event: CompletionEvent) -> None:
        """Note a completion event; feed each key's event once, not its replays."""
        outcome = Outcome(
            idempotency_key=event.idempotency_key,
            status=event.status,
            endpoint=event.endpoint,
            finished_at=datetime.fromtimestamp(self._clock(), UTC),
            total_ms=event.timings.total_ms,
            error=event.error.type if event.error else None,
        )
        ring = self._completions if event.status == "succeeded" else self._failures
        ring.appendleft(outcome)
        self.rate.mark(event.status)
        minute = self.hour.now(self._in_flight())
        if event.status == "succeeded":
            minute.completions += 1
        else:
            minute.failures += 1
        minute.keep_time(event.timings.total_ms)

    def dead_lettered(self) -> None:
        self.hour.now(self._in_flight()).dead_letters += 1

    def provider_called(self) -> None:
        """One HTTP request to the provider (queue or platform API)."""
        self.hour.now().provider_calls += 1

    def trends(self) -> list[dict[str, Any]]:
        """The last hour, minute by minute, for the status page's charts."""
        return self.hour.points(self._in_flight())

    def completions(self) -> tuple[Outcome, ...]:
        """Recent successes, newest first."""
        return tuple(self._completions)

    def failures(self) -> tuple[Outcome, ...]:
        """Recent failed, cancelled and expired outcomes, newest first."""
        return tuple(self._failures)

    def rates(self) -> dict[str, float]:
        """Outcomes per second by status over the rate window."""
        return self.rate.rates()
