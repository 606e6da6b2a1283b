"""The life of one idempotency key as a pure function: `(record, event) -> Decision`.

No I/O happens here. The caller commits `Decision.record` to the ledger (in its partition's
transaction) *before* it performs `Decision.effects`, then feeds what the effects learnt back
in as new events. Because every transition is here, crash and replay behaviour is
a table of cases, and a property test can run any sequence of events through it.

    (none) --submit--> ACCEPTED --slot granted--> SUBMITTING --accepted--> SUBMITTED
              cancel (never posted) --> CANCELLED        |  |  |--not sent--> BACKING_OFF
                                                         |  |  '<--retry due--'
                                                         |  '--refused--> FAILED
                      ambiguous, or restored here --> UNKNOWN --webhook/history adopts--> SUBMITTED
                  history proves it never arrived: re-POST <--'  '--unresolved--> FAILED | resubmit
    SUBMITTED --news ok--> RESULT_READY   (kept in memory until the next write: copying the
    RESULT_READY --files stored--> STORED --published--> COMPLETED         files is repeatable)
      (a result too large for the ledger stays at the provider; storing fetches it again)
    any open phase --news error--> FAILED | CANCELLED;  result gone --> EXPIRED
    a step (poll, fetch, store) failing past its budget or deadline --> FAILED

Transitions are monotonic: news for a later or finished phase is a no-op.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from genrelay.schemas.completions import Artifact, CompletionEvent, ErrorDetail, Timings
from genrelay.schemas.ledger import (
    TERMINAL_PHASES,
    KeptRequest,
    LedgerRecord,
    Phase,
    ProviderJob,
)
from genrelay.schemas.webhooks import WebhookDelivery

_EVENT_NAMESPACE = uuid.UUID("6f2b1a52-4c1e-4a8e-9d61-0c7e3b1f9a10")
OPEN_PHASES = frozenset(
    {Phase.ACCEPTED, Phase.SUBMITTING, Phase.BACKING_OFF, Phase.SUBMITTED, Phase.UNKNOWN}
)
Status = Literal["succeeded", "failed", "cancelled", "expired"]
# A request that reached the start deadline we sent: it never ran (provider.py says so too).
START_TIMEOUT = "start_timeout"


@dataclass(frozen=True)
class Policy:
    """The knobs the lifecycle needs; defaults are the service's settings."""

    max_submit_attempts: int = 8
    max_result_refetches: int = 3
    resubmit_unknown: bool = False
    # A step that keeps failing transiently ends the key once either is spent.
    max_step_failures: int = 20
    step_deadline: timedelta = timedelta(minutes=15)
    # An ambiguous submit waits this long for a webhook (or the provider's records) to say
    # what became of it.
    unknown_grace: timedelta = timedelta(minutes=10)
    # Each POST tells the provider to start the request within this, or never (None: only a
    # request's own deadline is sent). Past it, the provider's records can prove absence.
    start_timeout: timedelta | None = None
    # Reconcile ambiguous submits from the provider's request history, which lists a request
    # at most `history_lag` after it arrived.
    reconcile: bool = False
    history_lag: timedelta = timedelta(minutes=2)
    # Covers the provider's clock against ours, the request's trip, and the one-second floor
    # of a start timeout, when proving a request never arrived.
    clock_slack: timedelta = timedelta(seconds=30)


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubmitCommand:
    request: Mapping[str, Any]
    fingerprint: str
    endpoint: str
    traceparent: str | None = None


@dataclass(frozen=True)
class CancelCommand:
    pass


@dataclass(frozen=True)
class Accepted:
    job: ProviderJob


@dataclass(frozen=True)
class NotSent:
    error: ErrorDetail
    retry_after: float


@dataclass(frozen=True)
class Ambiguous:
    error: ErrorDetail


@dataclass(frozen=True)
class Refused:
    error: ErrorDetail


@dataclass(frozen=True)
class BudgetVerdict:
    """Whether the key's estimated cost fits its tenant's budget for the period, now (counting
    what every replica has reserved or spent in it)."""

    fits: bool
    estimate_usd: float
    period_start: str
    when_exceeded: Literal["wait", "fail"]
    limit_usd: float
    spent_usd: float
    unpriced: bool = False  # no price is known for the endpoint: nothing can be reserved


@dataclass(frozen=True)
class SlotGranted:
    """An in-flight slot is held for the key: it may be posted now, if its budget (when its
    tenant has one) allows."""

    budget: BudgetVerdict | None = None


@dataclass(frozen=True)
class BudgetMayFit:
    """Its tenant's budget was raised, or its spend fell (a new period, a settled cost): a key
    waiting for budget may ask again."""


@dataclass(frozen=True)
class DeadlinePassed:
    """The request's deadline came while the key still waited for a slot."""


@dataclass(frozen=True)
class RetryDue:
    """The wait before re-posting a submit that provably never arrived is over."""


@dataclass(frozen=True)
class Restored:
    """The record was read back from the ledger by a (new) owner."""


