"""Two replicas in one group; one is killed mid-flight and the survivor finishes its jobs."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from genrelay.chaos.webhook_front import webhook_front
from genrelay.deploy.local.processes import free_port
from genrelay.deploy.local.replicas import RelayProcess
from genrelay.deploy.local.stack import StackInfo
from genrelay.emulator.server import EmulatorServer
from genrelay.emulator.settings import EmulatorSettings, UniformLatency
from tests.relay.harness import (
    TopicReader,
    completions_by_key,
    produce,
    relay_settings,
    submit_record,
)

pytestmark = pytest.mark.integration

JOBS = 60


@pytest.fixture
async def slow_emulator() -> AsyncIterator[EmulatorServer]:
    settings = EmulatorSettings(
        run_latency=UniformLatency(min_ms=500, max_ms=3000),
        webhook_retries=60,
        webhook_backoff_max_ms=500.0,
        seed=3,
    )
    async with EmulatorServer(settings) as server:
        yield server


async def test_survivor_finishes_a_killed_replicas_jobs_without_resubmitting(
    stack: StackInfo, slow_emulator: EmulatorServer, tmp_path: Path
) -> None:
    ports = [free_port(), free_port()]
    async with webhook_front([f"http://127.0.0.1:{p}" for p in ports]) as front:
        base = relay_settings(
            stack,
            slow_emulator,
            public_webhook_url=front,
            session_timeout_ms=6000,
            poll_grace_seconds=3.0,
        )
        replicas = [
            RelayProcess(
                base.model_copy(
                    update={
                        "http_port": port,
                        "admin_port": free_port(),
                        "instance_id": f"relay-{n}",
                    }
                ),
                tmp_path,
                name=f"relay-{n}",
            )
            for n, port in enumerate(ports)
        ]
        for replica in replicas:
            await replica.start()
        keys = [f"failover-{n}" for n in range(JOBS)]
        try:
            await produce(
                stack.kafka_bootstrap,
                base.topic_requests,
                [(k.encode(), submit_record(k, k)) for k in keys],
            )
            async with TopicReader(stack.kafka_bootstrap, base.topic_completions) as reader:
                await reader.until(lambda rs: len(completions_by_key(rs)) >= 5)
                in_flight = len(slow_emulator.submissions()) - len(
                    completions_by_key(reader.records)
                )
                replicas[0].kill()
                await reader.until(lambda rs: len(completions_by_key(rs)) == JOBS, timeout=120)
        finally:
            for replica in replicas:
                replica.stop()

    assert in_flight > 0, "the kill must happen while jobs are in flight"
    paid = Counter(s.input["prompt"] for s in slow_emulator.submissions())
    assert paid == Counter({k: 1 for k in keys})
    for events in completions_by_key(reader.records).values():
        assert len({e["event_id"] for e in events}) == 1
        assert events[0]["status"] == "succeeded", events[0]
