"""A min-heap of deadlines, so expiring things costs O(log n) instead of a scan."""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Generic, TypeVar

K = TypeVar("K")


class Deadlines(Generic[K]):
    """Keys with monotonic-clock deadlines, popped once due.

    A key may be pushed again with a new deadline; the owner checks the current deadline of a
    popped key, so stale heap entries are harmless.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, K]] = []
        self._counter = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, deadline: float, key: K) -> None:
        # The counter breaks ties so keys never need to be comparable.
        self._counter += 1
        heapq.heappush(self._heap, (deadline, self._counter, key))

    def pop_due(self, now: float) -> Iterator[K]:
        """Remove and yield every key whose deadline is at or before `now`."""
        while self._heap and self._heap[0][0] <= now:
            yield heapq.heappop(self._heap)[2]

    def clear(self) -> None:
        self._heap.clear()
