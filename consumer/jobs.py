"""Runs every key's life: one actor per key applies events in order and performs the effects.

For each event the actor asks `lifecycle.decide`, writes the new state to the ledger and waits
for the acknowledgement, and only then performs the effects (POST, poll, fetch, store,
publish). What an effect learns comes back as the next event. Keys run concurrently behind
the in-flight `Slots`; one key's events never run concurrently, so a duplicate record, a
webhook and a poll cannot race each other into a second submission.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from genrelay.consumer import failpoints
from genrelay.consumer import lifecycle as lc
from genrelay.consumer.errors import (
    ArtifactError,
    DownloadRefused,
    GenrelayError,
    MaybeSent,
    NotFound,
    NotSent,
    ProviderError,
    ResultExpired,
    UrlExpired,
)
from genrelay.consumer.ledger import Ledger
from genrelay.consumer.provider import (
    ErrorInfo,
    JobState,
    Priority,
    Provider,
    Submission,
)
from genrelay.consumer.slots import Slots
from genrelay.schemas.completions import Artifact, CompletionEvent, ErrorDetail
from genrelay.schemas.ledger import LedgerRecord, Phase, ProviderJob

log = logging.getLogger(__name__)


class Publisher(Protocol):
    """Where outcomes go (the completion, progress and dead-letter topics)."""

    async def completion(self, event: CompletionEvent) -> None: ...

    async def progress(
        self, key: str, job: ProviderJob, state: JobState, position: int | None
    ) -> None: ...

    async def conflict(self, source: Any) -> None: ...


class FileStorer(Protocol):
    """Copies a result's output files into the object store."""

    async def store(self, record: LedgerRecord) -> tuple[tuple[Artifact, ...], Any]: ...


@dataclass(frozen=True)
class Timing:
    poll_grace: float
    poll_max_interval: float
    unknown_grace: float
    retry_base: float = 0.5
    retry_max: float = 30.0


@dataclass
class _Actor:
    key: str
    partition: int
    inbox: deque[tuple[lc.Event | _Internal, Callable[[], None] | None, Any]] = field(
        default_factory=deque
    )
    task: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None
    holds_slot: bool = False
    polls: int = 0
    closed: bool = False


@dataclass(frozen=True)
class _Internal:
    """A timer or retry firing inside the actor (not a lifecycle event)."""

    what: str


_POLL_DUE = _Internal("poll")
_FETCH_DUE = _Internal("fetch")
_STORE_DUE = _Internal("store")


def _now() -> datetime:
    return datetime.now(UTC)


def to_job(submission: Submission) -> ProviderJob:
    return ProviderJob(
        request_id=submission.request_id,
        gateway_request_id=submission.gateway_request_id,
        status_url=submission.status_url,
        response_url=submission.response_url,
        cancel_url=submission.cancel_url,
    )


def to_submission(job: ProviderJob) -> Submission:
    return Submission(
        request_id=job.request_id,
        gateway_request_id=job.gateway_request_id,
        status_url=job.status_url,
        response_url=job.response_url,
        cancel_url=job.cancel_url,
    )


def error_detail(info: ErrorInfo) -> ErrorDetail:
    return ErrorDetail(type=info.type, message=info.message, retryable=info.retryable)


def _failure(exc: GenrelayError, kind: str) -> ErrorDetail:
    return ErrorDetail(type=kind, message=str(exc), retryable=exc.retryable)


