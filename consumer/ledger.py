"""The ledger: each key's full state on a compacted topic, co-partitioned with the requests.

The replica that owns requests partition *p* owns ledger partition *p*. On assignment it first
fences earlier owners (its partition writer), then reads that partition's committed records
from the beginning to their end before any of its records are dispatched; every transition is
committed, in the partition's transaction, before the side effect that depends on it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from aiokafka import AIOKafkaConsumer, TopicPartition

from genrelay.consumer.partition_writer import Outgoing, Writers
from genrelay.schemas.ledger import LedgerRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestoreStats:
    partitions: tuple[int, ...]
    records_read: int
    keys: int
    seconds: float


def _in_memory(record: LedgerRecord) -> LedgerRecord:
    """What to keep in memory of a record: a finished key needs only its fingerprint and event.

    Finished keys are the bulk of a partition (they are remembered for the dedup window), and
    their input and raw result can be large; the topic keeps the full record regardless.
    """
    if record.terminal and record.published and record.event is not None:
        return record.model_copy(update={"request": {}, "result": None})
    return record


class Ledger:
    """In-memory view of the owned ledger partitions, written through their fenced writers."""

    def __init__(self, writers: Writers, bootstrap: str, topic: str) -> None:
        self._writers = writers
        self._bootstrap = bootstrap
        self.topic = topic
        self._records: dict[str, LedgerRecord] = {}
        self._partition_of: dict[str, int] = {}

    def get(self, key: str) -> LedgerRecord | None:
        return self._records.get(key)

    def keys_in(self, partition: int) -> list[str]:
        return [k for k, p in self._partition_of.items() if p == partition]

    def __len__(self) -> int:
        return len(self._records)

    async def write(
        self, record: LedgerRecord, partition: int, *, also: tuple[Outgoing, ...] = ()
    ) -> None:
        """Commit the new state (with `also`, atomically); `Fenced` if no longer the owner."""
        key = record.idempotency_key
        value = record.model_dump_json().encode()
        state = Outgoing(self.topic, value, key.encode(), partition)
        await self._writers.get(partition).write(state, *also)
        self._records[key] = _in_memory(record)
        self._partition_of[key] = partition

    async def forget_expired(self, partition: int, window: timedelta, now: datetime) -> int:
        """Tombstone finished keys older than the dedup window; returns how many."""
        expired = [
            key
            for key in self.keys_in(partition)
            if (rec := self._records[key]).terminal
            and rec.published
            and rec.updated_at < now - window
        ]
        writer = self._writers.get(partition)
        for key in expired:
            await writer.write(Outgoing(self.topic, None, key.encode(), partition))
            self._drop(key)
        return len(expired)

    def release(self, partitions: Iterable[int]) -> None:
        """Forget the state of partitions this replica no longer owns."""
        gone = set(partitions)
        for key in [k for k, p in self._partition_of.items() if p in gone]:
            self._drop(key)

    def _drop(self, key: str) -> None:
        self._records.pop(key, None)
        self._partition_of.pop(key, None)

    async def restore(self, partitions: Iterable[int]) -> RestoreStats:
        """Read the given ledger partitions' committed records from the beginning to their end.

        Call it after the partitions' writers have started: that aborted any transaction an
        earlier owner left open, so the end read here is final for the previous owners.
        """
        wanted = [TopicPartition(self.topic, p) for p in partitions]
        if not wanted:
            return RestoreStats((), 0, 0, 0.0)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        await consumer.start()
        try:
            consumer.assign(wanted)
            return await self._restore(consumer, wanted)
        finally:
            await consumer.stop()

    async def _restore(
        self, consumer: AIOKafkaConsumer, wanted: list[TopicPartition]
    ) -> RestoreStats:
        started = time.monotonic()
        ends: dict[TopicPartition, int] = await consumer.end_offsets(wanted)
        await consumer.seek_to_beginning(*wanted)
        seen: dict[str, tuple[int, LedgerRecord | None]] = {}
        read = 0
        remaining = {tp for tp in wanted if ends[tp] > 0}
        # Compaction leaves gaps, so a partition is done by its position, not by a last offset.
        while remaining:
            # Small batches: parsing is CPU-bound, and the group's heartbeats share this loop.
            batch = await consumer.getmany(*remaining, timeout_ms=500, max_records=2_000)
            for tp, messages in batch.items():
                for message in messages:
                    if message.key is None or message.offset >= ends[tp]:
                        continue
                    read += 1
                    value = message.value
                    record = None if value is None else LedgerRecord.model_validate_json(value)
                    seen[message.key.decode()] = (tp.partition, record and _in_memory(record))
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        for key, (partition, record) in seen.items():
            if record is None:
                self._drop(key)
            else:
                self._records[key] = record
                self._partition_of[key] = partition
        keys = sum(1 for _, record in seen.values() if record is not None)
        stats = RestoreStats(
            tuple(tp.partition for tp in wanted), read, keys, time.monotonic() - started
        )
        log.info(
            "ledger partitions %s restored: %d keys from %d records in %.3f s",
            list(stats.partitions),
            stats.keys,
            stats.records_read,
            stats.seconds,
        )
        return stats
