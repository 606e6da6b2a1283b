"""The bench reads whole topics to compute its hops; a read that silently starts at a
partition's end makes the hop figures go missing (seen under load). The race is in the
consumer's own reset of freshly assigned partitions, so it is exercised by many fresh reads."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from genrelay.bench.services import delete_topics
from genrelay.bench.workload import read_topic
from genrelay.deploy.local.stack import StackInfo

pytestmark = pytest.mark.integration

PARTITIONS = 12
RECORDS = 120
READS = 30


@pytest.mark.timeout(180)
async def test_every_read_of_a_topic_returns_every_record(stack: StackInfo) -> None:
    topic = f"bench-read-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    try:
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for n in range(RECORDS):
                await producer.send(topic, b"v", key=f"key-{n}".encode())
            await producer.flush()
        finally:
            await producer.stop()
        sizes = [len(await read_topic(stack.kafka_bootstrap, topic)) for _ in range(READS)]
        assert sizes == [RECORDS] * READS
    finally:
        await delete_topics(stack.kafka_bootstrap, [topic])
