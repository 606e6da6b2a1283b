"""`Jobs` and `Steps` against in-package fakes: whole lives of keys in milliseconds.

The same rules are proven on the real broker, MinIO and emulator elsewhere; here the
schedules that are hard to arrange there (a cancel while a key waits for a slot, a provider
that cannot say whose request a webhook names, a poll answered 429) run exactly.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from opentelemetry.trace import NoOpTracer

from genrelay.consumer import lifecycle as lc
from genrelay.consumer.dispatch.jobs import Jobs, Timing
from genrelay.consumer.dispatch.slots import Slots
from genrelay.consumer.dispatch.timers import TIMER_CONTEXT
from genrelay.consumer.errors import (
    DownloadRefused,
    MaybeSent,
    NotFound,
    NotSent,
    ProviderError,
    RateLimited,
    StoreError,
)
from genrelay.consumer.events.recent_outcomes import RecentOutcomes
from genrelay.consumer.fakes import FakeFiles, FakeProvider, MemoryLedger, MemoryPublisher
from genrelay.consumer.provider.prices import Prices
from genrelay.consumer.provider.provider import JobState, JobStatus, ListedRequest
from genrelay.consumer.service.metrics import RelayMetrics
from genrelay.consumer.steps import Observers, Steps
from genrelay.schemas.completions import ErrorDetail
from genrelay.schemas.ledger import Phase, ProviderJob
from tests.waiting import eventually


@pytest.fixture(autouse=True)
def timers_leave_their_context_empty() -> Iterator[None]:
    """Every key's timer shares one empty context: whatever a test's timers ran, it stays so."""
    yield
    assert len(TIMER_CONTEXT) == 0


ENDPOINT = "fal-ai/flux/schnell"


@dataclass
class World:
    jobs: Jobs
    ledger: MemoryLedger
    provider: FakeProvider
    publisher: MemoryPublisher
    files: FakeFiles
    slots: Slots
    crashes: list[BaseException]

    def submit(self, key: str, **fields: Any) -> None:
        request = {"idempotency_key": key, "endpoint": ENDPOINT, "input": {"p": key}, **fields}
        self.jobs.deliver(key, 0, lc.SubmitCommand(request, f"fp-{key}", ENDPOINT))

    def events(self, key: str) -> list[str]:
        return [e.status for e in self.publisher.completions if e.idempotency_key == key]


@asynccontextmanager
async def world(
    *, slots: int = 10, policy: lc.Policy | None = None, **timing: float
) -> AsyncIterator[World]:
    ledger, provider, publisher, files = (
        MemoryLedger(),
        FakeProvider(),
        MemoryPublisher(),
        FakeFiles(),
    )
    metrics = RelayMetrics()
    observers = Observers(NoOpTracer(), metrics, RecentOutcomes())
    crashes: list[BaseException] = []
    quick = {"poll_grace": 0.01, "poll_max_interval": 0.05, "history_search_interval": 0.01}
    settings = Timing(**{**quick, "retry_base": 0.01, "retry_max": 0.05, **timing})
    jobs: Jobs
    steps = Steps(
        provider=provider,
        files=files,
        publisher=publisher,
        webhook_url=lambda key, attempt: f"http://relay/webhooks/fal?key={key}&attempt={attempt}",
        observers=observers,
        backoff=lambda attempt: jobs.backoff(attempt),
        history=provider,
        prices=Prices(None, {ENDPOINT: 0.0125}),
    )
    shared = Slots(slots, slots)
    jobs = Jobs(
        ledger=ledger,
        steps=steps,
        slots=shared,
        observers=observers,
        group_id="g",
        policy=policy or lc.Policy(),
        timing=settings,
        on_crash=crashes.append,
    )
    try:
        yield World(jobs, ledger, provider, publisher, files, shared, crashes)
    finally:
        await jobs.release({0}, grace=0.1)
        metrics.shutdown()
    assert crashes == []


def raising(error: Exception) -> Callable[[], Any]:
    def answer() -> Any:
        raise error

    return answer


async def test_a_key_runs_its_whole_life_and_is_paid_once() -> None:
    async with world() as w:
        w.submit("a")
        await eventually(lambda: w.events("a") == ["succeeded"], timeout=30)
    assert len(w.provider.submits) == 1
    assert w.ledger.phases("a")[0] == "SUBMITTING"  # a free slot: no ACCEPTED write first


async def test_a_cancel_while_waiting_for_a_slot_ends_the_key_without_a_post() -> None:
    async with world(slots=1, poll_grace=60) as w:
        w.submit("running")
        await eventually(lambda: len(w.provider.submits) == 1, timeout=30)
        w.submit("waiting")
        await eventually(lambda: w.ledger.phases("waiting") == ["ACCEPTED"], timeout=30)
        w.jobs.deliver("waiting", 0, lc.CancelCommand())
        await eventually(lambda: w.events("waiting") == ["cancelled"], timeout=30)
        assert len(w.provider.submits) == 1
        assert w.slots.waiting == 0  # its place in the queue was given up


async def test_a_cancel_during_a_not_sent_back_off_ends_the_key_without_a_post() -> None:
    async with world(retry_base=30, retry_max=30) as w:
        w.provider.submit_answers.append(raising(NotSent("429", retry_after=30.0)))
        w.submit("storm")
        await eventually(lambda: "BACKING_OFF" in w.ledger.phases("storm"), timeout=30)
        w.jobs.deliver("storm", 0, lc.CancelCommand())
        await eventually(lambda: w.events("storm") == ["cancelled"], timeout=30)
    assert w.provider.submits == []


async def test_a_webhook_the_provider_cannot_vouch_for_yet_is_asked_about_again() -> None:
    async with world() as w:
        # The submit's answer is lost: the key is UNKNOWN, its request id known only to fal.
        w.provider.submit_answers.append(raising(MaybeSent("reset after sending")))
        w.submit("lost")
        await eventually(lambda: w.ledger.phases("lost")[-1:] == ["UNKNOWN"], timeout=30)
        w.provider.known.add("req-fal")
        # The first confirmation cannot reach fal, the second finds the request: adopted.
        w.provider.status_answers.append(raising(ProviderError("502 from the gateway")))
        job = lc.News(
            request_id="req-fal",
            ok=True,
            payload={"images": []},
            job=ProviderJob(
                request_id="req-fal",
                status_url="http://fake.provider/s",
                response_url="http://fake.provider/r",
                cancel_url="http://fake.provider/c",
            ),
            via="webhook",
            attempt=1,
        )
        w.jobs.deliver("lost", 0, job)
        await eventually(lambda: w.events("lost") == ["succeeded"], timeout=30)
        record = w.ledger.get("lost")
        assert record is not None
        assert record.adopted
        assert w.provider.statuses.count("req-fal") == 2


async def test_a_poll_answered_429_waits_at_least_its_retry_after() -> None:
    async with world(poll_grace=0.01) as w:
        still = JobStatus(JobState.IN_QUEUE)
        w.provider.status_answers.extend(
            [raising(RateLimited("429", retry_after=0.3)), lambda: still]
        )
        w.submit("busy")
        await eventually(lambda: len(w.provider.statuses) == 2, timeout=30)
        # The provider's own clock of the two polls, not when this test noticed them.
        throttled, next_poll = w.provider.status_times[:2]
        assert next_poll - throttled >= 0.3
        await eventually(lambda: w.events("busy") == ["succeeded"], timeout=30)
        # Back-pressure is not a failure: it spent nothing of the poll's budget.
        assert all(r.step_failures == 0 for r, _ in w.ledger.writes)


async def test_a_store_that_keeps_failing_ends_the_key_once_its_budget_is_spent() -> None:
    async with world(policy=lc.Policy(max_step_failures=3)) as w:
        w.files.answers.extend(raising(StoreError("SlowDown")) for _ in range(5))
        w.submit("full")
        await eventually(lambda: w.events("full") == ["failed"], timeout=30)
        record = w.ledger.get("full")
        assert record is not None
        assert record.phase is Phase.FAILED
        assert record.last_error is not None
        assert record.last_error.type == "store_failed"
        assert w.slots.used == 0  # the slot went back with the key's end


async def test_every_key_of_a_burst_is_polled_no_faster_than_the_poll_rate() -> None:
    async with world(slots=200, poll_grace=0.01, poll_rate=100.0) as w:
        w.provider.status_answers.extend(lambda: JobStatus(JobState.IN_QUEUE) for _ in range(150))
        started = time.monotonic()
        for n in range(150):
            w.submit(f"k{n}")
        await eventually(lambda: len(w.provider.statuses) >= 150, timeout=30)
        # 150 polls at 100/s after a one-second burst (about 100 at once): the other 49 are
        # spaced 10 ms apart, so the last cannot go sooner than 0.48 s in.
        assert w.provider.status_times[149] - started >= 0.48


async def test_a_key_still_waiting_for_a_slot_at_its_deadline_ends_then_unpaid() -> None:
    async with world(slots=1, poll_grace=60) as w:
        w.submit("running")
        await eventually(lambda: len(w.provider.submits) == 1, timeout=30)
        deadline = (datetime.now(UTC) + timedelta(seconds=1.5)).isoformat()
        w.submit("urgent", deadline=deadline)
        await eventually(lambda: w.events("urgent") == ["failed"], timeout=30)
        record = w.ledger.get("urgent")
        assert record is not None
        assert record.last_error is not None
        assert record.last_error.type == "deadline_exceeded"
        assert len(w.provider.submits) == 1
        assert w.slots.waiting == 0


# Reconciling from the request history, with times small enough for a test: the proof of
# absence comes 2.5 s (start deadline) + 0.3 s (lag) + 0.1 s (slack) after the POST. The
# deadline leaves a busy loop 1.5 s between the intent and the POST (an attempt with less
# than a second left is not sent).
RECONCILING = lc.Policy(
    reconcile=True,
    start_timeout=timedelta(seconds=2.5),
    history_lag=timedelta(seconds=0.3),
    clock_slack=timedelta(seconds=0.1),
)


async def test_a_lost_answer_is_adopted_from_the_request_history_not_reposted() -> None:
    async with world(policy=RECONCILING) as w:
        w.provider.lose_answers = 1  # it arrived, and is paid for, but its answer is lost
        w.submit("a")
        await eventually(lambda: w.events("a") == ["succeeded"], timeout=30)
        record = w.ledger.get("a")
    assert len(w.provider.submits) == 1
    assert record is not None
    assert record.adopted
    assert record.proven_absent == 0
    # Its tags name the key without showing it, and the attempt.
    tags = w.provider.tags[0]
    assert tags is not None
    assert tags.attempt == 1
    assert tags.key_hash != "a"


async def test_a_post_that_never_arrived_is_reposted_once_the_history_proves_it() -> None:
    async with world(policy=RECONCILING) as w:
        w.provider.submit_answers.append(raising(MaybeSent("reset on the way up")))
        w.submit("a")
        await eventually(lambda: w.events("a") == ["succeeded"], timeout=30)
        record = w.ledger.get("a")
    assert len(w.provider.submits) == 1  # the only POST that arrived
    assert record is not None
    assert (record.attempts, record.proven_absent, record.adopted) == (2, 1, False)


async def test_a_request_the_history_lists_only_late_is_adopted_never_reposted() -> None:
    async with world(policy=RECONCILING) as w:
        w.provider.history_visible = False  # indexing lags behind the queue
        w.provider.lose_answers = 1
        w.submit("a")
        await eventually(lambda: w.provider.history_reads >= 3, timeout=30)
        w.provider.history_visible = True  # listed within the lag
        await eventually(lambda: w.events("a") == ["succeeded"], timeout=30)
        record = w.ledger.get("a")
    assert len(w.provider.submits) == 1
    assert record is not None
    assert record.adopted


async def test_an_unreadable_history_never_reposts_and_the_grace_ends_the_key() -> None:
    policy = replace(RECONCILING, unknown_grace=timedelta(seconds=1.5))
    async with world(policy=policy) as w:
        w.provider.history_down = True
        w.provider.submit_answers.append(raising(MaybeSent("reset on the way up")))
        w.submit("a")
        await eventually(lambda: w.events("a") == ["failed"], timeout=30)
        record = w.ledger.get("a")
    assert w.provider.submits == []
    assert record is not None
    assert record.last_error is not None
    assert record.last_error.type == "submit_unknown"


async def test_the_event_carries_the_billed_units_and_their_estimated_cost() -> None:
    async with world() as w:
        w.provider.billable_units = 2.0
        w.submit("a")
        await eventually(lambda: w.events("a") == ["succeeded"], timeout=30)
    (event,) = w.publisher.completions
    assert (event.cost_units, event.cost_usd, event.cost_source) == (2.0, 0.025, "estimate")


def bare_steps(provider: FakeProvider, metrics: RelayMetrics) -> Steps:
    """`Steps` alone, reading `provider`'s request history, for a step tested by itself."""
    return Steps(
        provider=provider,
        files=FakeFiles(),
        publisher=MemoryPublisher(),
        webhook_url=lambda key, attempt: None,
        observers=Observers(NoOpTracer(), metrics, RecentOutcomes()),
        backoff=lambda attempt: 0.0,
        history=provider,
    )


