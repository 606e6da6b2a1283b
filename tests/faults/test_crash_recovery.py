"""kill -9 at every phase boundary: each key still ends once, and is paid for once."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from genrelay.bench.workload import read_topic
from genrelay.deploy.local.replicas import RelayProcess
from genrelay.deploy.local.stack import StackInfo
from genrelay.emulator.server import EmulatorServer
from genrelay.emulator.settings import EmulatorSettings
from tests.relay.harness import (
    TopicReader,
    completions_by_key,
    produce,
    relay_settings,
    submit_record,
)

pytestmark = pytest.mark.integration

JOBS = 12


@pytest.fixture
async def patient_emulator() -> AsyncIterator[EmulatorServer]:
    # Webhooks keep retrying long enough to reach a relay that is restarting.
    settings = EmulatorSettings(webhook_retries=60, webhook_backoff_max_ms=500.0)
    async with EmulatorServer(settings) as server:
        yield server


@pytest.mark.parametrize(
    ("failpoint", "ambiguous"),
    [
        ("before_post:4", False),
        ("after_post:4", True),
        ("after_submitted:4", False),
        ("mid_download:4", False),
    ],
)
async def test_kill_at_phase_boundary_then_restart_pays_once(
    stack: StackInfo,
    patient_emulator: EmulatorServer,
    tmp_path: Path,
    failpoint: str,
    ambiguous: bool,
) -> None:
    settings = relay_settings(
        stack,
        patient_emulator,
        instance_id="relay-1",
        # A key that died between its intent and its POST is reconciled from the request
        # history: adopted if the POST arrived, re-posted once the history proves it did not.
        start_timeout_seconds=10.0,
        history_lag_seconds=1.0,
        clock_skew_seconds=1.0,
        poll_grace_seconds=2.0,
    )
    keys = [f"crash-{n}" for n in range(JOBS)]
    first = RelayProcess(settings, tmp_path, failpoint=failpoint)
    await first.start()
    await produce(
        stack.kafka_bootstrap,
        settings.topic_requests,
        [(k.encode(), submit_record(k, k)) for k in keys],
    )
    assert await first.exited() != 0  # the failpoint fired: SIGKILL

    second = RelayProcess(settings, tmp_path)
    await second.start()
    try:
        async with TopicReader(stack.kafka_bootstrap, settings.topic_completions) as reader:
            await reader.until(lambda rs: len(completions_by_key(rs)) == JOBS, timeout=90)
    finally:
        second.stop()

    paid = Counter(s.input["prompt"] for s in patient_emulator.submissions())
    assert paid == Counter({k: 1 for k in keys})
    for key, events in completions_by_key(reader.records).items():
        assert len({e["event_id"] for e in events}) == 1, key
        assert events[0]["status"] == "succeeded", events[0]

    if ambiguous:
        # The key whose POST answer died with the process was adopted from its webhook.
        async with TopicReader(stack.kafka_bootstrap, settings.topic_ledger) as ledger:
            await ledger.until(_adopted, timeout=30)


def _adopted(records: list[object]) -> bool:
    return any(json.loads(r.value).get("adopted") for r in records if r.value)  # type: ignore[attr-defined]


async def test_a_kill_right_after_a_dead_letter_commits_never_writes_it_twice(
    stack: StackInfo, patient_emulator: EmulatorServer, tmp_path: Path
) -> None:
    # One partition, so the record after the bad ones is read only once they are passed.
    settings = relay_settings(stack, patient_emulator, partitions=1, instance_id="relay-1")
    bad = [(f"bad-{n}".encode(), b"{not json") for n in range(3)]
    first = RelayProcess(settings, tmp_path, failpoint="after_commit")
    await first.start()
    await produce(stack.kafka_bootstrap, settings.topic_requests, bad)
    assert await first.exited() != 0  # killed right after its first transaction committed

    second = RelayProcess(settings, tmp_path)
    await second.start()
    try:
        await produce(
            stack.kafka_bootstrap,
            settings.topic_requests,
            [(b"after", submit_record("after", "after"))],
        )
        async with TopicReader(stack.kafka_bootstrap, settings.topic_completions) as reader:
            await reader.until(lambda rs: "after" in completions_by_key(rs), timeout=90)
    finally:
        second.stop()
    letters = await read_topic(stack.kafka_bootstrap, settings.topic_dead_letter)
    assert sorted(letter.key for letter in letters) == [key for key, _ in bad]
