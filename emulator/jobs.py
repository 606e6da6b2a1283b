"""Requests and the per-endpoint queues they wait in.

A queue position is "requests ahead of me", which a status poll asks for often. Each lane hands
out increasing tickets, so a position is a subtraction plus a binary search over the (rare)
requests that left the middle of the lane by cancellation, instead of a scan.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from genrelay.emulator.endpoints import EndpointId
from genrelay.emulator.expiry import Deadlines
from genrelay.emulator.models import Invalid, Plan
from genrelay.emulator.outcomes import Outcome

JSON = Any


class Phase(Enum):
    QUEUED = "IN_QUEUE"
    RUNNING = "IN_PROGRESS"
    COMPLETED = "COMPLETED"


class Priority(Enum):
    NORMAL = "normal"
    LOW = "low"


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One runner log line; formatted only when a client asks for logs."""

    at: float
    message: str
    level: str = "INFO"

    def as_json(self) -> dict[str, str]:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.at))
        millis = int(self.at % 1 * 1000)
        return {
            "message": self.message,
            "level": self.level,
            "source": "user",
            "timestamp": f"{stamp}.{millis:03d}Z",
        }


@dataclass(slots=True, eq=False)
class Job:
    """One queue request. Mutated only by the scheduler, on the event loop."""

    request_id: str
    seq: int
    endpoint: EndpointId
    plan: Plan | Invalid
    webhook_url: str | None
    priority: Priority
    received_at: float
    no_retry: bool = False
    owner: str = ""
    start_deadline: float | None = None
    file_lifetime_s: float | None = None
    phase: Phase = Phase.QUEUED
    attempt: int = 1
    gateway_request_id: str = ""
    ticket: int = -1
    cancel_requested: bool = False
    cold_start: bool = False
    outcome: Outcome | None = None
    started_at: float | None = None
    completed_at: float | None = None
    billed_units: float | None = None  # what fal billed, once it succeeded
    # Bumped on every visible change so status streams know when to send an event.
    version: int = 0
    logs: list[LogEntry] = field(default_factory=list)

    def log(self, message: str, level: str = "INFO") -> None:
        self.logs.append(LogEntry(time.time(), message, level))


class Lane:
    """A FIFO of waiting jobs of one endpoint and one priority."""

    def __init__(self) -> None:
        # (ticket, job): a departed job's own ticket is reset, the lane keeps the original.
        self._jobs: deque[tuple[int, Job]] = deque()
        self._next_ticket = 0
        # Tickets of jobs that left from the middle and still sit in `_jobs`, ascending.
        self._removed: list[int] = []

    def __len__(self) -> int:
        return len(self._jobs) - len(self._removed)

    def push(self, job: Job) -> None:
        job.ticket = self._next_ticket
        self._next_ticket += 1
        self._jobs.append((job.ticket, job))

    def pop(self) -> Job | None:
        self._drop_departed_head()
        if not self._jobs:
            return None
        _, job = self._jobs.popleft()
        job.ticket = -1
        return job

    def remove(self, job: Job) -> None:
        """Take a waiting job out of the lane (cancelled or timed out) without a scan."""
        bisect.insort(self._removed, job.ticket)
        job.ticket = -1

    def position(self, job: Job) -> int:
        """How many live jobs wait ahead of `job` in this lane."""
        self._drop_departed_head()
        if job.ticket < 0 or not self._jobs:
            return 0
        head = self._jobs[0][0]
        removed_ahead = bisect.bisect_left(self._removed, job.ticket)
        return job.ticket - head - removed_ahead

    def clear(self) -> None:
        self._jobs.clear()
        self._removed.clear()

    def _drop_departed_head(self) -> None:
        while self._jobs and self._removed and self._jobs[0][0] == self._removed[0]:
            self._jobs.popleft()
            del self._removed[0]


@dataclass(slots=True)
class EndpointQueue:
    """Waiting jobs and runner state of one endpoint."""

    normal: Lane = field(default_factory=Lane)
    low: Lane = field(default_factory=Lane)
    # Jobs dispatched to a runner (acquiring or running) and jobs actually running.
    running: int = 0
    active: int = 0
    # Until when the runners stay warm after the last job, and when a booting runner is up.
    warm_until: float = 0.0
    ready_at: float = 0.0

    @property
    def waiting(self) -> int:
        return len(self.normal) + len(self.low)

    def push(self, job: Job) -> None:
        self._lane(job).push(job)

    def pop(self) -> Job | None:
        """Normal jobs first: low priority ranks behind every normal request."""
        return self.normal.pop() or self.low.pop()

    def remove(self, job: Job) -> None:
        if job.ticket >= 0:
            self._lane(job).remove(job)

    def position(self, job: Job) -> int:
        if job.priority is Priority.NORMAL:
            return self.normal.position(job)
        return len(self.normal) + self.low.position(job)

    def _lane(self, job: Job) -> Lane:
        return self.normal if job.priority is Priority.NORMAL else self.low


class JobStore:
    """Jobs by request id, forgotten once their retention ends."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._forget_at: dict[str, float] = {}
        self._deadlines: Deadlines[str] = Deadlines()

    def __len__(self) -> int:
        return len(self._jobs)

    def add(self, job: Job) -> None:
        self._jobs[job.request_id] = job

    def get(self, request_id: str) -> Job | None:
        job = self._jobs.get(request_id)
        if job is None:
            return None
        forget_at = self._forget_at.get(request_id)
        if forget_at is not None and time.monotonic() >= forget_at:
            return None
        return job

    def retain_until(self, job: Job, deadline: float) -> None:
        self._forget_at[job.request_id] = deadline
        self._deadlines.push(deadline, job.request_id)

    def sweep(self, now: float) -> int:
        """Forget jobs whose retention ended; returns how many went."""
        removed = 0
        for request_id in self._deadlines.pop_due(now):
            forget_at = self._forget_at.get(request_id)
            if forget_at is not None and forget_at <= now:
                del self._forget_at[request_id]
                del self._jobs[request_id]
                removed += 1
        return removed

    def clear(self) -> None:
        self._jobs.clear()
        self._forget_at.clear()
        self._deadlines.clear()
