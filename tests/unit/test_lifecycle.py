"""The lifecycle of a key: one paid submission, one terminal outcome, whatever happens."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from genrelay.consumer import lifecycle as lc
from genrelay.consumer.ledger.packed import pack, unpacked
from genrelay.schemas.completions import Artifact, ErrorDetail
from genrelay.schemas.ledger import LedgerRecord, Phase, ProviderJob
from genrelay.schemas.webhooks import WebhookDelivery

KEY = "order-42/hero"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
GRACE = lc.Policy().unknown_grace
JOB = ProviderJob(
    request_id="req-1",
    status_url="http://q/fal-ai/flux/requests/req-1/status",
    response_url="http://q/fal-ai/flux/requests/req-1",
    cancel_url="http://q/fal-ai/flux/requests/req-1/cancel",
)
EVIL_JOB = JOB.model_copy(update={"request_id": "evil"})
SUBMIT = lc.SubmitCommand(
    request={"idempotency_key": KEY, "endpoint": "fal-ai/flux/schnell", "input": {"prompt": "x"}},
    fingerprint="f1",
    endpoint="fal-ai/flux/schnell",
)
OUTPUT = {"images": [{"url": "http://cdn/x.png", "content_type": "image/png"}]}
ERROR = ErrorDetail(type="runner_disconnected", message="boom", retryable=True)
ARTIFACT = Artifact(
    bucket="genrelay", key="k/0.png", size=3, sha256="a" * 64, content_type="image/png", etag="e"
)


def step(record: LedgerRecord | None, event: lc.Event) -> tuple[LedgerRecord | None, lc.Decision]:
    decision = lc.decide(record, event, KEY, NOW)
    return (decision.record or record), decision


def posting() -> LedgerRecord:
    """A key whose slot was granted: its intent to POST is recorded."""
    record, _ = step(None, SUBMIT)
    record, _ = step(record, lc.SlotGranted())
    assert record is not None
    return record


def submitted() -> LedgerRecord:
    record, _ = step(posting(), lc.Accepted(JOB))
    assert record is not None
    return record


def test_first_record_waits_for_a_slot_and_records_intent_only_then() -> None:
    decision = lc.decide(None, SUBMIT, KEY, NOW)
    assert decision.record is not None
    assert decision.record.phase is Phase.ACCEPTED
    assert decision.record.attempts == 0
    assert decision.effects == (lc.AcquireSlot(None),)
    granted = lc.decide(decision.record, lc.SlotGranted(), KEY, NOW)
    assert granted.record is not None
    assert granted.record.phase is Phase.SUBMITTING
    assert granted.record.attempts == 1
    assert granted.effects == (lc.Post(),)


def test_a_key_waiting_for_a_slot_is_cancelled_without_ever_being_posted() -> None:
    record, _ = step(None, SUBMIT)
    record, decision = step(record, lc.CancelCommand())
    assert record is not None
    assert record.phase is Phase.CANCELLED
    assert not any(isinstance(e, lc.Post | lc.PostLater) for e in decision.effects)
    record, _ = step(record, lc.Published())
    # The slot it was waiting for arrives afterwards: nothing happens.
    assert lc.decide(record, lc.SlotGranted(), KEY, NOW) == lc.NOTHING


def test_a_cancel_during_a_not_sent_back_off_ends_the_key_without_a_post() -> None:
    record, _ = step(posting(), lc.NotSent(ERROR, retry_after=30.0))
    record, _ = step(record, lc.CancelCommand())
    assert record is not None
    assert record.phase is Phase.CANCELLED
    record, _ = step(record, lc.Published())
    assert lc.decide(record, lc.RetryDue(), KEY, NOW) == lc.NOTHING
    assert lc.decide(record, lc.Restored(), KEY, NOW) == lc.NOTHING


def test_a_restored_key_that_was_waiting_for_a_slot_waits_again_never_unknown() -> None:
    record, _ = step(None, SUBMIT)
    decision = lc.decide(record, lc.Restored(), KEY, NOW)
    assert decision == lc.Decision(None, (lc.AcquireSlot(None),))


def test_the_unknown_grace_counts_from_when_the_submit_became_ambiguous() -> None:
    record, _ = step(posting(), lc.Ambiguous(ERROR))
    assert record is not None
    later = NOW + timedelta(minutes=5)
    decision = lc.decide(record, lc.Restored(), KEY, later)
    assert decision.effects == (lc.AwaitAdoption(NOW + GRACE),)


def test_replayed_record_never_resubmits() -> None:
    record, _ = step(None, SUBMIT)
    for _ in range(3):
        decision = lc.decide(record, SUBMIT, KEY, NOW)
        assert decision.record is None
        assert not any(isinstance(e, lc.Post | lc.PostLater) for e in decision.effects)


def test_conflicting_fingerprint_is_dead_lettered_and_changes_nothing() -> None:
    record = submitted()
    other = lc.SubmitCommand(request={}, fingerprint="f2", endpoint="fal-ai/flux/schnell")
    decision = lc.decide(record, other, KEY, NOW)
    assert decision == lc.Decision(None, (lc.Conflict(),))


def webhook(record: LedgerRecord | None, *, confirmed: bool = True, **fields: Any) -> lc.News:
    """A webhook through the URL of the record's current attempt."""
    news: dict[str, Any] = {
        "request_id": "req-1",
        "ok": True,
        "payload": OUTPUT,
        "job": JOB,
        "via": "webhook",
        "attempt": record.attempts if record is not None else 0,
        "account_confirmed": confirmed,
    }
    return lc.News(**{**news, **fields})


