"""End to end on the real broker, real MinIO and the emulator: one paid submission per key."""

from __future__ import annotations

import hashlib
import json
import random

import pytest
from minio import Minio

from genrelay.deploy.local.stack import StackInfo
from genrelay.emulator.server import EmulatorServer
from tests.relay.harness import (
    TopicReader,
    completions_by_key,
    produce,
    relay_settings,
    running,
    submit_and_finish,
    submit_record,
)

pytestmark = pytest.mark.integration


async def test_duplicates_never_pay_twice_and_files_match_minio(
    stack: StackInfo, emulator: EmulatorServer
) -> None:
    settings = relay_settings(stack, emulator)
    keys = [f"job-{n}/hero" for n in range(1000)]
    records = [(k.encode(), submit_record(k, f"prompt {n}")) for n, k in enumerate(keys)]
    duplicates = random.Random(1).sample(records, k=len(records) // 5)
    async with running(settings):
        await produce(stack.kafka_bootstrap, settings.topic_requests, records + duplicates)
        async with TopicReader(stack.kafka_bootstrap, settings.topic_completions) as reader:
            await reader.until(lambda rs: len(completions_by_key(rs)) == len(keys))

    assert len(emulator.submissions()) == len(keys)
    events = completions_by_key(reader.records)
    assert set(events) == set(keys)
    client = Minio(
        stack.s3_endpoint,
        access_key=stack.s3_access_key,
        secret_key=stack.s3_secret_key,
        secure=False,
    )
    for key, (event, *rest) in events.items():
        assert all(other["event_id"] == event["event_id"] for other in rest)
        assert event["status"] == "succeeded", event
        (artifact,) = event["artifacts"]
        response = client.get_object(artifact["bucket"], artifact["key"])
        try:
            data = response.read()
        finally:
            response.close()
            response.release_conn()
        assert len(data) == artifact["size"]
        assert hashlib.sha256(data).hexdigest() == artifact["sha256"]
        assert event["result"]["images"][0]["object"].startswith("s3://")
        assert key.replace("/", "%2F") in artifact["key"]


async def test_a_bare_url_string_in_a_result_is_stored_like_a_file(
    stack: StackInfo, emulator: EmulatorServer
) -> None:
    settings = relay_settings(stack, emulator)
    record = json.dumps(
        {
            "schema_version": 1,
            "action": "submit",
            "idempotency_key": "bare",
            "endpoint": "fal-ai/fake-video-url",
            "input": {"prompt": "a clip", "num_frames": 2, "width": 64, "height": 64},
        }
    ).encode()
    async with running(settings):
        await produce(stack.kafka_bootstrap, settings.topic_requests, [(b"bare", record)])
        async with TopicReader(stack.kafka_bootstrap, settings.topic_completions) as reader:
            await reader.until(lambda rs: len(rs) == 1)
    event = json.loads(reader.records[0].value)
    assert event["status"] == "succeeded", event
    (artifact,) = event["artifacts"]
    # The expiring URL is gone from the event: it names the stored copy instead.
    assert event["result"]["video_url"] == f"s3://{artifact['bucket']}/{artifact['key']}"
    client = Minio(
        stack.s3_endpoint,
        access_key=stack.s3_access_key,
        secret_key=stack.s3_secret_key,
        secure=False,
    )
    stat = client.stat_object(artifact["bucket"], artifact["key"])
    assert stat.size == artifact["size"] > 0


async def test_malformed_records_are_dead_lettered_and_the_partition_flows(
    stack: StackInfo, emulator: EmulatorServer
) -> None:
    settings = relay_settings(stack, emulator, partitions=1)
    bad = [
        (b"k1", b"not json"),
        (b"k2", json.dumps({"schema_version": 9, "action": "submit"}).encode()),
        (b"k3", json.dumps({"schema_version": 1, "action": "submit"}).encode()),
        (b"k4", submit_record("k4", "p").replace(b"fal-ai/flux/schnell", b"not an endpoint")),
        # A bucket S3 would refuse: never paid for, since its output could not be stored.
        (b"k5", submit_record("k5", "p", output={"bucket": "10.20.30.40"})),
        (b"ok", submit_record("ok", "after the bad ones")),
        (b"ok", submit_record("ok", "a different payload under the same key")),
    ]
    async with running(settings):
        await produce(stack.kafka_bootstrap, settings.topic_requests, bad)
        async with TopicReader(stack.kafka_bootstrap, settings.topic_dead_letter) as dead:
            await dead.until(lambda rs: len(rs) == 6)
        async with TopicReader(stack.kafka_bootstrap, settings.topic_completions) as done:
            await done.until(lambda rs: len(rs) == 1)

    reasons = {r.key: dict(r.headers)["genrelay-dlq-reason"].decode() for r in dead.records}
    assert reasons == {
        b"k1": "not_json",
        b"k2": "unsupported_schema_version",
        b"k3": "missing_idempotency_key",
        b"k4": "invalid_endpoint",
        b"k5": "schema_violation",
        b"ok": "idempotency_conflict",
    }
    originals = {key: value for key, value in bad[:5]}
    for record in dead.records:
        if record.key in originals:
            assert record.value == originals[record.key]
    assert len(emulator.submissions()) == 1


async def test_polling_alone_completes_jobs_when_webhooks_are_off(
    stack: StackInfo, emulator: EmulatorServer
) -> None:
    settings = relay_settings(stack, emulator, public_webhook_url=None, poll_grace_seconds=0.2)
    keys = [f"poll-{n}" for n in range(20)]
    async with running(settings):
        completed = await submit_and_finish(stack.kafka_bootstrap, settings, keys)
    assert all(s.webhook_url is None for s in emulator.submissions())
    assert {e[0]["status"] for e in completions_by_key(completed).values()} == {"succeeded"}
