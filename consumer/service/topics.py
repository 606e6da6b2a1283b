"""Creating and checking genrelay's topics at start."""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from genrelay.consumer.service.config import Settings
from genrelay.schemas.topics import Topics

_MAX_MESSAGE = "max.message.bytes"
_KAFKA_DEFAULT = 1024 * 1024 + 12


class TopicLayoutError(RuntimeError):
    """The co-partitioned topics disagree on their partition count."""


async def ensure_topics(settings: Settings) -> int:
    """Create missing topics and check co-partitioning; returns the partition count."""
    topics = settings.topics
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        if settings.create_topics:
            await _create(admin, settings)
        keyed = [topics.requests, topics.ledger, topics.webhooks, topics.spend]
        counts = await _partition_counts(admin, keyed)
        # Read before anything is posted: a missing one would hold every key back.
        followed = await _partition_counts(admin, [topics.budgets])
        if not any(count == 0 for count in counts.values()):
            await _check_record_limits(admin, settings)
    finally:
        await admin.close()
    missing = sorted(name for name, count in {**counts, **followed}.items() if count == 0)
    if missing:
        raise TopicLayoutError(f"topics missing (create them, or set create_topics): {missing}")
    if len(set(counts.values())) != 1:
        # Keyed co-partitioning is what lets one replica own every fact about a key.
        raise TopicLayoutError(
            f"requests, ledger, webhooks and spend need equal partitions: {counts}"
        )
    return next(iter(counts.values()))


async def _partition_counts(
    admin: AIOKafkaAdminClient, names: list[str], timeout: float = 30.0
) -> dict[str, int]:
    # Just-created topics can be described before their partitions have leaders.
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        described = await admin.describe_topics(names)
        counts = {t["topic"]: len(t["partitions"]) for t in described if t["error_code"] == 0}
        complete = len(counts) == len(names) and 0 not in counts.values()
        if complete or asyncio.get_running_loop().time() > deadline:
            return {name: counts.get(name, 0) for name in names}
        await asyncio.sleep(0.2)


async def _check_record_limits(admin: AIOKafkaAdminClient, settings: Settings) -> None:
    """Every topic genrelay writes must accept the largest record it may produce."""
    names = settings.topics.all()
    resources = [ConfigResource(ConfigResourceType.TOPIC, n, {_MAX_MESSAGE: None}) for n in names]
    limits: dict[str, int] = {}
    for response in await admin.describe_configs(resources):
        for resource in response.to_object()["resources"]:
            for entry in resource["config_entries"]:
                if entry["config_names"] == _MAX_MESSAGE and entry["config_value"]:
                    limits[resource["resource_name"]] = int(entry["config_value"])
    wanted = settings.kafka_max_request_bytes
    small = {name: limit for name, limit in limits.items() if limit < wanted}
    if small:
        raise TopicLayoutError(
            f"topics accept smaller records ({_MAX_MESSAGE}) than "
            f"GENRELAY_KAFKA_MAX_REQUEST_BYTES={wanted}: {small}; "
            f"raise their {_MAX_MESSAGE} or lower the setting"
        )


def _keyed_state(topics: Topics) -> tuple[str, ...]:
    """The topics whose latest record per key is all that matters: compacted."""
    return (topics.ledger, topics.costs, topics.budgets, topics.spend)


async def _create(admin: AIOKafkaAdminClient, settings: Settings) -> None:
    topics = settings.topics
    compacted = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1"}
    # Room for the largest record genrelay produces, plus the batch's own header.
    sized = {_MAX_MESSAGE: str(max(settings.kafka_max_request_bytes + 12, _KAFKA_DEFAULT))}
    wanted = [
        NewTopic(
            name,
            num_partitions=settings.partitions,
            replication_factor=settings.replication_factor,
            topic_configs={**sized, **(compacted if name in _keyed_state(topics) else {})},
        )
        for name in topics.all()
    ]
    existing = set(await admin.list_topics())
    missing = [topic for topic in wanted if topic.name not in existing]
    if not missing:
        return
    # Another replica may create them first.
    with contextlib.suppress(TopicAlreadyExistsError):
        await admin.create_topics(missing)