async def test_an_attempt_whose_start_deadline_passed_before_sending_is_never_sent() -> None:
    # A replica frozen between committing SUBMITTING and its POST wakes after the attempt's
    # start deadline: the new owner may be proving from fal's records that it never arrived.
    provider = FakeProvider()
    metrics = RelayMetrics()
    steps = bare_steps(provider, metrics)
    now = datetime.now(UTC)
    decided = lc.decide(
        None, lc.SubmitCommand({"input": {"p": 1}}, "fp", ENDPOINT), "k", now, RECONCILING
    )
    posting = lc.decide(decided.record, lc.SlotGranted(), "k", now, RECONCILING)
    assert posting.record is not None
    assert posting.record.start_by is not None
    # The POST comes half a second before the start deadline: too late to send (fal needs
    # more than 0.1 s, and genrelay leaves itself a second).
    late = datetime.now(UTC) + timedelta(seconds=0.5)
    outcome = await steps.submit(posting.record, late)
    metrics.shutdown()
    assert isinstance(outcome, lc.NotSent)
    assert outcome.error.type == "start_deadline_passed"
    assert provider.submits == []


async def test_a_post_that_arrived_late_but_before_its_start_deadline_is_found() -> None:
    # A replica stalled between its intent and its POST, then sent it minutes later (still
    # before the attempt's start deadline): the search must find it, or the new owner would
    # prove it absent and pay twice.
    provider = FakeProvider()
    metrics = RelayMetrics()
    steps = bare_steps(provider, metrics)
    now = datetime.now(UTC)
    policy = replace(RECONCILING, start_timeout=timedelta(minutes=10))
    posted = now - timedelta(minutes=5)
    submit = lc.SubmitCommand({"input": {"p": 1}}, "fp", ENDPOINT)
    accepted = lc.decide(None, submit, "k", posted, policy)
    intent = lc.decide(accepted.record, lc.SlotGranted(), "k", posted, policy).record
    cut = ErrorDetail(type="submit_unknown", message="reset", retryable=True)
    unknown = lc.decide(intent, lc.Ambiguous(cut), "k", posted, policy).record
    assert unknown is not None
    late = ListedRequest("req-late", ENDPOINT, now - timedelta(minutes=1), {"p": 1})
    provider.listed.append(late)
    found = await steps.search(unknown)
    metrics.shutdown()
    assert isinstance(found, lc.HistorySearched)
    assert found.matches is not None
    assert [job.request_id for job in found.matches] == ["req-late"]


