"""The audit's arithmetic, without a broker: charges per key, orphans, unbilled keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from genrelay.consumer.provider.fal_platform import BillingEvent
from genrelay.consumer.steps import key_hash
from genrelay.operations.audit import audit
from genrelay.schemas.completions import CompletionEvent, Timings

T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
SETTLED = (T0 - timedelta(hours=1), T0 + timedelta(hours=1))


def row(request_id: str, cost: float = 0.01, tags: dict[str, str] | None = None) -> BillingEvent:
    return BillingEvent(
        request_id=request_id,
        endpoint_id="fal-ai/flux/schnell",
        timestamp=T0,
        quantity=1.0,
        unit_price=cost,
        cost_total=cost,
        tags=tags or {},
    )


def event(
    key: str, request_id: str | None, status: str = "succeeded", **more: Any
) -> CompletionEvent:
    error = None if status == "succeeded" else {"type": "x", "message": "x", "retryable": False}
    return CompletionEvent.model_validate(
        {
            "event_id": f"e-{key}",
            "idempotency_key": key,
            "status": status,
            "endpoint": "fal-ai/flux/schnell",
            "request_id": request_id,
            "artifacts": [],
            "result": None,
            "error": error,
            "timings": Timings(queued_ms=0, running_ms=0, total_ms=0),
            "attempts": 1,
            "cost_units": None,
            "cost_usd": None,
            "cost_source": None,
            "metadata": {},
            "replayed": False,
            "completed_at": T0,
            **more,
        }
    )


def test_one_charge_per_key_is_clean_and_spend_is_split_by_tenant() -> None:
    report = audit(
        [row("r1", tags={"gr.key": key_hash("a"), "tenant": "growth"}), row("r2", 0.02)],
        [event("a", "r1"), event("b", "r2")],
        settled=SETTLED,
    )
    assert report.ok
    assert (report.billed_requests, report.keys_billed) == (2, 2)
    assert report.spend_by_tenant == {"growth": 0.01, "": 0.02}
    assert report.orphans == []
    assert report.unbilled == {}


def test_a_key_billed_twice_is_a_double_charge_whoever_sent_the_second() -> None:
    tag = {"gr.key": key_hash("a")}
    report = audit([row("r1", tags=tag), row("r9", tags=tag)], [event("a", "r1")], settled=SETTLED)
    assert not report.ok
    assert [c.request_id for c in report.double_charges["a"]] == ["r1", "r9"]
    assert report.to_json()["double_charges"]["a"][1]["request_id"] == "r9"


def test_a_billed_request_nobody_explains_is_an_orphan() -> None:
    report = audit([row("stray")], [event("a", "r1")], settled=SETTLED)
    assert report.ok
    assert [c.request_id for c in report.orphans] == ["stray"]
    # ... and the key genrelay announced as succeeded, which fal never billed, is reported.
    assert report.unbilled == {"a": "r1"}


def test_keys_announced_too_recently_are_not_expected_in_the_billing_yet() -> None:
    late = (SETTLED[0], T0 - timedelta(minutes=1))
    assert audit([], [event("a", "r1")], settled=late).unbilled == {}
    assert audit([], [event("a", "r1", status="failed")], settled=SETTLED).unbilled == {}