@dataclass(frozen=True)
class News:
    """The provider finished the job (webhook or poll); `payload is None` means fetch it."""

    request_id: str
    ok: bool
    payload: Any = None
    error: ErrorDetail | None = None
    gateway_request_id: str | None = None
    inference_seconds: float | None = None
    cost_units: float | None = None
    unit_price: float | None = None  # USD per unit, when the endpoint's price is known
    job: ProviderJob | None = None  # the provider's handle, when the news reveals the request
    via: Literal["webhook", "poll"] = "poll"
    # A webhook's: the submit attempt its URL was made for, and whether the request is known
    # to be our fal account's (signed for the configured user id, or confirmed by asking).
    attempt: int | None = None
    account_confirmed: bool = False


def webhook_news(
    delivery: WebhookDelivery,
    job: ProviderJob | None,
    account: str | None,
    *,
    fetch_result: bool = False,
) -> News:
    """What a verified webhook tells the key. `job` is the provider's handle for the request
    it names; `account` our fal user id, when known (configured or learnt). `fetch_result`:
    read the result from the provider even when the webhook carries it (for its billed
    units, which only the result's headers tell)."""
    # A delivery with an error or without its output is a signal to fetch the result, whose
    # status code and headers classify the outcome authoritatively.
    usable = delivery.ok and delivery.payload_error is None and delivery.payload is not None
    usable = usable and not fetch_result
    ours = delivery.user_id is not None and delivery.user_id == account
    return News(
        request_id=delivery.request_id,
        ok=True,
        payload=delivery.payload if usable else None,
        gateway_request_id=delivery.gateway_request_id,
        job=job,
        via="webhook",
        attempt=delivery.attempt,
        account_confirmed=delivery.account_pinned or ours,
    )


@dataclass(frozen=True)
class ResultFetched:
    """What a GET of the result answered (the step reports it; the phase says what it means)."""

    ok: bool
    payload: Any
    error: ErrorDetail | None = None
    cost_units: float | None = None
    unit_price: float | None = None


@dataclass(frozen=True)
class ResultGone:
    error: ErrorDetail


@dataclass(frozen=True)
class FilesStored:
    artifacts: tuple[Artifact, ...]
    result: Any


@dataclass(frozen=True)
class FilesExpired:
    error: ErrorDetail


@dataclass(frozen=True)
class FilesRefused:
    """An output file may not be downloaded (policy: host, address, size): the job fails."""

    error: ErrorDetail


@dataclass(frozen=True)
class Published:
    pass


@dataclass(frozen=True)
class TooLarge:
    """The state a decision produced is larger than the broker accepts: it was not written.
    Given with that state, so the key can end with what does fit."""

    error: ErrorDetail


@dataclass(frozen=True)
class UnknownUnresolved:
    """No webhook adopted an ambiguous submit within the grace period."""


@dataclass(frozen=True)
class HistorySearched:
    """The provider's request history, asked at `as_of`, lists `matches`: requests on the
    key's endpoint, with its input, that arrived while its current attempt was being posted.
    `matches is None`: the history could not be read."""

    matches: tuple[ProviderJob, ...] | None
    as_of: datetime


Step = Literal["poll", "fetch", "store"]


@dataclass(frozen=True)
class Due:
    """A wait the lifecycle asked for is over: run `step` again if the key still needs it."""

    step: Step | Literal["search"]


@dataclass(frozen=True)
class StepFailed:
    """A step failed in a way a later attempt may not repeat (5xx, reset, slow down)."""

    step: Step
    error: ErrorDetail


@dataclass(frozen=True)
class StepOk:
    """A poll answered: the job is still queued or running."""


@dataclass(frozen=True)
class Throttled:
    """A poll was refused for rate (429): poll again, no sooner than `retry_after` seconds."""

    retry_after: float | None


@dataclass(frozen=True)
class Finished:
    """A poll answered that the job finished: its result can be read."""


@dataclass(frozen=True)
class AccountChecked:
    """Whether our account knows the request a webhook named (`None`: it could not be
    asked)."""

    news: News
    ours: bool | None


Event = (
    SubmitCommand
    | CancelCommand
    | Accepted
    | NotSent
    | Ambiguous
    | Refused
    | SlotGranted
    | BudgetMayFit
    | DeadlinePassed
    | RetryDue
    | Restored
    | News
    | ResultFetched
    | ResultGone
    | FilesStored
    | FilesExpired
    | FilesRefused
    | Published
    | UnknownUnresolved
    | HistorySearched
    | TooLarge
    | StepFailed
    | StepOk
    | Throttled
    | Finished
    | Due
    | AccountChecked
)

# --- effects ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Post:
    """POST the submission now (the record saying SUBMITTING is already durable).

    `start_by`: the request's deadline; the provider is told not to start it later.
    """

    start_by: datetime | None = None


@dataclass(frozen=True)
class AcquireSlot:
    """Wait for an in-flight slot without blocking the key's other events; `SlotGranted` next,
    or `DeadlinePassed` at `until` (the request's deadline) if no slot came by then."""

    until: datetime | None = None