def news_of(w: World, key: str) -> lc.News:
    """A verified webhook saying the key's request succeeded."""
    record = w.ledger.get(key)
    assert record is not None
    assert record.job is not None
    job = record.job
    return lc.News(request_id=job.request_id, ok=True, payload={"images": []}, job=job)


async def test_a_result_commits_with_the_stored_state_and_its_webhook_only_then() -> None:
    async with world(poll_grace=60) as w:
        w.submit("a")
        await eventually(lambda: w.ledger.phases("a")[-1:] == ["SUBMITTED"], timeout=30)
        phase_when_done: list[list[str]] = []
        w.jobs.deliver(
            "a", 0, news_of(w, "a"), on_done=lambda: phase_when_done.append(w.ledger.phases("a"))
        )
        await eventually(lambda: w.events("a") == ["succeeded"], timeout=30)
    # No RESULT_READY write of its own: copying the files may be repeated, so the result
    # commits with the outcome, and the webhook's offset may commit only once that did.
    assert w.ledger.phases("a") == ["SUBMITTING", "SUBMITTED", "COMPLETED"]
    assert phase_when_done == [["SUBMITTING", "SUBMITTED", "COMPLETED"]]
    record = w.ledger.get("a")
    assert record is not None
    assert record.result_at is not None
    assert record.result is None  # the event holds the result, pointing at the copies


