"""What the relay finished lately: the last few outcomes and per-second rates over a minute.

Fed with each completion event as it is first published; read by the status page. Memory is
bounded: a fixed number of outcomes, and one counter per second of the rate window.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

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


class RecentOutcomes:
    """The last `capacity` successes and failures, and the rate of each status."""

    def __init__(
        self, capacity: int = 20, window_seconds: int = 60, clock: Callable[[], float] = time.time
    ) -> None:
        self._clock = clock
        self.rate = RateWindow(window_seconds, clock)
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

    def completions(self) -> tuple[Outcome, ...]:
        """Recent successes, newest first."""
        return tuple(self._completions)

    def failures(self) -> tuple[Outcome, ...]:
        """Recent failed, cancelled and expired outcomes, newest first."""
        return tuple(self._failures)

    def rates(self) -> dict[str, float]:
        """Outcomes per second by status over the rate window."""
        return self.rate.rates()