@dataclass(frozen=True)
class AwaitBudget:
    """Give the slot back and wait, unposted, until the budget may fit (`BudgetMayFit`)."""


@dataclass(frozen=True)
class PostLater:
    at: datetime


@dataclass(frozen=True)
class AwaitAdoption:
    """Wait for a webhook to reveal the request_id of an ambiguous submit; `UnknownUnresolved`
    at `until` (derived from durable times, so restarts cannot extend the wait)."""

    until: datetime


@dataclass(frozen=True)
class SearchHistory:
    """Look for an ambiguous submit in the provider's request history after a short wait
    (`Due("search")`). (The grace is checked on each answer, not by a timer.)"""


@dataclass(frozen=True)
class Search:
    """Search the provider's request history for the current attempt now; `HistorySearched`
    next."""


@dataclass(frozen=True)
class Watch:
    """Wait for news: a webhook, else poll the status after the grace period (`Due("poll")`)."""


@dataclass(frozen=True)
class Poll:
    """Ask the provider where the job is now: `StepOk`, `Throttled`, `Finished`, or news."""


@dataclass(frozen=True)
class PollAgain:
    """Poll after the next, growing, interval, and no sooner than `at_least` seconds."""

    at_least: float | None = None


@dataclass(frozen=True)
class AskAgain:
    """Ask again, after a back-off, whether a webhook's request is ours."""

    news: News


@dataclass(frozen=True)
class RetryStep:
    """Try `step` again (`Due(step)`) after a back-off for its `failures`-th consecutive
    failure."""

    step: Step
    failures: int


@dataclass(frozen=True)
class ConfirmAccount:
    """Ask the provider, with our key, whether the request a webhook names is ours; if it is,
    the news comes back with `account_confirmed`."""

    news: News


@dataclass(frozen=True)
class FetchResult:
    pass


@dataclass(frozen=True)
class StoreFiles:
    pass


@dataclass(frozen=True)
class Publish:
    event: CompletionEvent


@dataclass(frozen=True)
class Replay:
    event: CompletionEvent


@dataclass(frozen=True)
class Conflict:
    """Same key, different payload: dead-letter the record, change nothing."""


@dataclass(frozen=True)
class CancelAtProvider:
    job: ProviderJob


Effect = (
    AcquireSlot
    | AwaitBudget
    | Post
    | PostLater
    | AwaitAdoption
    | SearchHistory
    | Search
    | Watch
    | Poll
    | PollAgain
    | RetryStep
    | ConfirmAccount
    | AskAgain
    | FetchResult
    | StoreFiles
    | Publish
    | Replay
    | Conflict
    | CancelAtProvider
)


@dataclass(frozen=True)
class Decision:
    record: LedgerRecord | None  # the new state to write first, or None when unchanged
    effects: tuple[Effect, ...] = field(default=())
    # The new state may wait for the key's next write instead of committing before the effects:
    # they are safe to repeat, and a crash in between restores the state before it, whose
    # news is read again (its input record commits with that next write) or polled again.
    deferrable: bool = False


NOTHING = Decision(None)


def decide(
    record: LedgerRecord | None,
    event: Event,
    key: str,
    now: datetime,
    policy: Policy = Policy(),
) -> Decision:
    """The next state and effects for `key` given what just happened."""
    if isinstance(event, SubmitCommand):
        return _on_submit(record, event, key, now)
    if isinstance(event, CancelCommand):
        return _on_cancel(record, key, now)
    if record is None:
        return NOTHING  # news about a key we hold no state for changes nothing
    if isinstance(event, TooLarge):
        return _too_large(record, event.error, now)
    return _on_progress(record, event, now, policy)


# Metadata larger than this is left out of a `result_too_large` event, so that it fits.
_KEPT_METADATA_BYTES = 16 * 1024


def _too_large(record: LedgerRecord, error: ErrorDetail, now: datetime) -> Decision:
    if record.phase is Phase.RESULT_READY and record.result is not None:
        # A result too large for a ledger record (inline files, say) stays where it is, at
        # the provider: storing the files fetches it again, and the event names the copies.
        kept_there = record.model_copy(update={"result": None, "updated_at": now})
        return Decision(kept_there, (StoreFiles(),))
    # Whatever made it large (the input, the result, inline data) is dropped; the fingerprint
    # stays, so duplicates are still recognised, and the event says what happened.
    metadata = record.request.metadata
    if len(json.dumps(metadata, default=str)) > _KEPT_METADATA_BYTES:
        metadata = {}
    request = record.request.model_copy(update={"input": None, "metadata": metadata})
    bare = record.model_copy(
        update={"request": request, "result": None, "event": None, "published": False}
    )
    phase = Phase.CANCELLED if record.phase is Phase.CANCELLED else Phase.FAILED
    status: Status = "cancelled" if phase is Phase.CANCELLED else "failed"
    return _finish(bare, phase, status, error, now)