async def test_a_result_not_yet_committed_is_lost_with_the_partition_and_its_webhook_kept() -> None:
    async with world(poll_grace=60) as w:
        w.submit("a")
        await eventually(lambda: w.ledger.phases("a")[-1:] == ["SUBMITTED"], timeout=30)
        done: list[str] = []
        # The partition moves while the files are copied: the outcome's commit is fenced.
        w.files.answers.append(lambda: w.ledger.lose(0))
        w.jobs.deliver("a", 0, news_of(w, "a"), on_done=lambda: done.append("a"))
        await eventually(lambda: w.jobs.active == 0, timeout=30)
    # The files were copied with the result uncommitted, and the webhook's offset never
    # commits, so the next owner reads it again from SUBMITTED.
    assert w.files.stored == ["a"]
    assert done == []
    assert w.ledger.phases("a") == ["SUBMITTING", "SUBMITTED"]
    assert all(also == () for _, also in w.ledger.writes)  # no completion event committed


async def paid_but_unknown(w: World, key: str) -> None:
    """Submit `key`; its POST arrives (as req-0) and is paid, but the answer is lost."""
    w.provider.lose_answers = 1
    w.submit(key)
    await eventually(lambda: w.ledger.phases(key)[-1:] == ["UNKNOWN"], timeout=30)


