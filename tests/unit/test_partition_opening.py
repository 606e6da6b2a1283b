"""Taking partitions over ends by positioning their input, all at once: at the offsets
committed with their state, or at the beginning when nothing was committed. A rebalance that
starts meanwhile leaves them restored, to be positioned by the assignment that ends it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import IllegalStateError

from genrelay.consumer.dispatch.jobs import Jobs
from genrelay.consumer.dispatch.partitions import Ownership, OwnershipConfig, State
from genrelay.consumer.ledger.ledger import Ledger
from genrelay.consumer.ledger.partition_writer import Writers
from genrelay.consumer.service.metrics import RelayMetrics
from genrelay.schemas.topics import Topics

TOPICS = Topics()


class FakeConsumer:
    """What `Ownership` asks of the group consumer while it positions partitions."""

    def __init__(self, committed: dict[TopicPartition, int], *, assigned: bool = True) -> None:
        self._committed = committed
        self.assigned = assigned
        self.positions: dict[TopicPartition, int] = {}
        self.resumed: set[TopicPartition] = set()
        self.lookups = 0

    async def committed(self, tp: TopicPartition) -> int | None:
        return self._committed.get(tp)

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        self.lookups += 1  # each lookup waits for the fetcher's round: once for them all
        return {tp: 7 for tp in tps}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if not self.assigned:
            raise IllegalStateError(f"no current assignment for {tp}")
        self.positions[tp] = offset

    def resume(self, *tps: TopicPartition) -> None:
        self.resumed.update(tps)


class ResumedKeys:
    def __init__(self) -> None:
        self.partitions: list[int] = []

    def resume(self, partition: int) -> int:
        self.partitions.append(partition)
        return 0


@pytest.fixture
def metrics() -> Iterator[RelayMetrics]:
    metrics = RelayMetrics()
    yield metrics
    metrics.shutdown()


def ownership(
    consumer: FakeConsumer, jobs: ResumedKeys, tmp_path: Path, metrics: RelayMetrics
) -> Ownership:
    config = OwnershipConfig("127.0.0.1:9", "group", 1.0, 1.0, 1024 * 1024)
    owned = Ownership(
        config,
        TOPICS,
        ledger=Ledger(Writers(), "127.0.0.1:9", TOPICS.ledger, tmp_path),
        jobs=cast(Jobs, jobs),
        writers=Writers(),
        metrics=metrics,
        on_change=lambda: None,
        on_crash=lambda exc: None,
    )
    owned.attach(cast(AIOKafkaConsumer, consumer))
    return owned


async def test_partitions_are_positioned_together_at_their_committed_offsets(
    tmp_path: Path, metrics: RelayMetrics
) -> None:
    requests_0 = TopicPartition(TOPICS.requests, 0)
    consumer = FakeConsumer({requests_0: 42})
    jobs = ResumedKeys()
    owned = ownership(consumer, jobs, tmp_path, metrics)
    for partition in (0, 1, 2):
        owned._states[partition] = State.RESTORING
    await owned._open([0, 1, 2])
    assert owned.owned() == (0, 1, 2)
    assert consumer.positions[requests_0] == 42
    assert consumer.positions[TopicPartition(TOPICS.webhooks, 0)] == 7  # nothing committed
    assert consumer.positions[TopicPartition(TOPICS.requests, 2)] == 7
    assert consumer.lookups == 1
    assert len(consumer.resumed) == 6
    assert jobs.partitions == [0, 1, 2]


async def test_a_partition_that_left_meanwhile_is_not_taken(
    tmp_path: Path, metrics: RelayMetrics
) -> None:
    consumer = FakeConsumer({})
    jobs = ResumedKeys()
    owned = ownership(consumer, jobs, tmp_path, metrics)
    owned._states[0] = State.RESTORING  # partition 1 was revoked while being read
    await owned._open([0, 1])
    assert owned.owned() == (0,)
    assert TopicPartition(TOPICS.requests, 1) not in consumer.resumed
    assert jobs.partitions == [0]


async def test_a_rebalance_under_way_leaves_them_restored_and_unread(
    tmp_path: Path, metrics: RelayMetrics
) -> None:
    consumer = FakeConsumer({}, assigned=False)
    jobs = ResumedKeys()
    owned = ownership(consumer, jobs, tmp_path, metrics)
    for partition in (0, 1):
        owned._states[partition] = State.RESTORING
    await owned._open([0, 1])
    assert owned._states == {0: State.RESTORED, 1: State.RESTORED}
    assert owned.owned() == ()
    assert not consumer.resumed
    assert jobs.partitions == []