def _on_submit(
    record: LedgerRecord | None, cmd: SubmitCommand, key: str, now: datetime
) -> Decision:
    if record is None:
        # Only recorded: the intent to POST is written when a slot is granted, so a key that
        # waits for one moves to another owner as never posted.
        fresh = LedgerRecord(
            idempotency_key=key,
            phase=Phase.ACCEPTED,
            fingerprint=cmd.fingerprint,
            endpoint=cmd.endpoint,
            request=KeptRequest.model_validate(dict(cmd.request)),
            attempts=0,
            traceparent=cmd.traceparent,
            accepted_at=now,
            updated_at=now,
        )
        if _past_deadline(fresh, now):
            return _deadline_exceeded(fresh, now)
        return Decision(fresh, (AcquireSlot(_deadline(fresh)),))
    if record.phase is Phase.CANCELLED and record.event is None:
        late = record.model_copy(
            update={
                "fingerprint": cmd.fingerprint,
                "endpoint": cmd.endpoint,
                "request": KeptRequest.model_validate(dict(cmd.request)),
                "published": False,
            }
        )
        return _finish(late, Phase.CANCELLED, "cancelled", _cancelled_error(), now)
    if record.fingerprint != cmd.fingerprint:
        return Decision(None, (Conflict(),))
    if record.terminal and record.published and record.event is not None:
        return Decision(None, (Replay(record.event.model_copy(update={"replayed": True})),))
    return NOTHING  # a duplicate of work under way: suppressed


def _on_cancel(record: LedgerRecord | None, key: str, now: datetime) -> Decision:
    if record is None:
        # A cancel ahead of its submit still wins: the key is remembered as cancelled, and the
        # submit, when it comes, ends cancelled without being paid for.
        ghost = LedgerRecord(
            idempotency_key=key,
            phase=Phase.CANCELLED,
            fingerprint="",
            endpoint="",
            request=KeptRequest(),
            cancel_requested=True,
            published=True,
            accepted_at=now,
            updated_at=now,
        )
        return Decision(ghost)
    if record.phase not in OPEN_PHASES or record.cancel_requested:
        return NOTHING
    updated = record.model_copy(update={"cancel_requested": True, "updated_at": now})
    if _never_posted(record):
        return _finish(updated, Phase.CANCELLED, "cancelled", _cancelled_error(), now)
    if record.job is not None:
        return Decision(updated, (CancelAtProvider(record.job),))
    return Decision(updated)  # cancelled at the provider as soon as its request_id is known


# fal's start deadline (X-Fal-Request-Timeout) must be at least a second away.
LEAST_START = timedelta(seconds=1)


def _deadline(record: LedgerRecord) -> datetime | None:
    """The request's `deadline`: no POST after it, and no start at the provider after it."""
    return record.request.deadline


def _past_deadline(record: LedgerRecord, now: datetime) -> bool:
    deadline = _deadline(record)
    return deadline is not None and deadline - now < LEAST_START


def _over_budget(record: LedgerRecord, budget: BudgetVerdict, now: datetime) -> Decision:
    if budget.when_exceeded == "wait":
        return Decision(None, (AwaitBudget(),))
    spent = f"{budget.spent_usd:.4f} of {budget.limit_usd:.4f} USD spent in {budget.period_start}"
    why = (
        f"no price is known for {record.endpoint}, so nothing can be reserved against the"
        " tenant's budget"
        if budget.unpriced
        else f"an estimated {budget.estimate_usd:.4f} USD does not fit the tenant's budget"
    )
    error = ErrorDetail(
        type="budget_exceeded",
        message=f"{why} ({spent}); nothing was paid",
        retryable=True,
    )
    return _finish(record, Phase.FAILED, "failed", error, now)


def _deadline_exceeded(record: LedgerRecord, now: datetime) -> Decision:
    error = ErrorDetail(
        type="deadline_exceeded",
        message="the request's deadline passed before it could be submitted; nothing was paid",
        retryable=False,
    )
    return _finish(record, Phase.FAILED, "failed", error, now)


def _never_posted(record: LedgerRecord) -> bool:
    """Waiting for a slot, or backing off after a submit that provably never arrived."""
    return record.phase in (Phase.ACCEPTED, Phase.BACKING_OFF)


