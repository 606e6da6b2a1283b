"""A step that cannot succeed ends its key with a terminal event instead of retrying forever:
a refusal at once, a transient failure once its budget is spent."""

from __future__ import annotations

import json

import pytest

from genrelay.deploy.local.processes import free_port
from genrelay.deploy.local.stack import StackInfo
from genrelay.emulator.server import EmulatorServer
from tests.relay.harness import (
    TopicReader,
    metric,
    produce,
    relay_settings,
    running,
    scrape,
    submit_record,
)

pytestmark = pytest.mark.integration


async def test_credentials_the_store_refuses_end_the_key_store_refused_at_once(
    stack: StackInfo, emulator: EmulatorServer
) -> None:
    settings = relay_settings(stack, emulator, s3_secret_key="not-the-secret-key")
    async with running(settings):
        await produce(
            stack.kafka_bootstrap, settings.topic_requests, [(b"deny", submit_record("deny", "x"))]
        )
        async with TopicReader(stack.kafka_bootstrap, settings.topic_completions) as reader:
            await reader.until(lambda rs: len(rs) == 1)
    event = json.loads(reader.records[0].value)
    assert event["status"] == "failed"
    assert event["error"]["type"] == "store_refused"
    assert event["error"]["message"].startswith(("AccessDenied", "SignatureDoesNotMatch"))
    assert not event["error"]["retryable"]
    assert len(emulator.submissions()) == 1


async def test_an_unreachable_store_ends_the_key_store_failed_once_its_budget_is_spent(
    stack: StackInfo, emulator: EmulatorServer
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens there: every upload fails
    settings = relay_settings(stack, emulator, s3_endpoint=nowhere, step_max_failures=3)
    async with running(settings):
        await produce(
            stack.kafka_bootstrap, settings.topic_requests, [(b"gone", submit_record("gone", "x"))]
        )
        async with TopicReader(stack.kafka_bootstrap, settings.topic_completions) as reader:
            await reader.until(lambda rs: len(rs) == 1)
        samples = await scrape(settings)
    event = json.loads(reader.records[0].value)
    assert event["status"] == "failed"
    assert event["error"]["type"] == "store_failed"
    assert event["error"]["message"].startswith("store failed 3 times")
    assert metric(samples, "genrelay_step_failures_total", step="store", outcome="retry") == 2
    assert metric(samples, "genrelay_step_failures_total", step="store", outcome="exhausted") == 1
    assert len(emulator.submissions()) == 1
