"""The checked-in JSON Schemas, read by a plain JSON Schema validator, are the contract.

These tests never use our pydantic models to judge a record: a team in another language
validates with these files alone.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from genrelay.producers import GenrelayProducer
from genrelay.producers.testing import RecordingSender
from genrelay.schemas import (
    Artifact,
    CompletionEvent,
    ErrorDetail,
    OutputTarget,
    ProgressEvent,
    Timings,
    WebhookDelivery,
    to_json_bytes,
)
from genrelay.schemas.generate import JSON_DIR


def validator(name: str) -> Draft202012Validator:
    schema = json.loads((JSON_DIR / name).read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


REQUEST = validator("request.v1.json")
COMPLETION = validator("completion.v1.json")
PROGRESS = validator("progress.v1.json")
WEBHOOK = validator("webhook-delivery.v1.json")

SUBMIT: dict[str, Any] = {
    "schema_version": 1,
    "action": "submit",
    "idempotency_key": "order-42/hero",
    "endpoint": "fal-ai/flux/schnell",
    "input": {"prompt": "a lighthouse at dawn", "seed": 7},
}


async def records_sent_by_the_client() -> list[Any]:
    sender = RecordingSender()
    async with GenrelayProducer(sender) as producer:
        await producer.submit("fal-ai/flux/schnell", {"prompt": "a lighthouse"})
        key = await producer.submit(
            "fal-ai/flux/schnell",
            {"prompt": "a lighthouse", "seed": 7, "loras": [{"path": "x", "scale": 0.5}]},
            idempotency_key="order-42/hero",
            priority="low",
            tenant="shop",
            metadata={"order_id": "42", "rush": True},
            output=OutputTarget(bucket="genrelay", prefix="shop"),
            deadline=datetime(2026, 11, 25, 12, tzinfo=UTC),
        )
        await producer.cancel(key)
    return [json.loads(record.value) for record in sender.records]


async def test_records_written_by_the_client_are_valid() -> None:
    records = await records_sent_by_the_client()
    assert [record["action"] for record in records] == ["submit", "submit", "cancel"]
    for record in records:
        REQUEST.validate(record)


def test_the_design_examples_are_valid() -> None:
    REQUEST.validate(
        {
            **SUBMIT,
            "priority": "normal",
            "tenant": "shop",
            "metadata": {"order_id": "42"},
            "output": {"bucket": "genrelay", "prefix": "shop"},
            "deadline": "2026-11-25T12:00:00Z",
        }
    )
    REQUEST.validate({"schema_version": 1, "action": "cancel", "idempotency_key": "order-42/hero"})


def test_unknown_fields_are_allowed() -> None:
    REQUEST.validate({**SUBMIT, "added_in_v1_3": {"anything": True}})


def drop(field: str) -> dict[str, Any]:
    return {name: value for name, value in SUBMIT.items() if name != field}


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(drop("idempotency_key"), id="missing-key"),
        pytest.param(drop("schema_version"), id="missing-version"),
        pytest.param(drop("action"), id="missing-action"),
        pytest.param(drop("endpoint"), id="missing-endpoint"),
        pytest.param(drop("input"), id="missing-input"),
        pytest.param({**SUBMIT, "action": "delete"}, id="bad-action"),
        pytest.param({**SUBMIT, "endpoint": "flux"}, id="endpoint-without-owner"),
        pytest.param({**SUBMIT, "endpoint": "fal-ai/../x"}, id="endpoint-dot-segment"),
        pytest.param({**SUBMIT, "endpoint": "fal ai/flux"}, id="endpoint-space"),
        pytest.param({**SUBMIT, "schema_version": 2}, id="version-2"),
        pytest.param({**SUBMIT, "schema_version": "1"}, id="version-string"),
        pytest.param({**SUBMIT, "idempotency_key": ""}, id="empty-key"),
        pytest.param({**SUBMIT, "idempotency_key": "a\x00b"}, id="key-control-char"),
        pytest.param({**SUBMIT, "idempotency_key": "k" * 513}, id="key-too-long"),
        pytest.param({**SUBMIT, "input": ["prompt"]}, id="input-array"),
        pytest.param({**SUBMIT, "priority": "urgent"}, id="priority"),
        pytest.param({**SUBMIT, "metadata": {"a": {"b": 1}}}, id="metadata-nested"),
        pytest.param({**SUBMIT, "metadata": ["a"]}, id="metadata-array"),
        pytest.param({**SUBMIT, "output": {"bucket": "UPPER"}}, id="bucket-name"),
        pytest.param({**SUBMIT, "deadline": 1764072000}, id="deadline-number"),
        pytest.param({**SUBMIT, "tenant": 7}, id="tenant-number"),
        pytest.param({"schema_version": 1, "action": "cancel"}, id="cancel-without-key"),
    ],
)
def test_malformed_requests_are_rejected(record: dict[str, Any]) -> None:
    assert not REQUEST.is_valid(record)


def completion_record(**changes: Any) -> dict[str, Any]:
    event = CompletionEvent(
        event_id="evt-1",
        idempotency_key="order-42/hero",
        status="succeeded",
        endpoint="fal-ai/flux/schnell",
        request_id="req-1",
        artifacts=[
            Artifact(
                bucket="genrelay",
                key="shop/order-42%2Fhero/0.png",
                size=48213,
                sha256="ab" * 32,
                content_type="image/png",
                etag="d41d8cd98f00b204e9800998ecf8427e",
            )
        ],
        result={"images": [{"object": "s3://genrelay/shop/order-42%2Fhero/0.png"}]},
        error=None,
        timings=Timings(queued_ms=0, running_ms=0, total_ms=0),
        attempts=1,
        cost_units=None,
        cost_usd=None,
        cost_source=None,
        metadata={"order_id": "42"},
        replayed=False,
    )
    record: dict[str, Any] = json.loads(to_json_bytes(event))
    return {**record, **changes}


FAILURE = {"type": "generation_timeout", "message": "timed out", "retryable": True}


def test_completion_events_are_valid() -> None:
    COMPLETION.validate(completion_record())
    COMPLETION.validate(completion_record(completed_at="2026-11-25T12:00:00Z"))
    failed = completion_record(status="failed", error=FAILURE, artifacts=[], result=None)
    COMPLETION.validate(failed)
    assert ErrorDetail.model_validate(failed["error"]).retryable


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"status": "done"}, id="unknown-status"),
        pytest.param({"status": "failed"}, id="failed-without-error"),
        pytest.param({"error": FAILURE}, id="succeeded-with-error"),
        pytest.param({"replayed": "no"}, id="replayed-string"),
        pytest.param({"attempts": -1}, id="negative-attempts"),
        pytest.param({"artifacts": [{"bucket": "b", "key": "k"}]}, id="artifact-incomplete"),
        pytest.param({"timings": {"queued_ms": 0}}, id="timings-incomplete"),
    ],
)
def test_malformed_completion_events_are_rejected(changes: dict[str, Any]) -> None:
    assert not COMPLETION.is_valid(completion_record(**changes))


def test_every_completion_field_is_required() -> None:
    for field in completion_record():
        if field == "completed_at":
            continue
        record = completion_record()
        del record[field]
        assert not COMPLETION.is_valid(record), field


def test_progress_and_webhook_records_are_valid() -> None:
    at = datetime(2026, 11, 25, 12, tzinfo=UTC)
    progress = ProgressEvent(
        idempotency_key="k", request_id="r", stage="queued", queue_position=3, at=at
    )
    delivery = WebhookDelivery(
        idempotency_key="k", request_id="r", ok=True, payload={"images": []}, received_at=at
    )
    PROGRESS.validate(json.loads(to_json_bytes(progress)))
    WEBHOOK.validate(json.loads(to_json_bytes(delivery)))
    assert not PROGRESS.is_valid({**json.loads(to_json_bytes(progress)), "stage": "running"})
    assert not WEBHOOK.is_valid({**json.loads(to_json_bytes(delivery)), "ok": "true"})


def test_schema_files_declare_draft_2020_12() -> None:
    for path in Path(JSON_DIR).glob("*.json"):
        assert json.loads(path.read_text())["$schema"].endswith("/draft/2020-12/schema")