def _on_progress(record: LedgerRecord, event: Event, now: datetime, policy: Policy) -> Decision:
    if not record.published and record.event is not None:
        # Built but not yet announced: whatever happened, announce exactly that event.
        if isinstance(event, Published):
            return _published(record, now)
        return Decision(None, (Publish(record.event),))
    if record.terminal:
        return NOTHING
    match event:
        case Accepted(job=job):
            return _accepted(record, job, now, adopted=False)
        case NotSent(error=error, retry_after=delay):
            return _not_sent(record, error, delay, now, policy)
        case DeadlinePassed() if record.phase is Phase.ACCEPTED and _past_deadline(record, now):
            return _deadline_exceeded(record, now)
        case SlotGranted(budget=budget) if record.phase is Phase.ACCEPTED:
            if _past_deadline(record, now):
                return _deadline_exceeded(record, now)
            if budget is not None and not budget.fits:
                return _over_budget(record, budget, now)
            # Written and committed before the POST: from here the key may have been paid for.
            # The estimate is reserved in the same commit (counted against the budget).
            charge = {}
            if budget is not None:
                charge = {"charged_usd": budget.estimate_usd, "budget_period": budget.period_start}
            return _post(record, now, policy, attempts=record.attempts + 1, **charge)
        case BudgetMayFit() if record.phase is Phase.ACCEPTED:
            return Decision(None, (AcquireSlot(_deadline(record)),))
        case Ambiguous(error=error) if record.phase is Phase.SUBMITTING:
            return _unknown(record, now, policy, last_error=error)
        case Refused(error=error) if record.phase is Phase.SUBMITTING:
            return _finish(record, Phase.FAILED, "failed", error, now)
        case RetryDue() if record.phase is Phase.BACKING_OFF:
            if _past_deadline(record, now):
                return _deadline_exceeded(record, now)  # the last attempt never arrived
            # SUBMITTING again marks this attempt as under way: after a crash from here on,
            # the POST may have happened and the key goes UNKNOWN, not re-posted.
            return _post(record, now, policy, retry_at=None)
        case Restored():
            return _restored(record, now, policy)
        case News():
            return _news(record, event, now, policy)
        case ResultGone(error=error) if record.phase in (Phase.SUBMITTED, Phase.RESULT_READY):
            return _finish(record, Phase.EXPIRED, "expired", error, now)
        case FilesStored(artifacts=artifacts, result=result) if record.phase is Phase.RESULT_READY:
            return _stored(record, artifacts, result, now)
        case FilesExpired(error=error) if record.phase is Phase.RESULT_READY:
            if record.result_refetches >= policy.max_result_refetches:
                return _finish(record, Phase.EXPIRED, "expired", error, now)
            refetch = record.result_refetches + 1
            return _change(record, now, result_refetches=refetch).then(FetchResult())
        case ResultFetched() if record.phase is Phase.SUBMITTED and record.job is not None:
            news = News(
                request_id=record.job.request_id,
                ok=event.ok,
                payload=event.payload,
                error=event.error,
                cost_units=event.cost_units,
                unit_price=event.unit_price,
            )
            return _news(record, news, now, policy)
        case ResultFetched(ok=False) if record.phase is Phase.RESULT_READY:
            # A refetch (for fresh file URLs) now reads as a failure, contradicting the first
            # answer: the files are what is missing, so the key expires rather than failing.
            gone = ErrorDetail(type="output_expired", message="output files gone", retryable=False)
            return _finish(record, Phase.EXPIRED, "expired", gone, now)
        case ResultFetched(payload=payload) if record.phase is Phase.RESULT_READY:
            return _change(record, now, result=payload).then(StoreFiles())
        case FilesRefused(error=error) if record.phase is Phase.RESULT_READY:
            return _finish(record, Phase.FAILED, "failed", error, now)
        case UnknownUnresolved() if record.phase is Phase.UNKNOWN:
            return _unresolved(record, now, policy)
        case HistorySearched(matches=matches, as_of=as_of) if record.phase is Phase.UNKNOWN:
            return _searched(record, matches, as_of, now, policy)
        case StepFailed(step=step, error=error) if _step_applies(record, step):
            return _step_failed(record, step, error, now, policy)
        case StepOk() if record.phase is Phase.SUBMITTED:
            if record.step_failures:
                fresh = _change(record, now, step_failures=0, step_failing_since=None)
                return fresh.then(PollAgain())
            return Decision(None, (PollAgain(),))
        case Throttled(retry_after=at_least) if record.phase is Phase.SUBMITTED:
            # Back-pressure, not a failure: no budget is spent.
            return Decision(None, (PollAgain(at_least),))
        case Finished() if record.phase is Phase.SUBMITTED:
            return Decision(None, (FetchResult(),))
        case Due(step=step):
            return _due(record, step)
        case AccountChecked(news=news, ours=True):
            return _news(record, replace(news, account_confirmed=True), now, policy)
        case AccountChecked(news=news, ours=None) if record.phase in _ADOPTING:
            return Decision(None, (AskAgain(news),))  # moot once the key has moved on
    return NOTHING


# The phases in which a webhook's request may be adopted as the key's.
_ADOPTING = frozenset({Phase.SUBMITTING, Phase.UNKNOWN})


def may_adopt(record: LedgerRecord | None, news: News) -> bool:
    """Whether `news` (through its attempt's URL) could still reveal this key's request."""
    return record is not None and record.phase in _ADOPTING and news.attempt == record.attempts


def _due(record: LedgerRecord, step: Step | Literal["search"]) -> Decision:
    phases, effect = _DUE[step]
    return Decision(None, (effect,)) if record.phase in phases else NOTHING


# The phases in which each step runs.
_STEP_PHASES: dict[Step, frozenset[Phase]] = {
    "poll": frozenset({Phase.SUBMITTED}),
    "fetch": frozenset({Phase.SUBMITTED, Phase.RESULT_READY}),
    "store": frozenset({Phase.RESULT_READY}),
}