def test_ambiguous_submit_becomes_unknown_and_is_adopted_by_webhook() -> None:
    record, decision = step(posting(), lc.Ambiguous(ERROR))
    assert record is not None
    assert record.phase is Phase.UNKNOWN
    assert decision.effects == (lc.AwaitAdoption(NOW + GRACE),)
    unconfirmed = webhook(record, confirmed=False)
    # Anyone who learnt the URL could have sent a job to it: ask whose request it is first.
    assert lc.decide(record, unconfirmed, KEY, NOW) == lc.Decision(
        None, (lc.ConfirmAccount(unconfirmed),)
    )
    # A URL made for an earlier attempt adopts nothing.
    stale = webhook(record, attempt=record.attempts - 1)
    assert lc.decide(record, stale, KEY, NOW) == lc.NOTHING
    record, decision = step(record, webhook(record))
    assert record is not None
    assert record.phase is Phase.RESULT_READY
    assert record.adopted
    assert record.job == JOB
    assert decision.effects == (lc.StoreFiles(),)


def test_restored_submitting_is_never_reposted() -> None:
    record, decision = step(posting(), lc.Restored())
    assert record is not None
    assert record.phase is Phase.UNKNOWN
    assert decision.effects == (lc.AwaitAdoption(NOW + GRACE),)


def test_unknown_nobody_adopted_fails_unless_resubmission_is_the_policy() -> None:
    record, _ = step(posting(), lc.Restored())
    failed = lc.decide(record, lc.UnknownUnresolved(), KEY, NOW)
    assert failed.record is not None
    assert failed.record.phase is Phase.FAILED
    assert failed.record.event is not None
    assert failed.record.event.error is not None
    assert failed.record.event.error.type == "submit_unknown"

    policy = lc.Policy(resubmit_unknown=True)
    again = lc.decide(record, lc.UnknownUnresolved(), KEY, NOW, policy)
    assert again.record is not None
    assert again.record.resubmissions == 1
    assert again.effects == (lc.Post(),)


def test_not_sent_is_retried_later_and_counts_the_attempt() -> None:
    record, decision = step(posting(), lc.NotSent(ERROR, retry_after=2.0))
    assert record is not None
    assert record.phase is Phase.BACKING_OFF
    assert record.attempts == 2
    assert decision.effects == (lc.PostLater(NOW + timedelta(seconds=2)),)
    assert step(record, lc.Restored())[1].effects == decision.effects
    record, decision = step(record, lc.RetryDue())
    assert record is not None
    assert record.phase is Phase.SUBMITTING
    assert record.retry_at is None
    assert decision.effects == (lc.Post(),)


def test_a_back_off_recorded_as_submitting_with_a_retry_time_reads_as_backing_off() -> None:
    # How ledger records written before BACKING_OFF was a phase said it.
    backing_off, _ = step(posting(), lc.NotSent(ERROR, retry_after=2.0))
    assert backing_off is not None
    older = backing_off.model_dump(mode="json") | {"phase": "SUBMITTING"}
    assert LedgerRecord.model_validate(older).phase is Phase.BACKING_OFF
    assert LedgerRecord.model_validate_json(json.dumps(older)).phase is Phase.BACKING_OFF
    under_way = posting().model_dump(mode="json")
    assert LedgerRecord.model_validate(under_way).phase is Phase.SUBMITTING


def test_crash_during_a_retried_post_never_reposts() -> None:
    record, _ = step(posting(), lc.NotSent(ERROR, retry_after=2.0))
    record, _ = step(record, lc.RetryDue())  # the retry's POST starts, then the process dies
    record, decision = step(record, lc.Restored())
    assert record is not None
    assert record.phase is Phase.UNKNOWN
    assert decision.effects == (lc.AwaitAdoption(NOW + GRACE),)


def test_success_is_announced_only_after_files_are_stored() -> None:
    record: LedgerRecord | None = submitted()
    record, decision = step(record, lc.News(request_id="req-1", ok=True, payload=OUTPUT))
    assert not any(isinstance(e, lc.Publish) for e in decision.effects)
    record, decision = step(record, lc.FilesStored((ARTIFACT,), {"images": []}))
    assert record is not None
    assert record.phase is Phase.STORED
    (publish,) = decision.effects
    assert isinstance(publish, lc.Publish)
    assert publish.event.status == "succeeded"
    assert publish.event.artifacts == [ARTIFACT]
    record, _ = step(record, lc.Published())
    assert record is not None
    assert record.phase is Phase.COMPLETED


def test_late_duplicate_gets_the_stored_event_replayed() -> None:
    record: LedgerRecord | None = submitted()
    record, _ = step(record, lc.News(request_id="req-1", ok=True, payload=OUTPUT))
    record, first = step(record, lc.FilesStored((ARTIFACT,), {}))
    record, _ = step(record, lc.Published())
    (replay,) = lc.decide(record, SUBMIT, KEY, NOW).effects
    assert isinstance(replay, lc.Replay)
    original = first.effects[0]
    assert isinstance(original, lc.Publish)
    assert replay.event.event_id == original.event.event_id
    assert replay.event.replayed


def test_news_about_another_request_is_ignored() -> None:
    record = submitted()
    decision = lc.decide(record, lc.News(request_id="someone-else", ok=True, payload={}), KEY, NOW)
    assert decision == lc.NOTHING


def test_cancel_before_the_provider_answered_cancels_once_it_does() -> None:
    record, _ = step(posting(), lc.CancelCommand())
    record, decision = step(record, lc.Accepted(JOB))
    assert lc.CancelAtProvider(JOB) in decision.effects
    cancelled = ErrorDetail(type="client_cancelled", message="cancelled", retryable=False)
    record, decision = step(record, lc.News(request_id="req-1", ok=False, error=cancelled))
    assert record is not None
    assert record.phase is Phase.CANCELLED


# --- property: any interleaving ---------------------------------------------------------