class Jobs:
    """The actors of every owned key, and the effects they perform."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        provider: Provider,
        slots: Slots,
        publisher: Publisher,
        files: FileStorer,
        webhook_url: Callable[[str], str | None],
        policy: lc.Policy,
        timing: Timing,
        on_crash: Callable[[BaseException], None],
    ) -> None:
        self._ledger = ledger
        self._provider = provider
        self._slots = slots
        self._publisher = publisher
        self._files = files
        self._webhook_url = webhook_url
        self._policy = policy
        self._timing = timing
        self._on_crash = on_crash
        self._actors: dict[str, _Actor] = {}
        self.counters: dict[str, int] = {
            "submits": 0,
            "duplicates_suppressed": 0,
            "ambiguous_submits": 0,
            "webhook_resolutions": 0,
            "poll_resolutions": 0,
            "replays": 0,
            "conflicts": 0,
        }

    # --- intake ---------------------------------------------------------------------------

    def deliver(
        self,
        key: str,
        partition: int,
        event: lc.Event,
        on_done: Callable[[], None] | None = None,
        source: Any = None,
    ) -> None:
        """Queue an event for a key; `on_done` runs once its state is durable."""
        actor = self._actors.get(key)
        if actor is None:
            actor = self._actors[key] = _Actor(key, partition)
        actor.inbox.append((event, on_done, source))
        self._ensure_running(actor)

    def resume(self, partition: int) -> int:
        """Restart the open keys of a just-restored partition; returns how many."""
        resumed = 0
        for key in self._ledger.keys_in(partition):
            record = self._ledger.get(key)
            if record is None or (record.terminal and record.published):
                continue
            if record.phase not in (Phase.SUBMITTING, Phase.UNKNOWN) or record.job is not None:
                self._hold_slot_now(key, partition, record)
            self.deliver(key, partition, lc.Restored())
            resumed += 1
        return resumed

    async def release(self, partitions: set[int], grace: float) -> None:
        """Stop the actors of revoked partitions, letting running steps finish within `grace`."""
        leaving = [a for a in self._actors.values() if a.partition in partitions]
        for actor in leaving:
            actor.closed = True
            if actor.timer:
                actor.timer.cancel()
        running = [a.task for a in leaving if a.task and not a.task.done()]
        if running:
            _, pending = await asyncio.wait(running, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for actor in leaving:
            self._drop(actor)

    @property
    def active(self) -> int:
        return len(self._actors)

    def phases(self) -> dict[str, int]:
        """How many owned keys are in each open phase (for health and metrics)."""
        counts: dict[str, int] = {}
        for key in self._actors:
            record = self._ledger.get(key)
            phase = record.phase.value if record else "WAITING"
            counts[phase] = counts.get(phase, 0) + 1
        return counts

    # --- the actor loop -------------------------------------------------------------------

    def _ensure_running(self, actor: _Actor) -> None:
        if actor.closed or (actor.task is not None and not actor.task.done()):
            return
        actor.task = asyncio.get_running_loop().create_task(self._run(actor), name=actor.key)
        actor.task.add_done_callback(self._check_crash)

    def _check_crash(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._on_crash(task.exception())  # type: ignore[arg-type]

    async def _run(self, actor: _Actor) -> None:
        while actor.inbox and not actor.closed:
            event, on_done, source = actor.inbox.popleft()
            if isinstance(event, _Internal):
                await self._internal(actor, event)
            else:
                await self._apply(actor, event, source)
            if on_done is not None:
                on_done()
        self._maybe_forget(actor)

    async def _apply(self, actor: _Actor, event: lc.Event, source: Any = None) -> None:
        record = self._ledger.get(actor.key)
        if isinstance(event, lc.SubmitCommand) and record is not None:
            self.counters["duplicates_suppressed"] += 1
        decision = lc.decide(record, event, actor.key, _now(), self._policy)
        if decision.record is not None:
            await self._ledger.write(decision.record, actor.partition)
            if decision.record.terminal and actor.holds_slot:
                self._release_slot(actor, decision.record)
        for effect in decision.effects:
            await self._perform(actor, effect, source)

    async def _perform(self, actor: _Actor, effect: lc.Effect, source: Any) -> None:
        match effect:
            case lc.Post():
                await self._post(actor)
            case lc.PostLater(at=at):
                self._schedule_event(actor, (at - _now()).total_seconds(), lc.RetryDue())
            case lc.AwaitAdoption():
                self._schedule_event(actor, self._timing.unknown_grace, lc.UnknownUnresolved())
            case lc.Watch():
                actor.polls = 0
                self._schedule(actor, self._timing.poll_grace, _POLL_DUE)
            case lc.FetchResult():
                await self._fetch(actor)
            case lc.StoreFiles():
                await self._store(actor)
            case lc.Publish(event=event):
                await self._publisher.completion(event)
                await self._apply(actor, lc.Published())
            case lc.Replay(event=event):
                self.counters["replays"] += 1
                await self._publisher.completion(event)
            case lc.Conflict():
                self.counters["conflicts"] += 1
                await self._publisher.conflict(source)
            case lc.CancelAtProvider(job=job):
                await self._cancel(job)

    async def _internal(self, actor: _Actor, due: _Internal) -> None:
        record = self._ledger.get(actor.key)
        if record is None or record.terminal:
            return
        if due is _POLL_DUE and record.phase is Phase.SUBMITTED:
            await self._poll(actor, record)
        elif due is _FETCH_DUE and record.phase in (Phase.SUBMITTED, Phase.RESULT_READY):
            await self._fetch(actor)
        elif due is _STORE_DUE and record.phase is Phase.RESULT_READY:
            await self._store(actor)

    # --- effects --------------------------------------------------------------------------

    async def _post(self, actor: _Actor) -> None:
        record = self._ledger.get(actor.key)
        assert record is not None
        assert record.phase is Phase.SUBMITTING
        if not actor.holds_slot:
            priority = Priority(record.request.get("priority") or "normal")
            await self._slots.acquire(record.endpoint, priority)
            actor.holds_slot = True
        self.counters["submits"] += 1
        failpoints.reached("before_post")
        try:
            submission = await self._provider.submit(
                record.endpoint,
                record.request.get("input") or {},
                webhook_url=self._webhook_url(actor.key),
                priority=Priority(record.request.get("priority") or "normal"),
            )
            failpoints.reached("after_post")
        except NotSent as exc:
            delay = (
                exc.retry_after if exc.retry_after is not None else self._backoff(record.attempts)
            )
            await self._apply(actor, lc.NotSent(_failure(exc, "submit_not_sent"), delay))
        except MaybeSent as exc:
            self.counters["ambiguous_submits"] += 1
            log.warning("ambiguous submit for %s: %s", actor.key, exc)
            await self._apply(actor, lc.Ambiguous(_failure(exc, "submit_unknown")))
        except ProviderError as exc:
            await self._apply(actor, lc.Refused(self._refusal(exc)))
        else:
            await self._apply(actor, lc.Accepted(to_job(submission)))
            failpoints.reached("after_submitted")

    @staticmethod
    def _refusal(exc: ProviderError) -> ErrorDetail:
        kind = getattr(exc, "error_type", None) or "submit_rejected"
        return ErrorDetail(type=str(kind), message=str(exc), retryable=False)

    async def _poll(self, actor: _Actor, record: LedgerRecord) -> None:
        assert record.job is not None
        try:
            status = await self._provider.status(to_submission(record.job))
        except NotFound as exc:
            self.counters["poll_resolutions"] += 1
            await self._apply(actor, lc.ResultGone(_failure(exc, "request_lost")))
            return
        except ProviderError as exc:
            log.info("status poll for %s failed, will retry: %s", actor.key, exc)
            self._schedule(actor, self._next_poll(actor), _POLL_DUE)
            return
        if status.state is JobState.COMPLETED:
            self.counters["poll_resolutions"] += 1
            await self._fetch(actor)
            return
        await self._publisher.progress(actor.key, record.job, status.state, status.queue_position)
        self._schedule(actor, self._next_poll(actor), _POLL_DUE)

    async def _fetch(self, actor: _Actor) -> None:
        record = self._ledger.get(actor.key)
        assert record is not None
        assert record.job is not None
        try:
            outcome = await self._provider.result(to_submission(record.job))
        except ResultExpired as exc:
            await self._apply(actor, lc.ResultGone(_failure(exc, "result_expired")))
            return
        except ProviderError as exc:
            log.info("result fetch for %s failed, will retry: %s", actor.key, exc)
            self._schedule(actor, self._backoff(actor.polls), _FETCH_DUE)
            actor.polls += 1
            return
        if record.phase is Phase.RESULT_READY:
            # A refetch for fresh file URLs; a failure now would contradict the first answer.
            if outcome.ok:
                await self._apply(actor, lc.Refetched(outcome.payload))
            else:
                error = ErrorDetail(type="output_expired", message="files gone", retryable=False)
                await self._apply(actor, lc.ResultGone(error))
            return
        news = lc.News(
            request_id=record.job.request_id,
            ok=outcome.ok,
            payload=outcome.payload,
            error=error_detail(outcome.error) if outcome.error else None,
            cost_units=outcome.billable_units,
        )
        await self._apply(actor, news)

    async def _store(self, actor: _Actor) -> None:
        record = self._ledger.get(actor.key)
        assert record is not None
        try:
            artifacts, result = await self._files.store(record)
        except UrlExpired as exc:
            await self._apply(actor, lc.FilesExpired(_failure(exc, "output_expired")))
        except DownloadRefused as exc:
            await self._apply(actor, lc.FilesRefused(_failure(exc, "download_refused")))
        except (ArtifactError, GenrelayError) as exc:
            log.warning("storing files of %s failed, will retry: %s", actor.key, exc)
            self._schedule(actor, self._backoff(record.result_refetches + actor.polls), _STORE_DUE)
            actor.polls += 1
        else:
            await self._apply(actor, lc.FilesStored(artifacts, result))

    async def _cancel(self, job: ProviderJob) -> None:
        try:
            await self._provider.cancel(to_submission(job))
        except ProviderError as exc:
            # The outcome still arrives by webhook or poll; a failed cancel only means it runs.
            log.warning("cancel of %s failed: %s", job.request_id, exc)

    # --- timers, slots, bookkeeping -------------------------------------------------------

    def _schedule(self, actor: _Actor, delay: float, due: _Internal) -> None:
        self._schedule_event(actor, delay, due)

    def _schedule_event(self, actor: _Actor, delay: float, event: lc.Event | _Internal) -> None:
        if actor.closed:
            return
        if actor.timer is not None:
            actor.timer.cancel()
        loop = asyncio.get_running_loop()

        def fire() -> None:
            actor.timer = None
            if not actor.closed:
                actor.inbox.append((event, None, None))
                self._actors.setdefault(actor.key, actor)
                self._ensure_running(actor)

        actor.timer = loop.call_later(max(0.0, delay), fire)

    def _next_poll(self, actor: _Actor) -> float:
        # Adaptive: 1 s, then 1.6 times longer per poll up to the cap; jitter avoids herds.
        actor.polls += 1
        base = min(self._timing.poll_max_interval, 1.0 * 1.6 ** (actor.polls - 1))
        return base * random.uniform(0.8, 1.2)

    def _backoff(self, attempt: int) -> float:
        base = min(self._timing.retry_max, self._timing.retry_base * 2.0 ** max(0, attempt - 1))
        return base * random.uniform(0.5, 1.0)

    def _hold_slot_now(self, key: str, partition: int, record: LedgerRecord) -> None:
        actor = self._actors.get(key)
        if actor is None:
            actor = self._actors[key] = _Actor(key, partition)
        if not actor.holds_slot:
            self._slots.force(record.endpoint)
            actor.holds_slot = True

    def _release_slot(self, actor: _Actor, record: LedgerRecord) -> None:
        actor.holds_slot = False
        self._slots.release(record.endpoint)

    def _maybe_forget(self, actor: _Actor) -> None:
        # Finished keys keep only their ledger record; the actor object is dropped.
        record = self._ledger.get(actor.key)
        idle = not actor.inbox and actor.timer is None
        if idle and (record is None or (record.terminal and record.published)):
            self._drop(actor)

    def _drop(self, actor: _Actor) -> None:
        if actor.timer is not None:
            actor.timer.cancel()
            actor.timer = None
        if actor.holds_slot:
            record = self._ledger.get(actor.key)
            if record is not None:
                self._release_slot(actor, record)
        if self._actors.get(actor.key) is actor:
            del self._actors[actor.key]