def _step_applies(record: LedgerRecord, step: Step) -> bool:
    return record.phase in _STEP_PHASES[step]


# What each wait's end runs, and in which phases it still has something to do.
_DUE: dict[str, tuple[frozenset[Phase], Effect]] = {
    "poll": (_STEP_PHASES["poll"], Poll()),
    "fetch": (_STEP_PHASES["fetch"], FetchResult()),
    "store": (_STEP_PHASES["store"], StoreFiles()),
    "search": (frozenset({Phase.UNKNOWN}), Search()),
}


def _step_failed(
    record: LedgerRecord, step: Step, error: ErrorDetail, now: datetime, policy: Policy
) -> Decision:
    failures = record.step_failures + 1
    # A time from another replica's clock, ahead of this one, counts as now.
    since = min(record.step_failing_since or now, now)
    if failures >= policy.max_step_failures or now - since >= policy.step_deadline:
        spent = ErrorDetail(
            type=f"{step}_failed",
            message=f"{step} failed {failures} times over {(now - since).total_seconds():.0f} s;"
            f" last: {error.type}: {error.message}",
            retryable=error.retryable,
        )
        if record.cancel_requested:
            return _finish(record, Phase.CANCELLED, "cancelled", _cancelled_error(), now)
        return _finish(record, Phase.FAILED, "failed", spent, now)
    return _change(record, now, step_failures=failures, step_failing_since=since).then(
        RetryStep(step, failures)
    )


def _accepted(record: LedgerRecord, job: ProviderJob, now: datetime, *, adopted: bool) -> Decision:
    if record.phase not in (Phase.SUBMITTING, Phase.UNKNOWN):
        return NOTHING  # a second answer for the same key never replaces the first
    updated = _change(
        record,
        now,
        phase=Phase.SUBMITTED,
        job=job,
        adopted=adopted,
        submitted_at=now,
        retry_at=None,
    )
    if record.cancel_requested:
        return updated.then(CancelAtProvider(job), Watch())
    return updated.then(Watch())


def _not_sent(
    record: LedgerRecord, error: ErrorDetail, delay: float, now: datetime, policy: Policy
) -> Decision:
    if record.phase is not Phase.SUBMITTING:
        return NOTHING
    if record.cancel_requested:
        return _finish(record, Phase.CANCELLED, "cancelled", _cancelled_error(), now)
    if record.attempts >= policy.max_submit_attempts:
        return _finish(record, Phase.FAILED, "failed", error, now)
    at = now + timedelta(seconds=delay)
    # The attempt is counted now, before the retry's POST, so a crash cannot reset the budget.
    waiting = {"phase": Phase.BACKING_OFF, "attempts": record.attempts + 1, "retry_at": at}
    return _change(record, now, last_error=error, **waiting).then(PostLater(at))


def _post(record: LedgerRecord, now: datetime, policy: Policy, **changes: Any) -> Decision:
    """Commit the intent to POST this attempt, with the start deadline it will carry, then
    POST: the provider starts it by `start_by` or never, which bounds what a search of its
    records must wait for."""
    start_by = _start_by(record, now, policy)
    posting = {"phase": Phase.SUBMITTING, "posted_at": now, "start_by": start_by, **changes}
    return _change(record, now, **posting).then(Post(start_by))


def _start_by(record: LedgerRecord, now: datetime, policy: Policy) -> datetime | None:
    limits = [_deadline(record)]
    if policy.start_timeout is not None:
        limits.append(now + policy.start_timeout)
    return min((limit for limit in limits if limit is not None), default=None)


def _restored(record: LedgerRecord, now: datetime, policy: Policy) -> Decision:
    match record.phase:
        case Phase.ACCEPTED:
            return Decision(None, (AcquireSlot(_deadline(record)),))
        case Phase.BACKING_OFF:
            # The last attempt provably never reached the provider; its retry is still due.
            return Decision(None, (PostLater(record.retry_at or now),))
        case Phase.SUBMITTING:
            # The POST may have happened before the crash: never re-post blindly.
            return _unknown(record, now, policy)
        case Phase.UNKNOWN:
            return Decision(None, _awaiting(record, now, policy))
        case Phase.SUBMITTED:
            return Decision(None, (Watch(),))
        case Phase.RESULT_READY:
            return Decision(None, (StoreFiles(),))
    return NOTHING


def _unknown(record: LedgerRecord, now: datetime, policy: Policy, **changes: Any) -> Decision:
    pending = _change(record, now, phase=Phase.UNKNOWN, unknown_since=now, **changes)
    return pending.then(*_awaiting(pending.record, now, policy))


def _absence_provable_at(record: LedgerRecord, policy: Policy) -> datetime | None:
    """When the history can prove the current attempt never arrived: past its start deadline
    (so it can never run) and the history's lag (so it would be listed)."""
    if not policy.reconcile or record.start_by is None:
        return None
    return record.start_by + policy.history_lag + policy.clock_slack


