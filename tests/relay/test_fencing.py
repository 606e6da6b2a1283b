"""Owners that cannot collide: a new owner fences the old one before it reads the ledger, and
nothing the old one writes afterwards (or had left open) can become visible."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from genrelay.consumer.errors import Fenced, RecordTooLarge
from genrelay.consumer.ledger.ledger import Ledger
from genrelay.consumer.ledger.partition_writer import Outgoing, PartitionWriter, transactional_id
from genrelay.deploy.local.stack import StackInfo
from genrelay.schemas.ledger import LedgerRecord, Phase
from tests.relay.harness import owned_partitions

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _state(key: str, phase: Phase) -> bytes:
    record = LedgerRecord(
        idempotency_key=key,
        phase=phase,
        fingerprint="f",
        endpoint="fal-ai/flux/schnell",
        request={},
        accepted_at=NOW,
        updated_at=NOW,
    )
    return record.model_dump_json().encode()


async def _ledger_topic(stack: StackInfo) -> str:
    topic = f"fence-{uuid.uuid4().hex[:8]}.ledger"
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    return topic


async def test_a_new_owner_fences_the_old_writer_and_restores_only_what_it_committed(
    stack: StackInfo, tmp_path: Path
) -> None:
    topic = await _ledger_topic(stack)
    group = f"g-{topic}"
    lost: list[int] = []
    old = PartitionWriter(
        bootstrap=stack.kafka_bootstrap,
        group_id=group,
        partition=0,
        offsets=dict,
        on_lost=lambda partition, exc: lost.append(partition),
    )
    await old.start()
    try:
        await old.write(Outgoing(topic, _state("k", Phase.SUBMITTED), b"k", 0))
        async with owned_partitions(stack.kafka_bootstrap, group, [0]) as writers:
            with pytest.raises(Fenced):
                await old.write(Outgoing(topic, _state("k", Phase.SUBMITTING), b"k", 0))
            assert lost == [0]
            ledger = Ledger(writers, stack.kafka_bootstrap, topic, tmp_path / "1")
            await ledger.restore([0])
            record = ledger.get("k")
            assert record is not None
            assert record.phase is Phase.SUBMITTED
    finally:
        await old.close()


async def test_a_write_held_back_by_a_revoked_owner_cannot_regress_a_key(
    stack: StackInfo, tmp_path: Path
) -> None:
    topic = await _ledger_topic(stack)
    group = f"g-{topic}"
    old = AIOKafkaProducer(
        bootstrap_servers=stack.kafka_bootstrap, transactional_id=transactional_id(group, 0)
    )
    await old.start()
    try:
        async with old.transaction():
            await old.send(topic, _state("k", Phase.COMPLETED), key=b"k", partition=0)
        # The old owner's next write is under way but not committed when it loses the key.
        await old.begin_transaction()
        # Appended to the log (the leader acknowledged it), inside a transaction still open.
        await (await old.send(topic, _state("k", Phase.SUBMITTING), key=b"k", partition=0))

        async with owned_partitions(stack.kafka_bootstrap, group, [0]) as writers:
            ledger = Ledger(writers, stack.kafka_bootstrap, topic, tmp_path / "2")
            await ledger.restore([0])
            restored = ledger.get("k")
            assert restored is not None
            assert restored.phase is Phase.COMPLETED

            # The held-back write lands only now, after the new owner restored: refused.
            with pytest.raises(KafkaError):
                await old.commit_transaction()
            again = Ledger(writers, stack.kafka_bootstrap, topic, tmp_path / "3")
            await again.restore([0])
            record = again.get("k")
            assert record is not None
            assert record.phase is Phase.COMPLETED
    finally:
        await old.stop()


async def test_a_record_larger_than_the_limit_is_refused_alone(
    stack: StackInfo, tmp_path: Path
) -> None:
    topic = await _ledger_topic(stack)
    async with owned_partitions(stack.kafka_bootstrap, f"g-{topic}", [0]) as writers:
        writer = writers.get(0)
        huge = Outgoing(topic, b"x" * (2 * 1024 * 1024), b"big", 0)
        with pytest.raises(RecordTooLarge):
            await writer.write(huge)
        # The writer is unharmed: the next write commits.
        await writer.write(Outgoing(topic, _state("k", Phase.ACCEPTED), b"k", 0))
        ledger = Ledger(writers, stack.kafka_bootstrap, topic, tmp_path / "4")
        await ledger.restore([0])
        assert ledger.get("k") is not None
