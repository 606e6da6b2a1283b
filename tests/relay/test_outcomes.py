"""Outcomes survive unreliable webhooks and expiring files; nothing unstored is announced."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator

import httpx
import pytest
from minio import Minio

from genrelay.deploy.local.stack import StackInfo
from genrelay.emulator.server import EmulatorServer
from genrelay.emulator.settings import EmulatorSettings, LognormalLatency
from tests.relay.harness import (
    TopicReader,
    completions_by_key,
    metric,
    produce,
    relay_settings,
    running,
    scrape,
    submit_record,
)
from tests.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
async def unreliable_emulator() -> AsyncIterator[EmulatorServer]:
    # Median 50 ms with a long tail: about one delivery in ten arrives after the 1 s grace.
    settings = EmulatorSettings(
        webhook_loss_rate=0.3,
        webhook_duplicate_rate=0.1,
        webhook_delay=LognormalLatency(median_ms=50, sigma=2.5, max_ms=8000),
        seed=11,
    )
    async with EmulatorServer(settings) as server:
        yield server


async def test_lost_duplicated_and_late_webhooks_still_complete_each_job_once(
    stack: StackInfo, unreliable_emulator: EmulatorServer
) -> None:
    settings = relay_settings(
        stack, unreliable_emulator, poll_grace_seconds=1.0, poll_max_interval_seconds=2.0
    )
    keys = [f"lossy-{n}" for n in range(int(os.environ.get("LOSSY_JOBS", "1000")))]
    async with running(settings):
        await produce(
            stack.kafka_bootstrap,
            settings.topic_requests,
            [(k.encode(), submit_record(k, k)) for k in keys],
        )
        async with TopicReader(stack.kafka_bootstrap, settings.topic_completions) as reader:
            await reader.until(lambda rs: len(completions_by_key(rs)) == len(keys), timeout=240)
        samples = await scrape(settings)

    stats = unreliable_emulator.stats()
    assert stats["submissions"] == len(keys)
    events = completions_by_key(reader.records)
    assert {e[0]["status"] for e in events.values()} == {"succeeded"}
    assert all(len({e["event_id"] for e in evs}) == 1 for evs in events.values())
    # Both paths really were exercised.
    assert metric(samples, "genrelay_resolutions_total", source="poll") > 0
    assert metric(samples, "genrelay_resolutions_total", source="webhook") > 0


async def test_files_expiring_while_the_relay_is_down_end_expired_not_announced(
    stack: StackInfo,
) -> None:
    emulator_settings = EmulatorSettings(file_url_lifetime_s=2.0, webhook_retries=0)
    async with EmulatorServer(emulator_settings) as emulator:
        # No explicit output lifetime: the account's default (2 s here) applies.
        settings = relay_settings(
            stack, emulator, poll_grace_seconds=0.5, output_lifetime_seconds=None
        )
        keys = [f"expiring-{n}" for n in range(5)]
        # The relay submits, then goes down before any output is fetched.
        emulator.configure(run_latency={"kind": "fixed", "ms": 1500})
        async with running(settings):
            await produce(
                stack.kafka_bootstrap,
                settings.topic_requests,
                [(k.encode(), submit_record(k, k)) for k in keys],
            )
            await eventually(lambda: len(emulator.submissions()) == len(keys))
        await _until_files_expired(emulator, len(keys))

        async with (
            running(settings),
            TopicReader(stack.kafka_bootstrap, settings.topic_completions) as reader,
        ):
            await reader.until(lambda rs: len(completions_by_key(rs)) == len(keys), timeout=60)

    client = Minio(
        stack.s3_endpoint,
        access_key=stack.s3_access_key,
        secret_key=stack.s3_secret_key,
        secure=False,
    )
    events = [evs[0] for evs in completions_by_key(reader.records).values()]
    # The relay was down until every URL had expired, so no file could be copied.
    assert {e["status"] for e in events} == {"expired"}
    for event in events:
        if event["status"] == "succeeded":
            for artifact in event["artifacts"]:
                data = client.get_object(artifact["bucket"], artifact["key"]).read()
                assert hashlib.sha256(data).hexdigest() == artifact["sha256"]
        else:
            assert event["status"] == "expired", event
            assert event["error"]["type"] == "output_expired"
            assert event["artifacts"] == []


async def _until_files_expired(emulator: EmulatorServer, jobs: int) -> None:
    """Wait until every job completed and the first output URL answers 4xx."""
    async with httpx.AsyncClient() as http:

        async def expired() -> bool:
            if emulator.stats()["completed"] < jobs:
                return False
            submission = emulator.submissions()[0]
            result_url = f"{emulator.base_url}/fal-ai/flux/requests/{submission.request_id}"
            result = await http.get(result_url, headers={"Authorization": "Key emulator-key"})
            url = result.json()["images"][0]["url"]
            return (await http.get(url)).status_code in (403, 404, 410)

        await eventually(expired)