MOVES = st.lists(
    st.sampled_from(
        [
            "record",
            "slot",
            "post_ok",
            "post_not_sent",
            "post_ambiguous",
            "post_refused",
            "webhook",
            "webhook_error",
            "poll_done",
            "crash",
            "crash_mid_post",
            "retry_due",
            "unresolved",
            "files",
            "files_expired",
            "refetched",
            "result_gone",
            "published",
            "cancel",
            "clock_back",
            "clock_ahead",
            "poll_failed",
            "fetch_failed",
            "store_failed",
            "foreign_webhook",
            "history",
            "history_down",
            "start_timeout",
            "due_poll",
            "due_fetch",
            "due_store",
            "due_search",
            "poll_running",
            "poll_throttled",
            "poll_finished",
            "account_ours",
            "account_unasked",
            "slot_over_budget_wait",
            "slot_over_budget_fail",
            "slot_within_budget",
            "budget_may_fit",
        ]
    ),
    max_size=40,
)


# Reconciling from a truthful request history: it lists every request that arrived.
SMALL_BUDGET = lc.Policy(
    max_step_failures=3,
    reconcile=True,
    start_timeout=timedelta(seconds=60),
    history_lag=timedelta(seconds=30),
)
DUE: dict[str, lc.Step | Literal["search"]] = {
    "due_poll": "poll",
    "due_fetch": "fetch",
    "due_store": "store",
    "due_search": "search",
}
POLLED: dict[str, lc.Event] = {
    "poll_running": lc.StepOk(),
    "poll_throttled": lc.Throttled(2.0),
    "poll_finished": lc.Finished(),
}
FAILING_STEPS: dict[str, lc.Step] = {
    "poll_failed": "poll",
    "fetch_failed": "fetch",
    "store_failed": "store",
}


@settings(max_examples=400, deadline=None)
@given(MOVES)
@example(["record", "slot", "post_ambiguous", "webhook", "crash"])  # an adoption, then a crash
@example(["record", "slot", "post_ok", "webhook", "result_gone", "crash", "webhook", "files"])
def test_no_sequence_pays_twice_or_ends_two_ways(moves: list[str]) -> None:
    record: LedgerRecord | None = None  # the key's state as decided
    committed: LedgerRecord | None = None  # as the ledger holds it: what a crash restores
    slot_due = False  # a slot the key waits for
    post_due = False  # a POST the relay would perform now
    paid = 0  # POSTs the provider may have accepted
    arrived: set[int] = set()  # the attempts whose POST reached the provider
    ran = False  # a request of the key started running (a start timeout can no longer hit)
    announced: set[tuple[str, str]] = set()  # events committed to the completions topic
    cancelled_before_any_post = False
    posts_after_that = 0
    clock = NOW  # steps back and jumps ahead, as wall clocks (and other replicas') do

    def apply(event: lc.Event) -> None:
        nonlocal record, committed, post_due, slot_due, posts_after_that, ran
        decision = lc.decide(record, event, KEY, clock, SMALL_BUDGET)
        if decision.deferrable:
            # Only a state whose effects are safe to repeat may skip its own commit, and never
            # an adoption (the news that revealed the request may not come again).
            assert decision.record is not None
            assert not decision.record.terminal
            assert all(isinstance(e, lc.StoreFiles | lc.FetchResult) for e in decision.effects)
            assert record is not None
            assert record.phase is Phase.SUBMITTED
            assert (decision.record.job, decision.record.adopted) == (record.job, record.adopted)
        elif decision.record is not None and not announces(decision):
            # An outcome commits only with the note that it was announced (`Published`).
            committed = decision.record
            if committed.published and committed.event is not None:
                announced.add((committed.event.event_id, committed.event.status))
        if decision.record is not None:
            # Every state comes back whole from the ledger's bytes (defaults left out), and from
            # those bytes as memory holds them for an open key.
            written = decision.record.model_dump_json(exclude_defaults=True).encode()
            assert LedgerRecord.model_validate_json(written) == decision.record
            assert unpacked(pack(written)) == written
        record = decision.record or record
        for effect in decision.effects:
            if isinstance(effect, lc.AcquireSlot):
                slot_due = True
            if isinstance(effect, lc.Post):
                post_due = True
                posts_after_that += cancelled_before_any_post
            if isinstance(effect, lc.Replay):
                announced.add((effect.event.event_id, effect.event.status))

    for move in moves:
        if move == "record":
            apply(SUBMIT)
        elif move == "slot" and slot_due:
            slot_due = False
            apply(lc.SlotGranted())
        elif move.startswith("slot_") and slot_due:
            slot_due = False
            budgets = {
                "slot_over_budget_wait": verdict(False, "wait"),
                "slot_over_budget_fail": verdict(False, "fail"),
                "slot_within_budget": verdict(True),
            }
            apply(lc.SlotGranted(budgets[move]))
        elif move == "budget_may_fit":
            apply(lc.BudgetMayFit())
        elif move.startswith("post_") and post_due:
            post_due = False
            if move in ("post_ok", "post_ambiguous"):
                paid += 1
                assert record is not None
                arrived.add(record.attempts)
            outcomes: dict[str, lc.Event] = {
                "post_ok": lc.Accepted(JOB),
                "post_not_sent": lc.NotSent(ERROR, 1.0),
                "post_ambiguous": lc.Ambiguous(ERROR),
                "post_refused": lc.Refused(ERROR),
            }
            apply(outcomes[move])
        elif move == "webhook" and paid:
            apply(webhook(record))
        elif move == "webhook_error" and paid:
            apply(webhook(record, ok=False, payload=None, error=ERROR))
        elif move == "poll_done" and record is not None and record.job is not None:
            apply(lc.News(request_id="req-1", ok=True, payload=OUTPUT))
        elif move == "crash":
            post_due = slot_due = False  # effects not yet performed die with the process
            record = committed  # and so does a state not yet committed
            apply(lc.Restored())
        elif move == "crash_mid_post" and post_due:
            paid += 1  # the POST reached the provider, but its answer died with us
            assert record is not None
            arrived.add(record.attempts)
            post_due = False
            record = committed
            apply(lc.Restored())
        elif move == "retry_due":
            apply(lc.RetryDue())
        elif move == "unresolved":
            apply(lc.UnknownUnresolved())
        elif move == "files":
            apply(lc.FilesStored((ARTIFACT,), {}))
        elif move == "files_expired":
            apply(lc.FilesExpired(ERROR))
        elif move == "refetched":
            apply(lc.ResultFetched(ok=True, payload=OUTPUT))
        elif move == "result_gone":
            apply(lc.ResultGone(ERROR))
        elif move == "published":
            apply(lc.Published())
        elif move == "cancel":
            if paid == 0 and not post_due and record is not None:
                cancelled_before_any_post = True
            apply(lc.CancelCommand())
        elif move == "foreign_webhook":
            # Another account's job, sent to our URL: its request is never adopted, because
            # asking with our key does not find it (ConfirmAccount comes back empty).
            apply(webhook(record, confirmed=False, request_id="evil", job=EVIL_JOB))
        elif move == "history" and record is not None:
            listed = (JOB,) if record.attempts in arrived else ()
            apply(lc.HistorySearched(listed, clock))
        elif move == "history_down":
            apply(lc.HistorySearched(None, clock))
        elif (
            move == "start_timeout"
            and record is not None
            and not ran
            and record.job
            and (record.phase is Phase.SUBMITTED)
        ):
            # fal's answer when our start deadline passed first: it never ran, nor billed.
            timeout = ErrorDetail(type="start_timeout", message="never started", retryable=False)
            paid -= 1
            ran = True  # one such answer per test keeps the count simple
            apply(lc.News(request_id="req-1", ok=False, error=timeout))
        elif move in FAILING_STEPS:
            apply(lc.StepFailed(FAILING_STEPS[move], ERROR))
        elif move in DUE:
            apply(lc.Due(DUE[move]))
        elif move in POLLED:
            apply(POLLED[move])
        elif move.startswith("account_") and record is not None:
            # The provider, asked with our key, knows the request (or could not be asked).
            ours = True if move == "account_ours" else None
            apply(lc.AccountChecked(webhook(record, confirmed=False), ours))
        elif move == "clock_back":
            clock -= timedelta(seconds=400)
        elif move == "clock_ahead":
            clock += timedelta(seconds=400)

    assert record is None or record.job is None or record.job.request_id != "evil"
    assert paid <= 1
    assert posts_after_that == 0, "a cancel that arrived before any POST was paid for"
    assert len(announced) <= 1, announced
    if record is not None and record.terminal and record.event is not None:
        assert announced <= {(record.event.event_id, record.event.status)}


