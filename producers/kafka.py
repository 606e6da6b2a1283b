"""The aiokafka boundary: a record sender and a completion-topic reader.

aiokafka's errors are translated here into `BrokerError`/`PublishError`, so nothing above
this module handles a Kafka exception type.
"""

import asyncio
from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError

from genrelay.producers.errors import BrokerError, ClientStateError, PublishError


class StartFrom(StrEnum):
    """Where a reader starts on the completion topic."""

    BEGINNING = "beginning"  # every event still retained, including ones from before start
    END = "end"  # only events published after the reader started


# aiokafka retries an offset lookup for as long as it fails; a start must end.
_POSITION_TIMEOUT_S = 60.0


def _broker_error(action: str, exc: KafkaError) -> BrokerError:
    return BrokerError(f"{action}: {exc}", retryable=bool(exc.retriable))


class KafkaRecordSender:
    """Sends records with an idempotent producer and waits for every in-sync replica's ack.

    `kafka_options` go to `AIOKafkaProducer` unchanged (security, client id, ...), except the
    delivery settings this class fixes.
    """

    def __init__(self, bootstrap_servers: str, *, linger_ms: int = 5, **kafka_options: Any) -> None:
        self._options = {
            **kafka_options,
            "bootstrap_servers": bootstrap_servers,
            "linger_ms": linger_ms,
            # aiokafka defaults to acks=1 without idempotence: a leader crash could lose an
            # acknowledged request, and a retried send could duplicate it.
            "enable_idempotence": True,
            "acks": "all",
        }
        self._producer: Any = None

    async def start(self) -> None:
        """Connect to the cluster."""
        # Created here, not in __init__, because aiokafka binds to the running event loop.
        producer = AIOKafkaProducer(**self._options)
        try:
            await producer.start()
        except BaseException as exc:
            await producer.stop()
            if isinstance(exc, KafkaError):
                raise _broker_error("cannot connect the producer", exc) from exc
            raise
        self._producer = producer

    async def stop(self) -> None:
        """Flush pending records and disconnect."""
        if self._producer is not None:
            await self._producer.stop()

    async def send(
        self, topic: str, *, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> None:
        """Send one record and wait until the broker acknowledges it."""
        if self._producer is None:
            raise ClientStateError("KafkaRecordSender is not started")
        try:
            await self._producer.send_and_wait(topic, value=value, key=key, headers=list(headers))
        except KafkaError as exc:
            raise PublishError(
                f"{topic}: record not acknowledged: {exc}", retryable=bool(exc.retriable)
            ) from exc


class KafkaCompletionSource:
    """Reads every partition of the completion topic without a consumer group.

    No offsets are committed: each reader starts from `start_from` and sees the whole topic.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        start_from: StartFrom = StartFrom.BEGINNING,
        **kafka_options: Any,
    ) -> None:
        self._topic = topic
        self._start_from = start_from
        self._options = {
            # genrelay writes its topics in transactions: see only what was committed.
            "isolation_level": "read_committed",
            **kafka_options,
            "bootstrap_servers": bootstrap_servers,
            "group_id": None,
            "enable_auto_commit": False,
            # Only used when retention removed the next record: carry on from the oldest kept.
            "auto_offset_reset": "earliest",
        }
        self._consumer: Any = None

    async def start(self) -> None:
        """Connect, take every partition of the topic and fix the start positions."""
        # Subscribing without a group assigns every partition, and any added later.
        consumer = AIOKafkaConsumer(self._topic, **self._options)
        try:
            await consumer.start()
            await self._seek(consumer)
        except BaseException as exc:
            await consumer.stop()
            if isinstance(exc, UnknownTopicOrPartitionError):
                raise BrokerError(f"topic {self._topic} does not exist", retryable=True) from exc
            if isinstance(exc, KafkaError):
                raise _broker_error(f"cannot read {self._topic}", exc) from exc
            raise
        self._consumer = consumer

    async def stop(self) -> None:
        """Disconnect."""
        if self._consumer is not None:
            await self._consumer.stop()

    async def fetch(self, timeout: float) -> Sequence[bytes]:
        """Values of the next records, waiting up to `timeout` seconds for some to arrive."""
        if self._consumer is None:
            raise ClientStateError("KafkaCompletionSource is not started")
        try:
            batches = await self._consumer.getmany(timeout_ms=int(timeout * 1000))
        except KafkaError as exc:
            raise _broker_error(f"cannot read {self._topic}", exc) from exc
        return [
            record.value
            for records in batches.values()
            for record in records
            if record.value is not None
        ]

    async def _seek(self, consumer: Any) -> None:
        # Positions are fixed now, not at the first fetch, so that with `end` the events
        # published between start() and the first wait are still seen. Each partition first
        # settles at `auto_offset_reset`: a seek made before that would be overwritten.
        try:
            async with asyncio.timeout(_POSITION_TIMEOUT_S):
                for partition in consumer.assignment():
                    await consumer.position(partition)
                if self._start_from is StartFrom.END and not await consumer.seek_to_end():
                    raise TimeoutError
        except TimeoutError:
            raise BrokerError(f"no offsets for {self._topic} in time", retryable=True) from None


async def partition_count(bootstrap: str, topic: str) -> int:
    """How many partitions `topic` has (BrokerError if it does not exist)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await producer.start()
    try:
        # Waits for the topic's metadata; an unknown topic times out.
        partitions = await asyncio.wait_for(producer.partitions_for(topic), 15)
    except (KafkaError, TimeoutError) as exc:
        raise BrokerError(f"topic {topic} is unknown: {exc!r}", retryable=False) from exc
    finally:
        await producer.stop()
    return len(partitions)


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    partition: int | None = None,
    partitions: Iterable[int] | None = None,
) -> list[Any]:
    """Every committed record of a topic (or of some of its partitions), from its beginning
    to its end as of now."""
    chosen = list(partitions) if partitions is not None else None
    if partition is not None:
        chosen = [partition]
    # Subscribing without a group assigns every partition once the consumer has started.
    # The reset policy must be "earliest" although the partitions are sought to their
    # beginning below: a freshly assigned partition is also reset by the consumer itself,
    # with this policy, and when that reset's answer arrives after `seek_to_beginning` was
    # asked for, aiokafka 0.14 applies it in the seek's place (fetcher.py,
    # `_update_fetch_positions`). With "latest" every partition then starts at its end and
    # the topic reads as empty; how often depends on timing, so it happened under load.
    consumer = AIOKafkaConsumer(
        *([topic] if chosen is None else []),
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    try:
        if chosen is not None:
            if not chosen:
                return []
            consumer.assign([TopicPartition(topic, p) for p in chosen])
        partitions = list(consumer.assignment())
        ends = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        await _check_at_beginning(consumer, partitions)
        remaining = {tp for tp in partitions if ends[tp] > 0}
        records: list[Any] = []
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=500, max_records=20_000)
            for tp, messages in batch.items():
                records.extend(m for m in messages if m.offset < ends[tp])
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return records
    finally:
        await consumer.stop()


async def _check_at_beginning(consumer: AIOKafkaConsumer, partitions: list[Any]) -> None:
    """Raise unless every partition will be read from its first record: a read that starts
    later returns fewer records without any other sign, and its figures go missing."""
    # Read after the seek: a log's start offset only moves forward.
    starts = await consumer.beginning_offsets(partitions)
    for tp in partitions:
        position = await consumer.position(tp)
        if position > starts[tp]:
            raise RuntimeError(
                f"{tp.topic}[{tp.partition}] would be read from offset {position}, "
                f"not from its beginning {starts[tp]}"
            )
