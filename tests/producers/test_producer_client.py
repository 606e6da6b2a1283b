"""The producer client writes contract records, keyed by idempotency key, with trace context."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime

import pytest
from opentelemetry.sdk.trace import TracerProvider
from pydantic import JsonValue

from genrelay.producers import (
    ClientStateError,
    GenrelayProducer,
    PublishError,
    derive_idempotency_key,
)
from genrelay.producers.testing import RecordingSender
from genrelay.schemas import (
    DEFAULT_TOPICS,
    CancelRequest,
    DeadLetterReason,
    OutputTarget,
    RecordInvalid,
    SubmitRequest,
    Topics,
    parse_request,
)

PROMPT: dict[str, JsonValue] = {"prompt": "a lighthouse at dawn", "seed": 7}


@pytest.fixture
async def sender() -> RecordingSender:
    return RecordingSender()


@pytest.fixture
async def producer(sender: RecordingSender) -> AsyncIterator[GenrelayProducer]:
    async with GenrelayProducer(sender) as producer:
        yield producer


async def test_submit_writes_one_keyed_record_to_the_requests_topic(
    producer: GenrelayProducer, sender: RecordingSender
) -> None:
    key = await producer.submit("fal-ai/flux/schnell", PROMPT, idempotency_key="order-42/hero")
    assert key == "order-42/hero"
    [record] = sender.records
    assert record.topic == DEFAULT_TOPICS.requests
    assert record.key == b"order-42/hero"
    assert parse_request(record.value, 1 << 20) == SubmitRequest(
        idempotency_key="order-42/hero", endpoint="fal-ai/flux/schnell", input=PROMPT
    )


async def test_submit_passes_every_option_through(
    producer: GenrelayProducer, sender: RecordingSender
) -> None:
    deadline = datetime.fromisoformat("2026-11-25T12:00:00+00:00")
    await producer.submit(
        "fal-ai/flux/schnell",
        PROMPT,
        idempotency_key="k",
        priority="low",
        tenant="shop",
        metadata={"order_id": "42"},
        output=OutputTarget(bucket="genrelay", prefix="shop"),
        deadline=deadline,
    )
    request = parse_request(sender.records[0].value, 1 << 20)
    assert isinstance(request, SubmitRequest)
    assert (request.priority, request.tenant, request.metadata) == (
        "low",
        "shop",
        {"order_id": "42"},
    )
    assert request.output == OutputTarget(bucket="genrelay", prefix="shop")
    assert request.deadline == deadline


async def test_retrying_a_call_without_a_key_reuses_the_same_key(
    producer: GenrelayProducer, sender: RecordingSender
) -> None:
    first = await producer.submit("fal-ai/flux/schnell", PROMPT, metadata={"try": 1})
    retry = await producer.submit("fal-ai/flux/schnell", dict(reversed(PROMPT.items())))
    assert first == retry
    assert first.startswith("auto-")
    assert [record.key for record in sender.records] == [first.encode(), first.encode()]


async def test_derived_keys_differ_for_different_work_or_tenants(
    producer: GenrelayProducer,
) -> None:
    base = await producer.submit("fal-ai/flux/schnell", PROMPT)
    keys = {
        base,
        await producer.submit("fal-ai/flux/schnell", {**PROMPT, "seed": 8}),
        await producer.submit("fal-ai/flux/dev", PROMPT),
        await producer.submit("fal-ai/flux/schnell", PROMPT, tenant="shop"),
        await producer.submit("fal-ai/flux/schnell", PROMPT, output=OutputTarget(prefix="p")),
    }
    assert len(keys) == 5


def test_derived_key_is_a_valid_idempotency_key() -> None:
    request = SubmitRequest(idempotency_key="x", endpoint="a/b", input={})
    key = derive_idempotency_key(request)
    assert SubmitRequest(idempotency_key=key, endpoint="a/b", input={}).idempotency_key == key


async def test_cancel_writes_a_cancel_with_the_same_key(
    producer: GenrelayProducer, sender: RecordingSender
) -> None:
    await producer.cancel("order-42/hero")
    [record] = sender.records
    assert record.key == b"order-42/hero"
    assert parse_request(record.value, 1 << 20) == CancelRequest(idempotency_key="order-42/hero")


async def test_topic_names_are_configurable(sender: RecordingSender) -> None:
    async with GenrelayProducer(sender, topics=Topics(requests="team.requests")) as producer:
        await producer.submit("fal-ai/flux/schnell", PROMPT)
        await producer.cancel("k")
    assert {record.topic for record in sender.records} == {"team.requests"}


@pytest.mark.parametrize(
    ("endpoint", "key", "reason"),
    [
        ("flux", "k", DeadLetterReason.INVALID_ENDPOINT),
        ("fal-ai/flux/schnell", "a\nb", DeadLetterReason.SCHEMA_VIOLATION),
        ("fal-ai/flux/schnell", "", DeadLetterReason.SCHEMA_VIOLATION),
    ],
)
async def test_invalid_arguments_raise_before_anything_is_sent(
    producer: GenrelayProducer,
    sender: RecordingSender,
    endpoint: str,
    key: str,
    reason: DeadLetterReason,
) -> None:
    with pytest.raises(RecordInvalid) as refused:
        await producer.submit(endpoint, PROMPT, idempotency_key=key)
    assert refused.value.reason_code is reason
    with pytest.raises(RecordInvalid):
        await producer.cancel("")
    assert sender.records == []


async def test_naive_deadlines_are_refused(producer: GenrelayProducer) -> None:
    with pytest.raises(RecordInvalid, match="deadline"):
        await producer.submit("fal-ai/flux/schnell", PROMPT, deadline=datetime(2026, 11, 25))


async def test_a_send_failure_surfaces_as_publish_error(
    producer: GenrelayProducer, sender: RecordingSender
) -> None:
    sender.failure = PublishError("not acknowledged", retryable=True)
    with pytest.raises(PublishError) as failed:
        await producer.submit("fal-ai/flux/schnell", PROMPT)
    assert failed.value.retryable


async def test_records_carry_the_active_span_as_traceparent(
    producer: GenrelayProducer, sender: RecordingSender
) -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("checkout") as span:
        await producer.submit("fal-ai/flux/schnell", PROMPT)
        context = span.get_span_context()
    expected = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    assert dict(sender.records[0].headers)["traceparent"] == expected.encode()


async def test_records_outside_a_span_carry_no_trace_headers(
    producer: GenrelayProducer, sender: RecordingSender
) -> None:
    await producer.submit("fal-ai/flux/schnell", PROMPT)
    assert "traceparent" not in dict(sender.records[0].headers)


async def test_lifecycle_is_explicit() -> None:
    sender = RecordingSender()
    producer = GenrelayProducer(sender)
    with pytest.raises(ClientStateError, match="new"):
        await producer.submit("fal-ai/flux/schnell", PROMPT)
    await producer.start()
    await producer.start()
    await producer.stop()
    await producer.stop()
    assert sender.started
    assert sender.stopped
    with pytest.raises(ClientStateError, match="closed"):
        await producer.cancel("k")
    with pytest.raises(ClientStateError):
        await producer.start()


async def test_the_record_value_is_compact_json(
    producer: GenrelayProducer, sender: RecordingSender
) -> None:
    await producer.submit("fal-ai/flux/schnell", PROMPT, idempotency_key="k")
    value = sender.records[0].value
    assert value == json.dumps(json.loads(value), separators=(",", ":")).encode()