def test_an_adoption_commits_before_the_files_are_copied() -> None:
    unknown, _ = step(posting(), lc.Ambiguous(ERROR))
    decision = lc.decide(unknown, webhook(unknown), KEY, NOW)
    assert decision.record is not None
    assert decision.record.adopted
    assert decision.record.phase is Phase.RESULT_READY
    # The webhook that revealed the request may never come again: its adoption is durable
    # before anything else happens.
    assert not decision.deferrable


def announces(decision: lc.Decision) -> bool:
    """Whether the decision only announces an outcome: `Jobs` commits it with `Published`."""
    match decision:
        case lc.Decision(record=LedgerRecord() as record, effects=(lc.Publish(event=event),)):
            return record.terminal or record.event == event
    return False


def ready() -> LedgerRecord:
    record, _ = step(submitted(), lc.News(request_id="req-1", ok=True, payload=OUTPUT))
    assert record is not None
    assert record.phase is Phase.RESULT_READY
    return record


def test_a_result_waits_for_the_stored_state_to_commit_and_is_not_kept_after() -> None:
    decision = lc.decide(
        submitted(), lc.News(request_id="req-1", ok=True, payload=OUTPUT), KEY, NOW
    )
    # Copying the files is repeatable, so the result need not commit before it starts.
    assert decision.deferrable
    assert decision.effects == (lc.StoreFiles(),)
    assert decision.record is not None
    assert decision.record.result_at == NOW
    stored = lc.decide(decision.record, lc.FilesStored((ARTIFACT,), OUTPUT), KEY, NOW)
    assert not stored.deferrable
    assert stored.record is not None
    assert stored.record.result is None
    assert stored.record.event is not None
    assert stored.record.event.result == OUTPUT


SLOW = ErrorDetail(type="store_unavailable", message="SlowDown", retryable=True)


def test_a_failing_store_retries_with_a_durable_budget_then_ends_the_key() -> None:
    policy = lc.Policy(max_step_failures=3)
    record: LedgerRecord | None = ready()
    for failures in (1, 2):
        decision = lc.decide(record, lc.StepFailed("store", SLOW), KEY, NOW, policy)
        record = decision.record
        assert record is not None
        assert record.step_failures == failures
        assert decision.effects == (lc.RetryStep("store", failures),)
    decision = lc.decide(record, lc.StepFailed("store", SLOW), KEY, NOW, policy)
    assert decision.record is not None
    assert decision.record.phase is Phase.FAILED
    (publish,) = decision.effects
    assert isinstance(publish, lc.Publish)
    assert publish.event.error is not None
    assert publish.event.error.type == "store_failed"
    assert "SlowDown" in publish.event.error.message


def test_a_step_deadline_counts_from_the_first_failure_across_restarts() -> None:
    policy = lc.Policy(max_step_failures=100, step_deadline=timedelta(minutes=15))
    first = lc.decide(ready(), lc.StepFailed("fetch", SLOW), KEY, NOW, policy).record
    assert first is not None
    assert first.step_failing_since == NOW
    restored = lc.decide(first, lc.Restored(), KEY, NOW + timedelta(minutes=10), policy)
    assert restored.record is None  # a restart does not reset the budget
    later = NOW + timedelta(minutes=16)
    ended = lc.decide(first, lc.StepFailed("fetch", SLOW), KEY, later, policy).record
    assert ended is not None
    assert ended.phase is Phase.FAILED
    assert ended.last_error is not None
    assert ended.last_error.type == "fetch_failed"