def _unknown_until(record: LedgerRecord, now: datetime, policy: Policy) -> datetime:
    """When an ambiguous submit nothing resolved ends (`_unresolved`)."""
    # A time from another replica's clock, ahead of this one, counts as now.
    since = min(record.unknown_since or record.updated_at, now)
    until = since + policy.unknown_grace
    provable = _absence_provable_at(record, policy)
    if provable is not None:
        # The wait outlasts the proof, with room for the searches that make it.
        until = max(until, provable + policy.history_lag)
    return until


def _awaiting(record: LedgerRecord, now: datetime, policy: Policy) -> tuple[Effect, ...]:
    if policy.reconcile:
        return (SearchHistory(),)  # each answer that settles nothing checks the grace
    return (AwaitAdoption(_unknown_until(record, now, policy)),)


def _searched(
    record: LedgerRecord,
    matches: tuple[ProviderJob, ...] | None,
    as_of: datetime,
    now: datetime,
    policy: Policy,
) -> Decision:
    if matches is not None and len(matches) == 1:
        # The provider's own records, read with our key: the request is ours. Adopt it.
        return _accepted(record, matches[0], now, adopted=True)
    provable = _absence_provable_at(record, policy)
    if matches == () and provable is not None and as_of >= provable:
        return _absent(record, now, policy)
    if now >= _unknown_until(record, now, policy):
        return _unresolved(record, now, policy)
    # Not listed yet, or several requests look alike, or unreadable: ask again.
    return Decision(None, (SearchHistory(),))


def _absent(record: LedgerRecord, now: datetime, policy: Policy) -> Decision:
    """The last POST provably never reached the provider: nothing was paid for it."""
    if record.cancel_requested:
        return _finish(record, Phase.CANCELLED, "cancelled", _cancelled_error(), now)
    if _past_deadline(record, now):
        return _deadline_exceeded(record, now)
    if record.attempts >= policy.max_submit_attempts:
        error = ErrorDetail(
            type="submit_lost",
            message=f"none of {record.attempts} submits reached the provider (its records say)",
            retryable=True,
        )
        return _finish(record, Phase.FAILED, "failed", error, now)
    return _post(
        record,
        now,
        policy,
        attempts=record.attempts + 1,
        proven_absent=record.proven_absent + 1,
        retry_at=None,
    )


def _news(record: LedgerRecord, news: News, now: datetime, policy: Policy) -> Decision:
    adopting = record.phase in _ADOPTING
    if adopting:
        if news.job is None or news.attempt != record.attempts:
            return NOTHING  # no handle, or a URL made for an earlier attempt
        if not news.account_confirmed:
            # Anyone who learnt the URL could have sent their own job to it: adopt the
            # request only once it is known to be our account's.
            return Decision(None, (ConfirmAccount(news),))
        # Our URL, this attempt, our account: the request is this key's. Adopt, never re-post.
        record = record.model_copy(
            update={
                "phase": Phase.SUBMITTED,
                "job": news.job,
                "adopted": record.phase is Phase.UNKNOWN,
                "submitted_at": now,
                "retry_at": None,
            }
        )
    elif record.phase is not Phase.SUBMITTED or record.job is None:
        return NOTHING
    elif record.job.request_id != news.request_id:
        return NOTHING  # news about a request that is not this key's: ignore
    # An adoption commits at once: its news may never come again (a webhook's offset can commit
    # before it is adopted), and without it the key would end unresolved or be posted again.
    return _outcome(record, news, now, policy, may_defer=not adopting)


def _outcome(
    record: LedgerRecord, news: News, now: datetime, policy: Policy, *, may_defer: bool
) -> Decision:
    extra: dict[str, Any] = {}
    if news.inference_seconds is not None:
        extra["inference_seconds"] = news.inference_seconds
    if news.cost_units is not None:
        extra["cost_units"] = news.cost_units
    if news.unit_price is not None:
        extra["unit_price"] = news.unit_price
    if not news.ok:
        error = news.error or ErrorDetail(type="provider_error", message="failed", retryable=False)
        record = record.model_copy(update=extra)
        if error.type == "client_cancelled" or record.cancel_requested:
            return _finish(record, Phase.CANCELLED, "cancelled", error, now)
        if _never_started(record, error, now, policy):
            # It never ran, so it was not billed: queue it again (our start deadline, not the
            # request's own, ran out).
            return _post(record, now, policy, attempts=record.attempts + 1, job=None)
        return _finish(record, Phase.FAILED, "failed", error, now)
    if news.payload is None:
        fresh = {"step_failures": 0, "step_failing_since": None}  # polling is over
        return _change(record, now, **extra, **fresh).then(FetchResult())
    ready = _change(
        record, now, phase=Phase.RESULT_READY, result=news.payload, result_at=now, **extra
    )
    # Copying the files is idempotent (each lands at a key derived from the job), so the result
    # need not be committed first: the stored state commits it, one write instead of two.
    return Decision(ready.record, (StoreFiles(),), deferrable=may_defer)