def committed_events(w: World, key: str) -> list[str]:
    """The statuses of the key's completion events that committed (not those fenced)."""
    return [
        r.event.status
        for r, also in w.ledger.writes
        if also and r.idempotency_key == key and r.event is not None
    ]


def hook(w: World, key: str, payload: Any, *, confirmed: bool) -> lc.News:
    """A webhook for the key's current attempt, for the request the fake posted as req-0."""
    url = f"http://fake.provider/{ENDPOINT}/requests/req-0"
    job = ProviderJob(
        request_id="req-0", status_url=f"{url}/status", response_url=url, cancel_url=url
    )
    record = w.ledger.get(key)
    assert record is not None
    return lc.News(
        request_id="req-0",
        ok=True,
        payload=payload,
        job=job,
        via="webhook",
        attempt=record.attempts,
        account_confirmed=confirmed,
    )


async def test_an_adoption_commits_before_its_files_are_copied() -> None:
    # The answer to the POST was lost (UNKNOWN); a webhook whose account had to be confirmed
    # first reveals the request. Its offset committed with that question, so it is never
    # read again: the adoption itself must be durable before the copy, which the partition
    # outlives only in the ledger.
    policy = lc.Policy(unknown_grace=timedelta(seconds=1), resubmit_unknown=True)
    async with world(policy=policy) as w:
        await paid_but_unknown(w, "k")
        w.files.answers.append(lambda: w.ledger.lose(0))
        w.jobs.deliver("k", 0, hook(w, "k", {"images": []}, confirmed=False))
        await eventually(lambda: w.jobs.active == 0, timeout=30)
        w.ledger.lost.clear()  # the partition comes back: its state is what the ledger holds
        w.jobs.resume(0)
        await eventually(lambda: committed_events(w, "k") != [], timeout=30)
    assert committed_events(w, "k") == ["succeeded"]
    assert len(w.provider.submits) == 1


async def test_an_adoption_outlives_a_failover_longer_than_its_grace() -> None:
    grace = timedelta(seconds=0.3)
    async with world(policy=lc.Policy(unknown_grace=grace), poll_grace=60) as w:
        await paid_but_unknown(w, "k")
        unknown = w.ledger.get("k")
        assert unknown is not None
        assert unknown.unknown_since is not None
        grace_ends = unknown.unknown_since + grace
        w.files.answers.append(lambda: w.ledger.lose(0))
        w.jobs.deliver("k", 0, hook(w, "k", {"images": []}, confirmed=True))
        await eventually(lambda: w.jobs.active == 0, timeout=30)
        # The new owner restores the key only after its grace to be adopted has passed.
        await eventually(lambda: datetime.now(UTC) > grace_ends, timeout=30)
        w.ledger.lost.clear()
        w.jobs.resume(0)
        await eventually(lambda: committed_events(w, "k") != [], timeout=30)
    assert committed_events(w, "k") == ["succeeded"]


async def test_a_refused_download_of_a_result_too_large_for_the_ledger_says_refused() -> None:
    async with world(poll_grace=60) as w:
        w.ledger.max_record_bytes = 20_000
        w.submit("k")
        await eventually(lambda: w.ledger.phases("k")[-1:] == ["SUBMITTED"], timeout=30)
        w.files.answers.append(raising(DownloadRefused("host not allowed")))
        big = {"images": [], "blob": "x" * 50_000}
        w.jobs.deliver("k", 0, replace(news_of(w, "k"), payload=big))
        await eventually(lambda: committed_events(w, "k") != [], timeout=30)
    record = w.ledger.get("k")
    assert record is not None
    assert record.event is not None
    assert record.event.error is not None
    assert record.event.error.type == "download_refused"