def test_a_step_that_succeeds_starts_the_next_one_with_a_fresh_budget() -> None:
    failing = lc.decide(submitted(), lc.StepFailed("poll", SLOW), KEY, NOW).record
    assert failing is not None
    assert failing.step_failures == 1
    answered = lc.decide(failing, lc.StepOk(), KEY, NOW).record
    assert answered is not None
    assert answered.step_failures == 0
    failing = lc.decide(failing, lc.StepFailed("poll", SLOW), KEY, NOW).record
    news = lc.News(request_id="req-1", ok=True, payload=OUTPUT)
    stored_next = lc.decide(failing, news, KEY, NOW).record
    assert stored_next is not None
    assert stored_next.step_failures == 0
    assert stored_next.step_failing_since is None


def test_a_failure_of_a_step_the_key_has_left_changes_nothing() -> None:
    # A store failure reported after the key moved on (or for a phase it never reached).
    assert lc.decide(submitted(), lc.StepFailed("store", SLOW), KEY, NOW) == lc.NOTHING


def test_what_a_fetched_result_means_depends_on_the_phase_not_on_the_step() -> None:
    # Fetched after news without its output: this is the outcome.
    record, decision = step(submitted(), lc.ResultFetched(ok=True, payload=OUTPUT))
    assert record is not None
    assert record.phase is Phase.RESULT_READY
    assert decision.effects == (lc.StoreFiles(),)
    # Fetched again for fresh file URLs, it now reads as a failure: the files are gone.
    record, decision = step(record, lc.ResultFetched(ok=False, payload=None, error=ERROR))
    assert record is not None
    assert record.phase is Phase.EXPIRED


def test_a_key_accepted_by_a_clock_ahead_of_ours_finishes_with_non_negative_timings() -> None:
    # Another replica, 400 s ahead, accepted and submitted the key; this one finishes it.
    ahead = NOW + timedelta(seconds=400)
    record = lc.decide(None, SUBMIT, KEY, ahead).record
    record = lc.decide(record, lc.SlotGranted(), KEY, ahead).record
    record = lc.decide(record, lc.Accepted(JOB), KEY, ahead).record
    record, _ = step(record, lc.News(request_id="req-1", ok=True, payload=OUTPUT))
    record, decision = step(record, lc.FilesStored((ARTIFACT,), {}))
    (publish,) = decision.effects
    assert isinstance(publish, lc.Publish)
    assert publish.event.timings.total_ms == 0
    assert publish.event.timings.queued_ms == 0


def test_expired_file_urls_are_refetched_then_the_key_expires() -> None:
    record: LedgerRecord | None = submitted()
    record, _ = step(record, lc.News(request_id="req-1", ok=True, payload=OUTPUT))
    expired = ErrorDetail(type="output_expired", message="403", retryable=False)
    for refetch in range(1, lc.Policy().max_result_refetches + 1):
        record, decision = step(record, lc.FilesExpired(expired))
        assert decision.effects == (lc.FetchResult(),)
        record, decision = step(record, lc.ResultFetched(ok=True, payload=OUTPUT))
        assert record is not None
        assert record.result_refetches == refetch
        assert decision.effects == (lc.StoreFiles(),)
    record, decision = step(record, lc.FilesExpired(expired))
    assert record is not None
    assert record.phase is Phase.EXPIRED
    (publish,) = decision.effects
    assert isinstance(publish, lc.Publish)
    assert publish.event.status == "expired"
    assert publish.event.artifacts == []


def test_a_result_too_large_for_the_ledger_stays_at_the_provider_until_stored() -> None:
    record, _ = step(submitted(), lc.News(request_id="req-1", ok=True, payload=OUTPUT))
    assert record is not None
    error = ErrorDetail(type="result_too_large", message="2 MB", retryable=False)
    decision = lc.decide(record, lc.TooLarge(error), KEY, NOW)
    assert decision.record is not None
    assert decision.record.phase is Phase.RESULT_READY
    assert decision.record.result is None  # fetched again when its files are stored
    assert decision.effects == (lc.StoreFiles(),)
    # Stored, the event names the copies instead of carrying the inline data.
    stored, decision = step(decision.record, lc.FilesStored((ARTIFACT,), {"images": []}))
    assert stored is not None
    assert stored.phase is Phase.STORED


def test_a_state_too_large_to_store_ends_the_key_with_what_fits() -> None:
    record, _ = step(submitted(), lc.News(request_id="req-1", ok=True, payload=OUTPUT))
    record, _ = step(record, lc.FilesStored((ARTIFACT,), {"huge": "text"}))
    assert record is not None
    error = ErrorDetail(type="result_too_large", message="2 MB", retryable=False)
    decision = lc.decide(record, lc.TooLarge(error), KEY, NOW)
    assert decision.record is not None
    assert decision.record.phase is Phase.FAILED
    assert decision.record.result is None
    assert decision.record.request.input is None
    assert decision.record.fingerprint == record.fingerprint
    (publish,) = decision.effects
    assert isinstance(publish, lc.Publish)
    assert publish.event.error == error
    assert publish.event.request_id == "req-1"


def delivery(**fields: Any) -> WebhookDelivery:
    values: dict[str, Any] = {
        "idempotency_key": KEY,
        "attempt": 1,
        "user_id": "us",
        "request_id": "req-1",
        "ok": True,
        "payload": OUTPUT,
        "received_at": NOW,
    }
    return WebhookDelivery(**{**values, **fields})


