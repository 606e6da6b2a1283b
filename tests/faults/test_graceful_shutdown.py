"""SIGTERM with hundreds of jobs in flight: a prompt, clean exit, and nothing paid twice."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

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
from tests.waiting import eventually

pytestmark = pytest.mark.integration

JOBS = 200
GRACE = 5.0


@pytest.fixture
async def slow_emulator() -> AsyncIterator[EmulatorServer]:
    settings = EmulatorSettings(
        run_latency=UniformLatency(min_ms=4000, max_ms=8000),
        concurrency=JOBS,
        webhook_retries=60,
        webhook_backoff_max_ms=500.0,
    )
    async with EmulatorServer(settings) as server:
        yield server


async def test_sigterm_exits_within_the_bound_and_a_restart_finishes_every_job(
    stack: StackInfo, slow_emulator: EmulatorServer, tmp_path: Path
) -> None:
    settings = relay_settings(
        stack, slow_emulator, instance_id="relay-1", shutdown_grace_seconds=GRACE
    )
    keys = [f"sigterm-{n}" for n in range(JOBS)]
    relay = RelayProcess(settings, tmp_path)
    await relay.start()
    await produce(
        stack.kafka_bootstrap,
        settings.topic_requests,
        [(k.encode(), submit_record(k, k)) for k in keys],
    )
    await eventually(lambda: len(slow_emulator.submissions()) == JOBS, timeout=60)
    assert slow_emulator.stats()["completed"] == 0  # all 200 are in flight

    assert relay.pid is not None
    sent = time.monotonic()
    os.kill(relay.pid, signal.SIGTERM)
    code = await relay.exited(timeout=GRACE + 15)
    took = time.monotonic() - sent
    assert code == 0
    assert took < GRACE + 15

    restarted = RelayProcess(settings, tmp_path)
    await restarted.start()
    try:
        async with TopicReader(stack.kafka_bootstrap, settings.topic_completions) as reader:
            await reader.until(lambda rs: len(completions_by_key(rs)) == JOBS, timeout=120)
    finally:
        restarted.stop()

    paid = Counter(s.input["prompt"] for s in slow_emulator.submissions())
    assert paid == Counter({k: 1 for k in keys})
    statuses = {evs[0]["status"] for evs in completions_by_key(reader.records).values()}
    assert statuses == {"succeeded"}
