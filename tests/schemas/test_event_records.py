"""Completion, progress and webhook records round-trip and hold their invariants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from genrelay.schemas import (
    DEFAULT_TOPICS,
    Artifact,
    CompletionEvent,
    ErrorDetail,
    LogEntry,
    ProgressEvent,
    Timings,
    Topics,
    WebhookDelivery,
    from_json_bytes,
    to_json_bytes,
)

SHA = "0" * 64


def completion(**changes: Any) -> CompletionEvent:
    fields: dict[str, Any] = {
        "event_id": "evt-1",
        "idempotency_key": "order-42/hero",
        "status": "succeeded",
        "endpoint": "fal-ai/flux/schnell",
        "request_id": "req-1",
        "artifacts": [
            Artifact(
                bucket="genrelay",
                key="shop/order-42%2Fhero/0.png",
                size=48213,
                sha256=SHA,
                content_type="image/png",
                etag="abc",
            )
        ],
        "result": {"images": [{"object": "s3://genrelay/shop/order-42%2Fhero/0.png"}]},
        "error": None,
        "timings": Timings(queued_ms=10, running_ms=900, total_ms=950),
        "attempts": 1,
        "cost_units": None,
        "metadata": {"order_id": "42"},
        "replayed": False,
    }
    return CompletionEvent.model_validate({**fields, **changes})


FAILED = ErrorDetail(type="content_policy_violation", message="refused", retryable=False)


def test_completion_event_round_trips() -> None:
    event = completion(completed_at=datetime(2026, 11, 25, 12, tzinfo=UTC))
    assert from_json_bytes(CompletionEvent, to_json_bytes(event)) == event


def test_a_failed_event_carries_its_error() -> None:
    event = completion(status="failed", error=FAILED, artifacts=[], result=None)
    assert from_json_bytes(CompletionEvent, to_json_bytes(event)).error == FAILED


@pytest.mark.parametrize(
    ("status", "error"),
    [("succeeded", FAILED), ("failed", None), ("cancelled", None), ("expired", None)],
)
def test_error_is_set_exactly_when_not_succeeded(status: str, error: ErrorDetail | None) -> None:
    with pytest.raises(ValidationError, match="error must be null"):
        completion(status=status, error=error)


def test_unknown_status_is_refused() -> None:
    with pytest.raises(ValidationError):
        completion(status="done")


def test_reading_ignores_fields_added_later() -> None:
    raw = to_json_bytes(completion())[:-1] + b',"bulk_id":"b-1"}'
    assert from_json_bytes(CompletionEvent, raw) == completion()


def test_json_numbers_are_not_coerced_from_strings() -> None:
    raw = to_json_bytes(completion()).replace(b'"attempts":1', b'"attempts":"1"')
    with pytest.raises(ValidationError):
        from_json_bytes(CompletionEvent, raw)


def test_progress_event_round_trips_in_utc() -> None:
    event = ProgressEvent(
        idempotency_key="order-42/hero",
        request_id="req-1",
        stage="log",
        logs=[LogEntry(message="step 3/4", level="INFO", timestamp="2026-11-25T12:00:00Z")],
        at=datetime(2026, 11, 25, 13, tzinfo=timezone(timedelta(hours=1))),
    )
    raw = to_json_bytes(event)
    assert b'"at":"2026-11-25T12:00:00Z"' in raw
    assert from_json_bytes(ProgressEvent, raw) == event


def test_progress_timestamps_need_an_offset() -> None:
    with pytest.raises(ValidationError):
        ProgressEvent(
            idempotency_key="k", request_id="r", stage="queued", at=datetime(2026, 11, 25)
        )


def test_webhook_delivery_round_trips() -> None:
    delivery = WebhookDelivery(
        idempotency_key="order-42/hero",
        request_id="req-1",
        gateway_request_id="req-1b",
        ok=False,
        payload={"detail": [{"loc": ["body", "prompt"], "type": "value_error.missing"}]},
        error="Invalid status code: 422",
        received_at=datetime(2026, 11, 25, 12, tzinfo=UTC),
    )
    assert from_json_bytes(WebhookDelivery, to_json_bytes(delivery)) == delivery


def test_an_unserialisable_payload_arrives_as_payload_error() -> None:
    raw = (
        b'{"schema_version":1,"idempotency_key":"k","request_id":"r","ok":true,'
        b'"payload":null,"payload_error":"Response payload is not JSON serializable",'
        b'"received_at":"2026-11-25T12:00:00Z"}'
    )
    delivery = from_json_bytes(WebhookDelivery, raw)
    assert delivery.payload is None
    assert delivery.payload_error
    assert delivery.gateway_request_id is None


def test_records_are_immutable() -> None:
    event = completion()
    with pytest.raises(ValidationError):
        event.status = "failed"  # type: ignore[misc]


def test_topics_list_every_default_name_once() -> None:
    assert DEFAULT_TOPICS.all() == (
        "genrelay.requests",
        "genrelay.ledger",
        "genrelay.webhooks",
        "genrelay.completions",
        "genrelay.progress",
        "genrelay.dead-letter",
        "genrelay.costs",
        "genrelay.budgets",
        "genrelay.spend",
    )
    assert Topics(requests="team.requests").all()[0] == "team.requests"
