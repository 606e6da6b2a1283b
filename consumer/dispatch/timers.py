"""Every key's pending timer in one heap, behind one event-loop timer.

Most in-flight keys wait for news with a timer set (the poll that follows a lost webhook). An
event-loop timer per key costs about 235 bytes (its handle, its arguments) and a push and a
pop on the loop's own heap; an entry here costs about 130. Each key has at most one pending
timer: setting another, or cancelling, leaves the old entry in the heap, where it is skipped
when it comes due, and the heap is rebuilt without such entries once they are most of it.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

# Timers run in this one empty context. A context of its own, or a copy of the one it was
# set in (the job's log and trace context), would cost up to 450 bytes per waiting key.
# Nothing a timer runs may set a context variable (work it starts runs as tasks, each with a
# context of its own), so it stays empty; the jobs' tests check that.
TIMER_CONTEXT = contextvars.Context()

_E = TypeVar("_E")
# Cancelled entries tolerated in the heap before it is rebuilt without them.
_FEW_STALE = 64


class Timed(Protocol):
    """What holds a timer: its one pending entry, None when there is none."""

    timer: object | None


_O = TypeVar("_O", bound=Timed)


class KeyTimers(Generic[_O, _E]):
    """`fire(owner, event)` for each owner's pending timer when it comes due."""

    def __init__(self, fire: Callable[[_O, _E], None]) -> None:
        self._fire = fire
        # (when, tie-breaker, owner, what to deliver)
        self._heap: list[tuple[float, int, _O, _E]] = []
        self._order = itertools.count()
        self._stale = 0
        self._wakeup: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        """Pending timers (counts them: for tests and probes)."""
        return sum(1 for entry in self._heap if entry[2].timer is entry)

    @property
    def entries(self) -> int:
        """Entries held, cancelled ones not yet dropped included."""
        return len(self._heap)

    def set(self, owner: _O, delay: float, event: _E) -> None:
        """`event` for `owner` in `delay` seconds, in place of its pending timer if any."""
        self.cancel(owner)
        loop = asyncio.get_running_loop()
        entry = (loop.time() + max(0.0, delay), next(self._order), owner, event)
        owner.timer = entry
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry:
            self._wake_at(loop, entry[0])

    def cancel(self, owner: _O) -> None:
        """Drop `owner`'s pending timer, if any."""
        if owner.timer is None:
            return
        owner.timer = None
        self._stale += 1
        if self._stale > _FEW_STALE and self._stale * 2 > len(self._heap):
            self._heap = [entry for entry in self._heap if entry[2].timer is entry]
            heapq.heapify(self._heap)
            self._stale = 0

    def _wake_at(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._wakeup is not None:
            if self._wakeup.when() <= when:
                return
            self._wakeup.cancel()
        self._wakeup = loop.call_at(when, self._run, context=TIMER_CONTEXT)

    def _run(self) -> None:
        self._wakeup = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        # What is due now, taken first: a timer set while these fire, even for now, fires on
        # a later turn of the loop, as `call_later` would.
        due = []
        while self._heap and self._heap[0][0] <= now:
            due.append(heapq.heappop(self._heap))
        for entry in due:
            owner = entry[2]
            if owner.timer is not entry:  # cancelled or replaced, maybe by a timer just fired
                self._stale = max(0, self._stale - 1)
                continue
            owner.timer = None
            try:
                self._fire(owner, entry[3])
            except Exception as exc:  # one key's failure must not stop every other timer
                loop.call_exception_handler(
                    {"message": "a key's timer failed", "exception": exc, "owner": owner}
                )
        if self._heap:
            self._wake_at(loop, self._heap[0][0])
