"""In-memory stand-ins for the relay's collaborators, for fast tests of `Jobs` and `Steps`.

Each fake keeps the contract of what it replaces (the same Protocol, the same errors) and
records what was asked of it, so a test can run a key through its whole life in milliseconds
and check what was paid for, written and announced. The real broker, MinIO and the emulator
still test what only they can show.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from genrelay.consumer.errors import Fenced, MaybeSent, NotFound, ProviderError, RecordTooLarge
from genrelay.consumer.ledger.partition_writer import MAX_RECORD_BYTES, Outgoing
from genrelay.consumer.provider.provider import (
    CancelOutcome,
    JobResult,
    JobState,
    JobStatus,
    JSONObject,
    ListedRequest,
    Priority,
    Submission,
    Tags,
)
from genrelay.schemas.base import to_json_bytes
from genrelay.schemas.completions import Artifact, CompletionEvent
from genrelay.schemas.ledger import LedgerRecord, Phase, ProviderJob


@dataclass
class MemoryLedger:
    """The part of `Ledger` that `Jobs` uses: every write is committed at once, in order.

    Like the real one it refuses a record larger than the broker accepts (`RecordTooLarge`)
    and every write for a partition this replica has lost (`Fenced`, after `lose`).
    """

    states: dict[str, LedgerRecord] = field(default_factory=dict)
    partitions: dict[str, int] = field(default_factory=dict)
    # Each committed write: the state and what was written with it in one transaction.
    writes: list[tuple[LedgerRecord, tuple[Outgoing, ...]]] = field(default_factory=list)
    max_record_bytes: int = MAX_RECORD_BYTES
    lost: set[int] = field(default_factory=set)

    def lose(self, partition: int) -> None:
        """Another replica owns `partition` now: its writes are refused from here on."""
        self.lost.add(partition)

    def get(self, key: str, partition: int | None = None) -> LedgerRecord | None:
        return self.states.get(key)

    def is_open(self, key: str) -> bool:
        state = self.states.get(key)
        return state is not None and not (state.terminal and state.published)

    def phase(self, key: str) -> Phase | None:
        state = self.states.get(key) if self.is_open(key) else None
        return None if state is None else state.phase

    def keys_in(self, partition: int) -> list[str]:
        """The open keys of a partition (finished ones live in the store, as with `Ledger`)."""
        return [
            key
            for key, p in self.partitions.items()
            if p == partition and not (self.states[key].terminal and self.states[key].published)
        ]

    async def write(
        self, record: LedgerRecord, partition: int, *, also: tuple[Outgoing, ...] = ()
    ) -> None:
        await asyncio.sleep(0)  # a commit is never synchronous
        if partition in self.lost:
            raise Fenced(partition, "owned by another replica")
        key = record.idempotency_key
        state = Outgoing(
            "ledger",
            record.model_dump_json(exclude_defaults=True).encode(),
            key.encode(),
            partition,
        )
        if too_big := [r for r in (state, *also) if r.size() > self.max_record_bytes]:
            raise RecordTooLarge(too_big[0].topic, too_big[0].size())
        self.states[record.idempotency_key] = record
        self.partitions[record.idempotency_key] = partition
        self.writes.append((record, also))

    def phases(self, key: str) -> list[str]:
        """Every phase `key` was committed in, in order."""
        return [r.phase.value for r, _ in self.writes if r.idempotency_key == key]


# What a scripted provider call does: answer with a value, or raise.
Answer = Callable[[], Any]


@dataclass
class FakeProvider:
    """A provider whose answers a test scripts per call; unscripted calls succeed at once.

    `submits` records every POST that left (each one is paid for); `statuses` every poll.
    It keeps a request history too (`RequestHistory`): every request that arrived is listed
    once `history_visible` allows (default: at once), and `history_down` makes it unreadable.
    """

    base_url: str = "http://fake.provider"
    submit_answers: deque[Answer] = field(default_factory=deque)
    status_answers: deque[Answer] = field(default_factory=deque)
    result_answers: deque[Answer] = field(default_factory=deque)
    submits: list[tuple[str, JSONObject, str | None]] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    status_times: list[float] = field(default_factory=list)  # time.monotonic() of each poll
    cancels: list[str] = field(default_factory=list)
    known: set[str] = field(default_factory=set)
    tags: list[Tags | None] = field(default_factory=list)
    listed: list[ListedRequest] = field(default_factory=list)
    history_visible: bool = True
    history_down: bool = False
    history_reads: int = 0
    # The next this-many submits arrive (and are paid for) but their answers are lost.
    lose_answers: int = 0
    billable_units: float | None = None  # what each result's headers say was billed
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def submission_for(self, endpoint: str, request_id: str) -> Submission:
        url = f"{self.base_url}/{endpoint}/requests/{request_id}"
        return Submission(request_id, request_id, f"{url}/status", url, f"{url}/cancel")

    async def submit(
        self,
        endpoint: str,
        input: JSONObject,
        *,
        webhook_url: str | None,
        priority: Priority,
        start_timeout: float | None = None,
        tags: Tags | None = None,
    ) -> Submission:
        await asyncio.sleep(0)
        if self.submit_answers:
            answer = self.submit_answers.popleft()()
            if answer is not None:
                return answer  # type: ignore[no-any-return]
        request_id = f"req-{next(self._ids)}"
        self.submits.append((endpoint, input, webhook_url))
        self.tags.append(tags)
        self.known.add(request_id)
        self.listed.append(ListedRequest(request_id, endpoint, datetime.now(UTC), input))
        if self.lose_answers > 0:
            self.lose_answers -= 1
            raise MaybeSent(f"POST {endpoint}: the answer was lost")
        return self.submission_for(endpoint, request_id)

    async def requests(
        self, endpoint: str, *, start: datetime, end: datetime | None
    ) -> list[ListedRequest]:
        await asyncio.sleep(0)
        self.history_reads += 1
        if self.history_down:
            raise ProviderError("the request history is unavailable")
        if not self.history_visible:
            return []
        return [
            item
            for item in self.listed
            if item.endpoint == endpoint
            and item.sent_at is not None
            and start <= item.sent_at
            and (end is None or item.sent_at < end)
        ]

    async def status(self, submission: Submission, *, with_logs: bool = False) -> JobStatus:
        await asyncio.sleep(0)
        self.statuses.append(submission.request_id)
        self.status_times.append(time.monotonic())
        if self.status_answers:
            return self.status_answers.popleft()()  # type: ignore[no-any-return]
        if submission.request_id not in self.known:
            raise NotFound(f"unknown request {submission.request_id}")
        return JobStatus(JobState.COMPLETED)

    async def result(self, submission: Submission) -> JobResult:
        await asyncio.sleep(0)
        if self.result_answers:
            return self.result_answers.popleft()()  # type: ignore[no-any-return]
        return JobResult(
            ok=True, payload={"images": []}, error=None, billable_units=self.billable_units
        )

    async def cancel(self, submission: Submission) -> CancelOutcome:
        self.cancels.append(submission.request_id)
        if submission.request_id not in self.known:
            return CancelOutcome.NOT_FOUND
        # Its requests complete at once (unless a test scripts otherwise): too late to cancel.
        return CancelOutcome.ALREADY_COMPLETED

    async def aclose(self) -> None:
        return None


@dataclass
class MemoryPublisher:
    """The event bus: completions, progress and conflicts, kept in lists."""

    completions: list[CompletionEvent] = field(default_factory=list)
    progress_events: list[tuple[str, JobState]] = field(default_factory=list)
    conflicts: list[Any] = field(default_factory=list)

    def completion_record(self, event: CompletionEvent) -> Outgoing:
        self.completions.append(event)  # announced once its transaction commits
        return Outgoing("completions", to_json_bytes(event), event.idempotency_key.encode())

    async def completion(self, event: CompletionEvent, partition: int) -> None:
        self.completions.append(event)

    async def progress(
        self, key: str, job: ProviderJob, state: JobState, position: int | None, partition: int
    ) -> None:
        self.progress_events.append((key, state))

    async def conflict(self, source: Any, partition: int) -> None:
        self.conflicts.append(source)


@dataclass
class FakeFiles:
    """A `FileStorer` whose answers a test scripts; by default every result has no files."""

    answers: deque[Answer] = field(default_factory=deque)
    stored: list[str] = field(default_factory=list)

    async def store(self, record: LedgerRecord) -> tuple[tuple[Artifact, ...], Any]:
        await asyncio.sleep(0)
        if self.answers:
            self.answers.popleft()()
        self.stored.append(record.idempotency_key)
        return (), record.result