def _never_started(record: LedgerRecord, error: ErrorDetail, now: datetime, policy: Policy) -> bool:
    within = not _past_deadline(record, now) and record.attempts < policy.max_submit_attempts
    return error.type == START_TIMEOUT and within


def _unresolved(record: LedgerRecord, now: datetime, policy: Policy) -> Decision:
    if record.cancel_requested:
        return _finish(record, Phase.CANCELLED, "cancelled", _cancelled_error(), now)
    spent = record.attempts >= policy.max_submit_attempts or _past_deadline(record, now)
    if not policy.resubmit_unknown or spent:
        error = ErrorDetail(
            type="submit_unknown",
            message="the submit's outcome stayed unknown and no webhook revealed it",
            retryable=True,
        )
        return _finish(record, Phase.FAILED, "failed", error, now)
    return _post(
        record,
        now,
        policy,
        attempts=record.attempts + 1,
        resubmissions=record.resubmissions + 1,
        retry_at=None,
    )


def _stored(
    record: LedgerRecord, artifacts: tuple[Artifact, ...], result: Any, now: datetime
) -> Decision:
    charged = _settled(record, "succeeded")
    # The provider's result is kept as the event has it, pointing at the stored copies.
    update = {"phase": Phase.STORED, "finished_at": now, "charged_usd": charged, "result": None}
    stored = record.model_copy(update=update)
    event = build_event(stored, "succeeded", None, artifacts, result, now)
    stored = stored.model_copy(update={"event": event, "updated_at": now})
    return Decision(stored, (Publish(event),))


def _published(record: LedgerRecord, now: datetime) -> Decision:
    phase = Phase.COMPLETED if record.phase is Phase.STORED else record.phase
    return _change(record, now, phase=phase, published=True).then()


def _finish(
    record: LedgerRecord, phase: Phase, status: Status, error: ErrorDetail, now: datetime
) -> Decision:
    assert phase in TERMINAL_PHASES
    # A result not stored is not kept: a finished key holds only what its event says.
    update = {"phase": phase, "finished_at": now, "last_error": error, "result": None}
    ended = record.model_copy(update={**update, "charged_usd": _settled(record, status)})
    event = build_event(ended, status, error, (), None, now)
    ended = ended.model_copy(update={"event": event, "updated_at": now})
    return Decision(ended, (Publish(event),))


def build_event(
    record: LedgerRecord,
    status: Status,
    error: ErrorDetail | None,
    artifacts: tuple[Artifact, ...],
    result: Any,
    now: datetime,
) -> CompletionEvent:
    """The completion event for a finished key; its id is derived, so rebuilding is identical."""
    request_id = record.job.request_id if record.job else None
    cost = _cost(record)
    event_id = uuid.uuid5(_EVENT_NAMESPACE, f"{record.idempotency_key}\n{request_id}\n{status}")
    return CompletionEvent(
        event_id=str(event_id),
        idempotency_key=record.idempotency_key,
        status=status,
        endpoint=record.endpoint,
        request_id=request_id,
        artifacts=list(artifacts),
        result=result,
        error=error,
        timings=_timings(record, now),
        attempts=record.attempts,
        cost_units=record.cost_units,
        cost_usd=cost,
        cost_source="estimate" if cost is not None else None,
        metadata=record.request.metadata,
        replayed=False,
        completed_at=now,
    )


def _settled(record: LedgerRecord, status: Status) -> float | None:
    """What a finished key counts against its budget: its cost when known; else its estimate
    if the request ran (fal bills what ran), nothing if it never did."""
    if record.charged_usd is None:
        return None
    if (cost := _cost(record)) is not None:
        return cost
    ran = record.result is not None or status in ("succeeded", "expired")
    return record.charged_usd if ran else 0.0


def _cost(record: LedgerRecord) -> float | None:
    if record.cost_units is None or record.unit_price is None:
        return None
    return round(record.cost_units * record.unit_price, 9)


def _timings(record: LedgerRecord, now: datetime) -> Timings:
    # accepted_at may come from another replica's clock, or this one before it stepped back.
    total_ms = max(0, int((now - record.accepted_at).total_seconds() * 1000))
    running_ms = max(0, int((record.inference_seconds or 0.0) * 1000))
    running_ms = min(running_ms, total_ms)
    return Timings(queued_ms=total_ms - running_ms, running_ms=running_ms, total_ms=total_ms)


def _cancelled_error() -> ErrorDetail:
    return ErrorDetail(type="client_cancelled", message="cancelled by request", retryable=False)


def _change(record: LedgerRecord, now: datetime, **changes: Any) -> _Pending:
    if changes.keys() & {"phase", "result", "job", "result_refetches"}:
        # Progress: a new step begins with a fresh budget.
        changes = {"step_failures": 0, "step_failing_since": None, **changes}
    return _Pending(record.model_copy(update={**changes, "updated_at": now}))


@dataclass(frozen=True)
class _Pending:
    record: LedgerRecord

    def then(self, *effects: Effect) -> Decision:
        return Decision(self.record, effects)