def test_a_webhook_is_news_of_its_attempt_vouched_for_only_by_our_account() -> None:
    news = lc.webhook_news(delivery(), JOB, account="us")
    assert (news.via, news.attempt, news.payload, news.account_confirmed) == (
        "webhook",
        1,
        OUTPUT,
        True,
    )
    assert not lc.webhook_news(delivery(user_id="them"), JOB, account="us").account_confirmed
    assert not lc.webhook_news(delivery(), JOB, account=None).account_confirmed
    pinned = delivery(user_id="us", account_pinned=True)
    assert lc.webhook_news(pinned, JOB, account=None).account_confirmed


def test_a_webhook_without_its_output_asks_for_the_result_to_be_fetched() -> None:
    # fal could not serialise the output, or the job failed: the result's own answer decides.
    for broken in (delivery(payload=None, payload_error="too big"), delivery(ok=False)):
        news = lc.webhook_news(broken, JOB, account="us")
        assert news.ok
        assert news.payload is None


def with_deadline(seconds_from_now: float) -> lc.SubmitCommand:
    deadline = (NOW + timedelta(seconds=seconds_from_now)).isoformat()
    return lc.SubmitCommand({**SUBMIT.request, "deadline": deadline}, "f1", SUBMIT.endpoint)


def test_a_request_whose_deadline_passed_on_arrival_ends_without_a_slot_or_a_post() -> None:
    decision = lc.decide(None, with_deadline(-5), KEY, NOW)
    assert decision.record is not None
    assert decision.record.phase is Phase.FAILED
    (publish,) = decision.effects
    assert isinstance(publish, lc.Publish)
    assert publish.event.error is not None
    assert publish.event.error.type == "deadline_exceeded"


def test_a_deadline_that_passes_while_waiting_for_a_slot_is_never_paid() -> None:
    waiting = lc.decide(None, with_deadline(60), KEY, NOW).record
    assert waiting is not None
    late = NOW + timedelta(seconds=61)
    decision = lc.decide(waiting, lc.SlotGranted(), KEY, late)
    assert decision.record is not None
    assert decision.record.phase is Phase.FAILED
    assert not any(isinstance(e, lc.Post) for e in decision.effects)
    assert waiting is not None
    timed_out = lc.decide(waiting, lc.DeadlinePassed(), KEY, late).record
    assert timed_out is not None
    assert timed_out.phase is Phase.FAILED
    # In time, the POST carries the deadline: fal may not start the job after it.
    granted = lc.decide(waiting, lc.SlotGranted(), KEY, NOW)
    assert granted.effects == (lc.Post(NOW + timedelta(seconds=60)),)


def test_a_retry_due_after_the_deadline_ends_the_key_instead_of_posting() -> None:
    waiting = lc.decide(None, with_deadline(30), KEY, NOW).record
    posting_now = lc.decide(waiting, lc.SlotGranted(), KEY, NOW).record
    backing_off = lc.decide(posting_now, lc.NotSent(ERROR, 60.0), KEY, NOW).record
    assert backing_off is not None
    decision = lc.decide(backing_off, lc.RetryDue(), KEY, NOW + timedelta(seconds=60))
    assert decision.record is not None
    assert decision.record.phase is Phase.FAILED
    assert decision.record.last_error is not None
    assert decision.record.last_error.type == "deadline_exceeded"


# --- reconciling ambiguous submits from the provider's request history ----------------------

RECONCILE = lc.Policy(
    reconcile=True,
    start_timeout=timedelta(seconds=60),
    history_lag=timedelta(seconds=30),
    clock_slack=timedelta(seconds=5),
)
PROVABLE = NOW + timedelta(seconds=60 + 30 + 5)  # start deadline, lag and slack after the POST


def reconciling(event: lc.Event | None = None) -> LedgerRecord:
    record, _ = step(None, SUBMIT)
    granted = lc.decide(record, lc.SlotGranted(), KEY, NOW, RECONCILE)
    assert granted.record is not None
    assert granted.record.start_by == NOW + timedelta(seconds=60)
    assert granted.effects == (lc.Post(NOW + timedelta(seconds=60)),)
    unknown = lc.decide(granted.record, event or lc.Ambiguous(ERROR), KEY, NOW, RECONCILE)
    assert unknown.record is not None
    assert unknown.record.phase is Phase.UNKNOWN
    assert unknown.effects == (lc.SearchHistory(),)
    return unknown.record


def test_an_ambiguous_submit_the_history_lists_is_adopted_never_reposted() -> None:
    record = reconciling()
    decision = lc.decide(record, lc.HistorySearched((JOB,), NOW), KEY, NOW, RECONCILE)
    assert decision.record is not None
    assert decision.record.phase is Phase.SUBMITTED
    assert decision.record.adopted
    assert decision.record.job == JOB
    assert decision.effects == (lc.Watch(),)


def test_a_crash_between_the_intent_and_the_post_is_reconciled_the_same_way() -> None:
    record = reconciling(lc.Restored())
    decision = lc.decide(record, lc.HistorySearched((JOB,), NOW), KEY, NOW, RECONCILE)
    assert decision.record is not None
    assert decision.record.phase is Phase.SUBMITTED


def test_an_empty_history_proves_nothing_until_the_start_deadline_and_lag_have_passed() -> None:
    record = reconciling()
    early = PROVABLE - timedelta(seconds=1)
    decision = lc.decide(record, lc.HistorySearched((), early), KEY, early, RECONCILE)
    assert decision == lc.Decision(None, (lc.SearchHistory(),))
    # An answer read before the proof time proves nothing, even if decided after it.
    decision = lc.decide(record, lc.HistorySearched((), early), KEY, PROVABLE, RECONCILE)
    assert decision == lc.Decision(None, (lc.SearchHistory(),))


def test_a_submit_the_history_proves_never_arrived_is_reposted_once_and_counted() -> None:
    record = reconciling()
    decision = lc.decide(record, lc.HistorySearched((), PROVABLE), KEY, PROVABLE, RECONCILE)
    assert decision.record is not None
    assert decision.record.phase is Phase.SUBMITTING
    assert (decision.record.attempts, decision.record.proven_absent) == (2, 1)
    assert decision.record.posted_at == PROVABLE
    new_start_by = PROVABLE + timedelta(seconds=60)
    assert decision.effects == (lc.Post(new_start_by),)


