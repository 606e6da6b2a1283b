"""The steps a job takes in the outside world: submit, poll, fetch, store, publish, cancel.

Each step talks to one dependency (the provider, the object store, Kafka), runs inside a
trace span that is a child of the job's stored trace context, records its metrics, and
translates what happened into the next lifecycle event: a transient failure is `StepFailed`,
whose budget the lifecycle keeps. No step decides anything: `lifecycle` does.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from opentelemetry.trace import Tracer

from genrelay.consumer import lifecycle as lc
from genrelay.consumer.errors import (
    ArtifactError,
    DownloadRefused,
    GenrelayError,
    MaybeSent,
    NotFound,
    NotSent,
    ProviderError,
    RateLimited,
    ResultExpired,
    StoreRefused,
    Unstorable,
    UrlExpired,
)
from genrelay.consumer.events.recent_outcomes import RecentOutcomes
from genrelay.consumer.ledger.partition_writer import Outgoing
from genrelay.consumer.provider.prices import Prices
from genrelay.consumer.provider.provider import (
    ErrorInfo,
    JobState,
    JobStatus,
    ListedRequest,
    Priority,
    Provider,
    RequestHistory,
    Submission,
    Tags,
)
from genrelay.consumer.service import failpoints
from genrelay.consumer.service.metrics import RelayMetrics, Resolution
from genrelay.consumer.service.telemetry import Step, step_span
from genrelay.schemas.completions import Artifact, CompletionEvent, ErrorDetail
from genrelay.schemas.ledger import LedgerRecord, ProviderJob

log = logging.getLogger(__name__)


class Publisher(Protocol):
    """Where outcomes go (the completion, progress and dead-letter topics)."""

    def completion_record(self, event: CompletionEvent) -> Outgoing: ...

    async def completion(self, event: CompletionEvent, partition: int) -> None: ...

    async def progress(
        self, key: str, job: ProviderJob, state: JobState, position: int | None, partition: int
    ) -> None: ...

    async def conflict(self, source: Any, partition: int) -> None: ...


class FileStorer(Protocol):
    """Copies a result's output files into the object store."""

    async def store(self, record: LedgerRecord) -> tuple[tuple[Artifact, ...], Any]: ...


@dataclass(frozen=True)
class Observers:
    """Where the steps report: traces, metrics and the status page's recent outcomes."""

    tracer: Tracer
    metrics: RelayMetrics
    recent: RecentOutcomes


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


def _priority(record: LedgerRecord) -> Priority:
    return Priority(record.request.priority)


