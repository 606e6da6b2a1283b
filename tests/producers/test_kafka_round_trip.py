"""The producer client and the completion watcher against a real Kafka broker."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from jsonschema import Draft202012Validator
from opentelemetry.sdk.trace import TracerProvider

from genrelay.deploy.local.stack import StackInfo
from genrelay.producers import (
    BrokerError,
    CompletionTimeoutError,
    CompletionWatcher,
    GenrelayProducer,
    PublishError,
    StartFrom,
)
from genrelay.schemas import (
    CompletionEvent,
    SubmitRequest,
    Timings,
    Topics,
    parse_request,
    to_json_bytes,
)
from genrelay.schemas.generate import JSON_DIR

pytestmark = pytest.mark.integration

WAIT_S = 30


async def new_topic(stack: StackInfo, purpose: str, partitions: int = 3) -> str:
    name = f"test.{purpose}.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, replication_factor=1)])
    finally:
        await admin.close()
    return name


async def read_all(stack: StackInfo, topic: str, count: int) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=stack.kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        records: list[Any] = []
        while len(records) < count:
            batches = await consumer.getmany(timeout_ms=WAIT_S * 1000)
            assert batches, f"fewer than {count} records on {topic} within {WAIT_S} s"
            records.extend(record for batch in batches.values() for record in batch)
        return records
    finally:
        await consumer.stop()


def completion(key: str, event_id: str | None = None, **changes: Any) -> CompletionEvent:
    fields: dict[str, Any] = {
        "event_id": event_id or f"evt-{key}",
        "idempotency_key": key,
        "status": "succeeded",
        "endpoint": "fal-ai/flux/schnell",
        "request_id": f"req-{key}",
        "artifacts": [],
        "result": {"images": []},
        "error": None,
        "timings": Timings(queued_ms=1, running_ms=2, total_ms=3),
        "attempts": 1,
        "cost_units": 1.5,
        "metadata": {"order_id": "42"},
        "replayed": False,
    }
    return CompletionEvent.model_validate({**fields, **changes})


@pytest.fixture
async def publish(stack: StackInfo) -> AsyncIterator[Any]:
    """Publish completion events the way the relay does: keyed by idempotency key."""
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()

    async def send(topic: str, event: CompletionEvent) -> None:
        key = event.idempotency_key.encode()
        await producer.send_and_wait(topic, to_json_bytes(event), key=key)

    yield send
    await producer.stop()


async def test_submit_lands_keyed_traced_and_valid(stack: StackInfo) -> None:
    topics = Topics(requests=await new_topic(stack, "requests"))
    tracer = TracerProvider().get_tracer("test")
    async with GenrelayProducer.connect(stack.kafka_bootstrap, topics=topics) as producer:
        with tracer.start_as_current_span("checkout") as span:
            key = await producer.submit(
                "fal-ai/flux/schnell", {"prompt": "a lighthouse"}, metadata={"order_id": "42"}
            )
        await producer.cancel(key)

    submit, cancel = sorted(await read_all(stack, topics.requests, 2), key=lambda r: r.offset)
    trace_id = f"{span.get_span_context().trace_id:032x}"
    assert submit.key == cancel.key == key.encode()
    assert submit.partition == cancel.partition  # the cancel is ordered after its submit
    assert trace_id in dict(submit.headers)["traceparent"].decode()
    schema = Draft202012Validator(json.loads((JSON_DIR / "request.v1.json").read_text()))
    for record in (submit, cancel):
        schema.validate(json.loads(record.value))
    request = parse_request(submit.value, 1 << 20)
    assert isinstance(request, SubmitRequest)
    assert request.idempotency_key == key
    assert request.metadata == {"order_id": "42"}


async def test_await_completion_sees_an_event_published_before_it_started(
    stack: StackInfo, publish: Any
) -> None:
    topic = await new_topic(stack, "completions")
    await publish(topic, completion("order-42/hero"))
    async with CompletionWatcher.connect(stack.kafka_bootstrap, topic=topic) as watcher:
        got = await watcher.await_completion("order-42/hero", timeout=WAIT_S)
    assert got == completion("order-42/hero")


async def test_iter_completions_yields_each_key_once(stack: StackInfo, publish: Any) -> None:
    topic = await new_topic(stack, "completions")
    keys = [f"job-{n}" for n in range(6)]
    async with CompletionWatcher.connect(stack.kafka_bootstrap, topic=topic) as watcher:
        for key in keys:
            await publish(topic, completion(key))
            await publish(topic, completion(key))  # redelivered
        await publish(topic, completion(keys[0], event_id="evt-replay", replayed=True))
        got = [event async for event in watcher.iter_completions(keys, timeout=WAIT_S)]
    assert sorted(event.idempotency_key for event in got) == keys
    assert not any(event.replayed for event in got)


async def test_from_the_end_only_newer_events_are_seen(stack: StackInfo, publish: Any) -> None:
    topic = await new_topic(stack, "completions")
    await publish(topic, completion("old"))
    async with CompletionWatcher.connect(
        stack.kafka_bootstrap, topic=topic, start_from=StartFrom.END
    ) as watcher:
        await publish(topic, completion("new"))
        assert await watcher.await_completion("new", timeout=WAIT_S) == completion("new")
        with pytest.raises(CompletionTimeoutError):
            await watcher.await_completion("old", timeout=1)


async def test_watching_a_missing_topic_fails_clearly(stack: StackInfo) -> None:
    watcher = CompletionWatcher.connect(
        stack.kafka_bootstrap, topic="test.no-such-topic", request_timeout_ms=2000
    )
    with pytest.raises(BrokerError, match="does not exist"):
        await watcher.start()


async def test_a_record_the_broker_cannot_take_raises_publish_error(stack: StackInfo) -> None:
    # The broker does not create topics on demand, so this send can never be acknowledged.
    topics = Topics(requests="test.no-such-requests")
    producer = GenrelayProducer.connect(
        stack.kafka_bootstrap, topics=topics, request_timeout_ms=2000
    )
    async with producer:
        with pytest.raises(PublishError, match="not acknowledged") as failed:
            await producer.submit("fal-ai/flux/schnell", {"prompt": "a lighthouse"})
    assert isinstance(failed.value.__cause__, KafkaError)


async def test_an_unreachable_broker_fails_start_with_broker_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    producer = GenrelayProducer.connect(f"127.0.0.1:{closed_port}")
    with pytest.raises(BrokerError, match="cannot connect") as failed:
        await producer.start()
    assert failed.value.retryable
