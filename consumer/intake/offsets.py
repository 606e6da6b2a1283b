"""Which offset a partition may commit: the end of its contiguous prefix of finished records.

Records of one partition finish out of order (jobs run concurrently); committing past an
unfinished record would lose it on a crash, so the commit point is the first unfinished offset.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field


@dataclass
class PartitionOffsets:
    """Offsets taken from one partition, in the order the consumer returned them."""

    _pending: deque[int] = field(default_factory=deque)
    _taken_at: deque[float] = field(default_factory=deque)
    _sizes: dict[int, int] = field(default_factory=dict)
    buffered_bytes: int = 0
    _finished: set[int] = field(default_factory=set)
    _next: int | None = None  # the offset to commit: everything before it is finished
    next_offset: int | None = None  # the offset after the last one read

    def taken(self, offset: int, size: int = 0) -> None:
        """Record that `offset` (of `size` bytes) was read and is now being handled."""
        self._pending.append(offset)
        self.next_offset = offset + 1
        self._sizes[offset] = size
        self.buffered_bytes += size
        self._taken_at.append(time.monotonic())

    def finished(self, offset: int) -> None:
        """Record that `offset` is handled for good (state durable, or dead-lettered)."""
        self._finished.add(offset)
        self.buffered_bytes -= self._sizes.pop(offset, 0)
        while self._pending and self._pending[0] in self._finished:
            head = self._pending.popleft()
            self._taken_at.popleft()
            self._finished.discard(head)
            self._next = head + 1

    def commit_point(self) -> int | None:
        """The offset to commit (the next one to read after a restart), if anything finished."""
        return self._next

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def oldest_age(self) -> float:
        """Seconds the oldest unfinished record has been waiting (0 when none)."""
        return time.monotonic() - self._taken_at[0] if self._taken_at else 0.0

    @property
    def span(self) -> int:
        """Offsets between the commit point and the newest taken record (the replay window)."""
        if not self._pending:
            return 0
        return self._pending[-1] - self._pending[0] + 1