def key_hash(key: str) -> str:
    """How a key is named at the provider (tags): identifiable, not readable."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def tags_of(record: LedgerRecord) -> Tags:
    return Tags(key_hash(record.idempotency_key), record.attempts, record.request.tenant)


# An ambiguous POST, if it arrived, reached the provider after `posted_at` and before its
# start deadline (or, without one, within the client's timeout), give or take the clocks.
_CLOCKS_APART = timedelta(seconds=60)
_ARRIVAL_WINDOW = timedelta(seconds=60)


def carries(listed: Any, sent: Any) -> bool:
    """Whether a listed request's input is the one sent: every field sent, equal (the
    provider may list fields it added, such as defaults)."""
    if not isinstance(listed, dict) or not isinstance(sent, dict):
        return bool(listed == sent)
    return all(name in listed and listed[name] == value for name, value in sent.items())


class Steps:
    """Performs effects against the provider, the object store and Kafka."""

    def __init__(
        self,
        *,
        provider: Provider,
        files: FileStorer,
        publisher: Publisher,
        webhook_url: Callable[[str, int], str | None],
        observers: Observers,
        backoff: Callable[[int], float],
        history: RequestHistory | None = None,
        prices: Prices | None = None,
    ) -> None:
        self._provider = provider
        self._history = history
        self._prices = prices
        self._files = files
        self._publisher = publisher
        self._webhook_url = webhook_url
        self._backoff = backoff
        self._tracer = observers.tracer
        self._metrics = observers.metrics
        self._recent = observers.recent

    async def submit(self, record: LedgerRecord, start_by: datetime | None = None) -> lc.Event:
        """POST the submission once; the answer decides whether it may ever be posted again.
        `start_by`: the provider must not start it later (its time-to-start, from now)."""
        start_timeout = None
        if start_by is not None:
            start_timeout = (start_by - datetime.now(UTC)).total_seconds()
            # fal's least time-to-start is above 0.1 s; genrelay's floor is the lifecycle's.
            if start_timeout < lc.LEAST_START.total_seconds():
                # Too late to send this attempt: once its start deadline has passed, another
                # owner may be proving from fal's records that it never arrived, and re-post.
                late = ErrorDetail(
                    type="start_deadline_passed",
                    message="the attempt's start deadline passed before it was sent",
                    retryable=True,
                )
                return lc.NotSent(late, 0.0)
        self._metrics.submitted(record.endpoint)
        failpoints.reached("before_post")
        with step_span(self._tracer, Step.SUBMIT, record.traceparent):
            try:
                submission = await self._provider.submit(
                    record.endpoint,
                    record.request.input or {},
                    webhook_url=self._webhook_url(record.idempotency_key, record.attempts),
                    priority=_priority(record),
                    start_timeout=start_timeout,
                    tags=tags_of(record),
                )
                failpoints.reached("after_post")
            except NotSent as exc:
                self._metrics.submit_retried(record.endpoint)
                delay = exc.retry_after
                if delay is None:
                    delay = self._backoff(record.attempts)
                return lc.NotSent(_failure(exc, "submit_not_sent"), delay)
            except MaybeSent as exc:
                self._metrics.ambiguous_submit(record.endpoint)
                log.warning("ambiguous submit: %s", exc)
                return lc.Ambiguous(_failure(exc, "submit_unknown"))
            except ProviderError as exc:
                kind = getattr(exc, "error_type", None) or "submit_rejected"
                return lc.Refused(ErrorDetail(type=str(kind), message=str(exc), retryable=False))
        return lc.Accepted(to_job(submission))

    async def search(self, record: LedgerRecord) -> lc.Event:
        """Look for the key's current attempt in the provider's request history: requests on
        its endpoint, carrying its input, that arrived while the attempt was being posted."""
        as_of = datetime.now(UTC)
        if self._history is None:
            return lc.HistorySearched(None, as_of)
        posted = record.posted_at or record.unknown_since or record.updated_at
        start = posted - _CLOCKS_APART
        with step_span(self._tracer, Step.SEARCH, record.traceparent):
            try:
                # No `end`: a window fal applied to when requests ended could hide one still
                # running. What arrived too late to be this attempt is filtered here.
                listed = await self._history.requests(record.endpoint, start=start, end=None)
            except ProviderError as exc:
                log.info("request history unavailable: %s", exc)
                self._metrics.history_search("unavailable")
                return lc.HistorySearched(None, as_of)
        # Sent late (a replica that stalled after committing the intent), the attempt can
        # still arrive until its start deadline: after that it is never sent at all.
        last_arrival = record.start_by or posted + _ARRIVAL_WINDOW
        matches = self._matching(record, listed, start, last_arrival + _CLOCKS_APART)
        self._metrics.history_search("found" if matches else "none")
        return lc.HistorySearched(matches, as_of)

    def _matching(
        self, record: LedgerRecord, listed: list[ListedRequest], start: datetime, end: datetime
    ) -> tuple[ProviderJob, ...]:
        sent = record.request.input or {}
        ids = dict.fromkeys(
            item.request_id
            for item in listed
            if item.endpoint == record.endpoint
            and (item.sent_at is None or start <= item.sent_at < end)
            and carries(item.input, sent)
        )
        return tuple(
            to_job(self._provider.submission_for(record.endpoint, request_id)) for request_id in ids
        )

    async def poll(self, record: LedgerRecord, partition: int) -> lc.Event:
        """Ask where the job is."""
        assert record.job is not None
        with step_span(self._tracer, Step.POLL, record.traceparent):
            try:
                status = await self._provider.status(to_submission(record.job))
            except NotFound as exc:
                return lc.ResultGone(_failure(exc, "request_lost"))
            except RateLimited as exc:
                return lc.Throttled(exc.retry_after)
            except ProviderError as exc:
                log.info("status poll failed: %s", exc)
                return lc.StepFailed("poll", _failure(exc, "status_unavailable"))
        if status.state is JobState.COMPLETED:
            self._metrics.resolved(Resolution.POLL)
            return lc.Finished()
        await self._progress(record, status, partition)
        return lc.StepOk()

    async def _progress(self, record: LedgerRecord, status: JobStatus, partition: int) -> None:
        assert record.job is not None
        key = record.idempotency_key
        await self._publisher.progress(
            key, record.job, status.state, status.queue_position, partition
        )

    async def ours(self, news: lc.News) -> lc.AccountChecked:
        """Whether our fal account knows the request a webhook named (asked with our key)."""
        assert news.job is not None
        try:
            await self._provider.status(to_submission(news.job))
        except NotFound:
            self._metrics.foreign_webhook()
            log.warning("a webhook named request %s, unknown to our account", news.request_id)
            return lc.AccountChecked(news, ours=False)
        except ProviderError as exc:
            log.info("could not ask about request %s yet: %s", news.request_id, exc)
            return lc.AccountChecked(news, ours=None)
        return lc.AccountChecked(news, ours=True)

    async def fetch(self, record: LedgerRecord) -> lc.Event:
        """GET the result, and report what it answered."""
        assert record.job is not None
        with step_span(self._tracer, Step.FETCH, record.traceparent):
            try:
                outcome = await self._provider.result(to_submission(record.job))
            except ResultExpired as exc:
                return lc.ResultGone(_failure(exc, "result_expired"))
            except ProviderError as exc:
                log.info("result fetch failed: %s", exc)
                return lc.StepFailed("fetch", _failure(exc, "result_unavailable"))
        unit_price = None
        if outcome.billable_units is not None and self._prices is not None:
            unit_price = await self._prices.unit_price(record.endpoint)
        return lc.ResultFetched(
            ok=outcome.ok,
            payload=outcome.payload,
            error=error_detail(outcome.error) if outcome.error else None,
            cost_units=outcome.billable_units,
            unit_price=unit_price,
        )

    async def store(self, record: LedgerRecord) -> lc.Event:
        """Copy every output file into the object store (fetching the result first when it
        was too large to keep in the ledger)."""
        if record.result is None and record.job is not None:
            fetched = await self.fetch(record)
            if not isinstance(fetched, lc.ResultFetched):
                return fetched
            if not fetched.ok:
                # It read as a success before: what is missing now is the output.
                gone = ErrorDetail(type="output_expired", message="result gone", retryable=False)
                return lc.ResultGone(gone)
            record = record.model_copy(update={"result": fetched.payload})
        try:
            artifacts, result = await self._files.store(record)
        except UrlExpired as exc:
            return lc.FilesExpired(_failure(exc, "output_expired"))
        except DownloadRefused as exc:
            return lc.FilesRefused(_failure(exc, "download_refused"))
        except StoreRefused as exc:  # permissions, quota, a bucket that is not ours
            log.warning("storing files failed for good: %s", exc)
            return lc.FilesRefused(_failure(exc, "store_refused"))
        except Unstorable as exc:
            return lc.FilesRefused(_failure(exc, "output_unstorable"))
        except (ArtifactError, GenrelayError) as exc:
            log.warning("storing files failed: %s", exc)
            return lc.StepFailed("store", _failure(exc, "store_unavailable"))
        return lc.FilesStored(artifacts, result)

    async def publish(
        self,
        event: CompletionEvent,
        traceparent: str | None,
        commit: Callable[[Outgoing], Awaitable[None]],
        tenant: str | None = None,
    ) -> None:
        """Announce a key's outcome; `commit` writes it with the ledger's note that it was."""
        with step_span(self._tracer, Step.PUBLISH, traceparent):
            await commit(self._publisher.completion_record(event))
        self._metrics.outcome(event.status, event.endpoint)
        if event.cost_usd is not None:
            self._metrics.spent(event.cost_usd, event.endpoint, tenant)
        self._recent.add(event)
        if event.status == "succeeded":
            timings = event.timings
            self._metrics.job_timings(
                event.endpoint,
                queued_seconds=timings.queued_ms / 1000,
                run_seconds=timings.running_ms / 1000,
            )

    async def replay(self, event: CompletionEvent, partition: int) -> None:
        self._metrics.replayed()
        await self._publisher.completion(event, partition)

    async def conflict(self, source: Any, partition: int) -> None:
        await self._publisher.conflict(source, partition)

    async def cancel(self, record: LedgerRecord, job: ProviderJob) -> None:
        with step_span(self._tracer, Step.CANCEL, record.traceparent):
            try:
                await self._provider.cancel(to_submission(job))
            except ProviderError as exc:
                # The outcome still arrives by webhook or poll; a failed cancel means it runs.
                log.warning("cancel of %s failed: %s", job.request_id, exc)