def test_without_a_start_deadline_absence_is_never_proven() -> None:
    policy = lc.Policy(reconcile=True, start_timeout=None)
    record, _ = step(None, SUBMIT)
    record = lc.decide(record, lc.SlotGranted(), KEY, NOW, policy).record
    record = lc.decide(record, lc.Ambiguous(ERROR), KEY, NOW, policy).record
    assert record is not None
    assert record.start_by is None
    much_later = NOW + timedelta(hours=1)
    decision = lc.decide(record, lc.HistorySearched((), much_later), KEY, much_later, policy)
    # Not re-posted: past the grace, the key ends as an unresolved ambiguous submit.
    assert decision.record is not None
    assert decision.record.phase is Phase.FAILED
    assert decision.record.last_error is not None
    assert decision.record.last_error.type == "submit_unknown"


def test_several_look_alikes_or_an_unreadable_history_settle_nothing_until_the_grace() -> None:
    record = reconciling()
    twins = (JOB, EVIL_JOB)
    for matches in (twins, None):
        decision = lc.decide(
            record, lc.HistorySearched(matches, PROVABLE), KEY, PROVABLE, RECONCILE
        )
        assert decision == lc.Decision(None, (lc.SearchHistory(),))
    past = NOW + RECONCILE.unknown_grace + timedelta(seconds=1)
    ended = lc.decide(record, lc.HistorySearched(twins, past), KEY, past, RECONCILE)
    assert ended.record is not None
    assert ended.record.phase is Phase.FAILED


def test_a_cancel_while_unknown_ends_cancelled_unpaid_once_absence_is_proven() -> None:
    cancelled = lc.decide(reconciling(), lc.CancelCommand(), KEY, NOW, RECONCILE).record
    assert cancelled is not None
    record = cancelled
    assert record.cancel_requested
    decision = lc.decide(record, lc.HistorySearched((), PROVABLE), KEY, PROVABLE, RECONCILE)
    assert decision.record is not None
    assert decision.record.phase is Phase.CANCELLED
    assert not any(isinstance(e, lc.Post) for e in decision.effects)


def test_the_start_deadline_never_extends_past_the_requests_deadline() -> None:
    deadline = NOW + timedelta(seconds=20)
    request = {**SUBMIT.request, "deadline": deadline.isoformat()}
    record = lc.decide(None, lc.SubmitCommand(request, "f1", SUBMIT.endpoint), KEY, NOW).record
    granted = lc.decide(record, lc.SlotGranted(), KEY, NOW, RECONCILE)
    assert granted.record is not None
    assert granted.record.start_by == deadline
    assert granted.effects == (lc.Post(deadline),)


def test_a_request_our_start_deadline_stopped_is_queued_again_unpaid() -> None:
    record = lc.decide(reconciling(), lc.HistorySearched((JOB,), NOW), KEY, NOW, RECONCILE).record
    timeout = ErrorDetail(type="start_timeout", message="never started", retryable=False)
    news = lc.News(request_id="req-1", ok=False, error=timeout)
    later = NOW + timedelta(seconds=61)
    decision = lc.decide(record, news, KEY, later, RECONCILE)
    assert decision.record is not None
    assert decision.record.phase is Phase.SUBMITTING
    assert decision.record.job is None
    assert decision.record.attempts == 2
    assert decision.effects == (lc.Post(later + timedelta(seconds=60)),)
    # Out of attempts, it fails with what the provider said.
    assert record is not None
    spent = record.model_copy(update={"attempts": RECONCILE.max_submit_attempts})
    decision = lc.decide(spent, news, KEY, later, RECONCILE)
    assert decision.record is not None
    assert decision.record.phase is Phase.FAILED


def test_the_event_estimates_its_cost_from_billed_units_and_the_unit_price() -> None:
    fetched = lc.ResultFetched(ok=True, payload=OUTPUT, cost_units=4.0, unit_price=0.0025)
    record, _ = step(submitted(), fetched)
    record, decision = step(record, lc.FilesStored((ARTIFACT,), {}))
    (publish,) = decision.effects
    assert isinstance(publish, lc.Publish)
    assert (publish.event.cost_units, publish.event.cost_usd) == (4.0, 0.01)
    assert publish.event.cost_source == "estimate"


def test_without_a_price_the_event_has_units_but_no_cost() -> None:
    record, _ = step(submitted(), lc.ResultFetched(ok=True, payload=OUTPUT, cost_units=4.0))
    record, decision = step(record, lc.FilesStored((ARTIFACT,), {}))
    (publish,) = decision.effects
    assert isinstance(publish, lc.Publish)
    assert publish.event.cost_units == 4.0
    assert publish.event.cost_usd is None
    assert publish.event.cost_source is None


def test_a_webhook_is_only_a_signal_to_fetch_when_results_are_read_from_the_provider() -> None:
    delivery = WebhookDelivery.model_validate_json(
        json.dumps(
            {
                "idempotency_key": KEY,
                "request_id": "req-1",
                "ok": True,
                "payload": OUTPUT,
                "received_at": NOW.isoformat(),
            }
        )
    )
    assert lc.webhook_news(delivery, JOB, None).payload == OUTPUT
    assert lc.webhook_news(delivery, JOB, None, fetch_result=True).payload is None


# --- waits and what the steps learn: decided here, performed by the actors -------------------


