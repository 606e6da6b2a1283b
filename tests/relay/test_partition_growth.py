"""Partitions added while running: keys would hash away from their ledger state, so intake
stops with a clear error instead of re-keying records forever or paying twice."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

from genrelay.consumer.service.relay import Relay
from genrelay.consumer.service.topics import TopicLayoutError
from genrelay.deploy.local.stack import StackInfo
from genrelay.emulator.server import EmulatorServer
from tests.relay.harness import (
    produce,
    relay_settings,
    submit_and_finish,
    submit_record,
)

pytestmark = pytest.mark.integration


async def test_adding_partitions_while_running_stops_intake_with_a_clear_error(
    stack: StackInfo, emulator: EmulatorServer
) -> None:
    settings = relay_settings(stack, emulator, partitions=2, kafka_metadata_max_age_ms=1000)
    keys = [f"grow-{n}" for n in range(6)]
    async with Relay(settings) as relay:
        task = asyncio.get_running_loop().create_task(relay.run())
        await asyncio.wait_for(relay.ready.wait(), timeout=60)
        await submit_and_finish(stack.kafka_bootstrap, settings, keys)
        admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_partitions(
                {
                    settings.topic_requests: NewPartitions(total_count=4),
                    settings.topic_webhooks: NewPartitions(total_count=4),
                }
            )
        finally:
            await admin.close()
        # The same keys again, hashed by the new count: none may be paid a second time.
        await produce(
            stack.kafka_bootstrap,
            settings.topic_requests,
            [(k.encode(), submit_record(k, k)) for k in keys],
        )
        with pytest.raises(TopicLayoutError, match="partitions were added"):
            await asyncio.wait_for(task, timeout=120)
    assert Counter(s.input["prompt"] for s in emulator.submissions()) == Counter(
        {k: 1 for k in keys}
    )