async def test_a_webhook_whose_account_is_asked_about_commits_its_offset_with_the_adoption() -> (
    None
):
    async with world(poll_grace=60) as w:
        await paid_but_unknown(w, "k")
        seen: list[list[str]] = []
        w.jobs.deliver(
            "k",
            0,
            hook(w, "k", None, confirmed=False),
            on_done=lambda: seen.append(w.ledger.phases("k")),
        )
        await eventually(lambda: committed_events(w, "k") == ["succeeded"], timeout=30)
    # Not when the question was asked: a crash before the answer would have lost the webhook.
    assert seen == [["SUBMITTING", "UNKNOWN", "SUBMITTED"]]


async def test_a_webhook_whose_account_is_asked_about_is_kept_if_the_partition_moves() -> None:
    async with world(poll_grace=60) as w:
        await paid_but_unknown(w, "k")
        done: list[str] = []

        def moved_while_asking() -> JobStatus:
            w.ledger.lose(0)
            return JobStatus(JobState.COMPLETED)

        w.provider.status_answers.append(moved_while_asking)
        w.jobs.deliver(
            "k", 0, hook(w, "k", None, confirmed=False), on_done=lambda: done.append("k")
        )
        await eventually(lambda: w.jobs.active == 0, timeout=30)
    assert w.provider.statuses == ["req-0"]  # it was asked about
    assert done == []  # so the next owner reads the webhook again
    assert w.ledger.phases("k") == ["SUBMITTING", "UNKNOWN"]


async def test_a_webhook_for_another_accounts_request_commits_its_offset_once_answered() -> None:
    async with world(poll_grace=60) as w:
        await paid_but_unknown(w, "k")
        done: list[str] = []
        held_while_asked: list[bool] = []

        def not_ours() -> JobStatus:
            held_while_asked.append(done == [])
            raise NotFound("unknown request req-evil")

        w.provider.status_answers.append(not_ours)
        w.jobs.deliver("k", 0, foreign_hook(w, "k"), on_done=lambda: done.append("k"))
        await eventually(lambda: done == ["k"], timeout=30)
        assert held_while_asked == [True]
        assert w.ledger.phases("k") == ["SUBMITTING", "UNKNOWN"]


def foreign_hook(w: World, key: str) -> lc.News:
    """A webhook through the key's URL naming another account's request."""
    ours = hook(w, key, None, confirmed=False)
    assert ours.job is not None
    evil = ours.job.model_copy(update={"request_id": "req-evil"})
    return replace(ours, request_id="req-evil", job=evil)


async def asked_while_fal_is_down(w: World, key: str) -> list[str]:
    """`key` paid but unknown; its webhook (unconfirmed) is asked about while fal cannot answer
    (asked again after the back-off). What has released its offset so far: "ours"."""
    await paid_but_unknown(w, key)
    w.provider.status_answers.append(raising(ProviderError("fal is down")))
    done: list[str] = []
    w.jobs.deliver(key, 0, hook(w, key, None, confirmed=False), on_done=lambda: done.append("ours"))
    return done


async def test_another_webhooks_answer_does_not_release_one_still_asked_about() -> None:
    async with world(poll_grace=60, retry_base=30, retry_max=30) as w:
        done = await asked_while_fal_is_down(w, "k")
        # The other webhook is not ours: answered at once, while ours waits for its re-ask.
        w.jobs.deliver("k", 0, foreign_hook(w, "k"), on_done=lambda: done.append("foreign"))
        await eventually(lambda: done == ["foreign"], timeout=30)
        assert w.provider.statuses == ["req-0", "req-evil"]
        # Ours is still unanswered: its offset waits (a crash now reads it again).


async def test_a_cancel_while_a_webhook_is_asked_about_does_not_release_it() -> None:
    async with world(poll_grace=60, retry_base=30, retry_max=30) as w:
        done = await asked_while_fal_is_down(w, "k")
        await eventually(lambda: w.provider.statuses == ["req-0"], timeout=30)
        w.jobs.deliver("k", 0, lc.CancelCommand())
        # The cancel is committed (the key may still adopt its request: fal may have run it)...
        await eventually(
            lambda: w.ledger.phases("k") == ["SUBMITTING", "UNKNOWN", "UNKNOWN"], timeout=30
        )
        # ...and the webhook still waits for its answer.
        assert done == []