def test_a_wait_that_ends_runs_its_step_only_in_a_phase_that_still_needs_it() -> None:
    at_provider = submitted()
    result_ready, _ = step(at_provider, lc.News(request_id="req-1", ok=True, payload=OUTPUT))
    assert result_ready is not None
    expected: list[tuple[LedgerRecord, lc.Step | Literal["search"], lc.Effect | None]] = [
        (at_provider, "poll", lc.Poll()),
        (at_provider, "fetch", lc.FetchResult()),
        (at_provider, "store", None),
        (at_provider, "search", None),
        (result_ready, "poll", None),  # a webhook's news arrived before the poll was due
        (result_ready, "fetch", lc.FetchResult()),
        (result_ready, "store", lc.StoreFiles()),
        (reconciling(), "search", lc.Search()),
        (reconciling(), "poll", None),
    ]
    for record, due, effect in expected:
        decision = lc.decide(record, lc.Due(due), KEY, NOW)
        assert decision.record is None, (record.phase, due)
        assert decision.effects == ((effect,) if effect else ()), (record.phase, due)


def test_a_poll_still_running_or_throttled_polls_again_and_a_finished_one_fetches() -> None:
    at_provider = submitted()
    assert step(at_provider, lc.StepOk())[1].effects == (lc.PollAgain(),)
    throttled = step(at_provider, lc.Throttled(7.5))[1]
    assert throttled.record is None  # back-pressure spends no budget
    assert throttled.effects == (lc.PollAgain(at_least=7.5),)
    assert step(at_provider, lc.Finished())[1].effects == (lc.FetchResult(),)
    done, _ = step(at_provider, lc.News(request_id="req-1", ok=True, payload=OUTPUT))
    assert done is not None
    for answer in (lc.StepOk(), lc.Throttled(1.0), lc.Finished()):
        assert step(done, answer)[1] == lc.NOTHING  # the key moved on meanwhile


def test_a_webhooks_request_is_adopted_once_our_account_knows_it_and_asked_again_if_unsure() -> (
    None
):
    record, _ = step(posting(), lc.Ambiguous(ERROR))
    assert record is not None
    news = webhook(record, confirmed=False)
    asks = step(record, news)[1]
    assert asks.effects == (lc.ConfirmAccount(news),)
    adopted, _ = step(record, lc.AccountChecked(news, ours=True))
    assert adopted is not None
    assert adopted.phase is Phase.RESULT_READY
    assert adopted.job == JOB
    assert adopted.adopted
    assert step(record, lc.AccountChecked(news, ours=False))[1] == lc.NOTHING
    assert step(record, lc.AccountChecked(news, ours=None))[1].effects == (lc.AskAgain(news),)
    # Once the key has moved on, an unanswered question is moot.
    assert step(adopted, lc.AccountChecked(news, ours=None))[1] == lc.NOTHING


# --- budgets: a reservation with the intent to POST, settled when the key ends ---------------


def verdict(fits: bool, when: Literal["wait", "fail"] = "fail") -> lc.BudgetVerdict:
    return lc.BudgetVerdict(fits, 0.25, "2026-11", when, limit_usd=1.0, spent_usd=0.9)


def test_a_key_that_fits_its_budget_reserves_its_estimate_with_its_intent_to_post() -> None:
    waiting, _ = step(None, SUBMIT)
    posting_now, decision = step(waiting, lc.SlotGranted(verdict(True)))
    assert posting_now is not None
    assert posting_now.phase is Phase.SUBMITTING
    assert (posting_now.charged_usd, posting_now.budget_period) == (0.25, "2026-11")
    assert isinstance(decision.effects[0], lc.Post)
    no_budget, _ = step(waiting, lc.SlotGranted())
    assert no_budget is not None
    assert no_budget.charged_usd is None


def test_a_key_over_budget_fails_unpaid_or_waits_unposted_by_the_tenants_policy() -> None:
    waiting, _ = step(None, SUBMIT)
    refused, decision = step(waiting, lc.SlotGranted(verdict(False, "fail")))
    assert refused is not None
    assert refused.phase is Phase.FAILED
    assert refused.last_error is not None
    assert refused.last_error.type == "budget_exceeded"
    assert refused.attempts == 0
    assert not any(isinstance(e, lc.Post) for e in decision.effects)
    waits = lc.decide(waiting, lc.SlotGranted(verdict(False, "wait")), KEY, NOW)
    assert waits == lc.Decision(None, (lc.AwaitBudget(),))
    assert lc.decide(waiting, lc.BudgetMayFit(), KEY, NOW).effects == (lc.AcquireSlot(None),)
    # A cancel while waiting for budget ends the key, still unposted.
    cancelled, _ = step(waiting, lc.CancelCommand())
    assert cancelled is not None
    assert cancelled.phase is Phase.CANCELLED


def test_a_reservation_is_settled_to_the_cost_or_released_when_nothing_ran() -> None:
    waiting, _ = step(None, SUBMIT)
    posting_now, _ = step(waiting, lc.SlotGranted(verdict(True)))
    at_provider, _ = step(posting_now, lc.Accepted(JOB))
    priced = lc.News(request_id="req-1", ok=True, payload=OUTPUT, cost_units=2, unit_price=0.1)
    ready, _ = step(at_provider, priced)
    stored, _ = step(ready, lc.FilesStored((ARTIFACT,), OUTPUT))
    assert stored is not None
    assert stored.charged_usd == pytest.approx(0.2)  # the cost, not the estimate
    failed, _ = step(at_provider, lc.News(request_id="req-1", ok=False, error=ERROR))
    assert failed is not None
    assert failed.charged_usd == 0.0  # it never ran: fal bills nothing
    refused, _ = step(posting_now, lc.Refused(ERROR))
    assert refused is not None
    assert refused.charged_usd == 0.0


def test_a_key_whose_price_is_unknown_cannot_be_fitted_and_says_why() -> None:
    waiting, _ = step(None, SUBMIT)
    unpriced = lc.BudgetVerdict(False, 0.0, "2026-11", "fail", 1.0, 0.0, unpriced=True)
    refused, _ = step(waiting, lc.SlotGranted(unpriced))
    assert refused is not None
    assert refused.last_error is not None
    assert refused.last_error.message.startswith("no price is known for fal-ai/flux/schnell")
