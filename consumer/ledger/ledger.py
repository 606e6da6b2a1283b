"""The ledger: each key's full state on a compacted topic, co-partitioned with the requests.

The replica that owns requests partition *p* owns ledger partition *p*. On assignment it first
fences earlier owners (its partition writer), then reads that partition's committed records
before any of its records are dispatched; every transition is committed, in the partition's
transaction, before the side effect that depends on it.

Memory holds the open keys. Finished keys (the bulk of the dedup window) live in the
partition's local state store, which also lets a replica that owns the partition again read
only the ledger's tail (see `state_store`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition

from genrelay.consumer.ledger.packed import pack, unpacked
from genrelay.consumer.ledger.partition_writer import Outgoing, Writers
from genrelay.consumer.ledger.spend import SpendBook
from genrelay.consumer.ledger.state_store import PartitionStore, StoredState
from genrelay.schemas.ledger import TERMINAL_PHASES, LedgerRecord, Phase

log = logging.getLogger(__name__)

_TERMINAL = frozenset(phase.value for phase in TERMINAL_PHASES)
# Each ledger record says in headers whether its key is finished and when it last changed, so
# a restore sorts records without parsing their values (which user data makes large).
FINISHED_HEADER = "genrelay-finished"
UPDATED_HEADER = "genrelay-updated"
# Records fetched per batch while reading the topic (the group's heartbeats share the loop),
# and finished states gathered before the store writes them in one transaction on a thread.
# Small store batches keep little in memory (a 20,000 batch left 130 MB of freed but held
# heap after 1,000,000 keys, a 2,000 one 55 MB) at no cost in speed.
_BATCH = 2_000
_STORE_BATCH = 2_000
# Open keys' states kept parsed, the most recently used: a replica's keys in use at once (its
# in-flight limit) fit, so they are not parsed again and again (about 15 µs each).
_PARSED = 4_096


@dataclass(frozen=True)
class RestoreStats:
    partitions: tuple[int, ...]
    records_read: int
    keys: int
    seconds: float
    # Partitions read from a checkpoint (only their tail) rather than from the beginning.
    from_checkpoint: tuple[int, ...] = ()


@dataclass
class _Reading:
    """One partition being read: open keys as raw states (parsed at the end), store batches."""

    store: PartitionStore
    end: int
    open_values: dict[str, bytes] = field(default_factory=dict)
    finished: dict[str, StoredState] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    # The batch the store is writing on a thread meanwhile (one at a time, in order).
    writing: asyncio.Future[None] | None = None

    def apply(
        self, key: str, value: bytes | None, headers: Sequence[tuple[str, bytes]] = ()
    ) -> None:
        if value is None:
            self.open_values.pop(key, None)
            self.finished.pop(key, None)
            self.deleted.add(key)
            return
        finished, updated = _classify(value, headers)
        if finished:
            self.open_values.pop(key, None)
            self.deleted.discard(key)
            self.finished[key] = StoredState(key, updated, True, value)
        else:
            self.finished.pop(key, None)
            self.deleted.discard(key)
            self.open_values[key] = value

    async def flush(self, *, unless_below: int = 0) -> None:
        """Hand what was gathered to the store, once at least `unless_below` states are.

        The store writes on a thread while reading goes on (SQLite's work, mostly copying
        pages into the file, holds no GIL): a rebuild takes the longer of the two, not both.
        """
        if len(self.finished) + len(self.deleted) < unless_below:
            return
        await self.written()
        deleted, finished = list(self.deleted), list(self.finished.values())
        self.deleted.clear()
        self.finished.clear()
        self.writing = asyncio.ensure_future(
            asyncio.to_thread(self.store.replace, deleted, finished)
        )

    async def written(self) -> None:
        if self.writing is not None:
            writing, self.writing = self.writing, None
            await writing


def _classify(value: bytes, headers: Sequence[tuple[str, bytes]]) -> tuple[bool, float]:
    """Whether a state is finished, and when it changed: from its headers when it has them."""
    if len(headers) == 2:
        (first, done), (second, updated) = headers
        if first == FINISHED_HEADER and second == UPDATED_HEADER:  # as `state_headers` puts them
            return done == b"1", float(updated)
    found = dict(headers)
    if FINISHED_HEADER in found and UPDATED_HEADER in found:
        return found[FINISHED_HEADER] == b"1", float(found[UPDATED_HEADER])
    state = json.loads(value)
    finished = state["phase"] in _TERMINAL and bool(state.get("published"))
    return finished, datetime.fromisoformat(state["updated_at"]).timestamp()


def state_headers(finished: bool, updated: float) -> tuple[tuple[str, bytes], ...]:
    return ((FINISHED_HEADER, b"1" if finished else b"0"), (UPDATED_HEADER, repr(updated).encode()))


def _finished(record: LedgerRecord) -> bool:
    return record.terminal and record.published


class _Open(NamedTuple):
    """An open key as memory holds it: its state as written (its JSON, about 1 KB, packed to
    about 200 bytes once the key is idle, where the parsed record takes about 5 KB), and what
    is asked of every open key without reading the state."""

    held: bytes
    partition: int
    phase: Phase
    finished: bool
    updated: float


class Ledger:
    """The owned ledger partitions: open keys in memory, finished keys in local stores.

    Open keys are held as the bytes written, and the states of the keys in use lately also
    parsed (`_PARSED` of them); a key that falls out of those is packed (`packed`): a key
    waiting for its webhook costs its packed bytes alone.
    """

    def __init__(
        self,
        writers: Writers,
        bootstrap: str,
        topic: str,
        state_dir: Path,
        spend: SpendBook | None = None,
    ) -> None:
        self._writers = writers
        self.spend = spend
        self._bootstrap = bootstrap
        self.topic = topic
        self._state_dir = state_dir
        self._open: dict[str, _Open] = {}
        self._parsed: OrderedDict[str, LedgerRecord] = OrderedDict()
        self._stores: dict[int, PartitionStore] = {}
        self._next_offset: dict[int, int] = {}

    def get(self, key: str, partition: int | None = None) -> LedgerRecord | None:
        """The key's state; `partition`, the key's own, spares a look into every other store."""
        record = self._open_record(key)
        if record is not None:
            return record
        if partition is not None:
            store = self._stores.get(partition)
            stores = [] if store is None else [store]
        else:
            stores = list(self._stores.values())
        for store in stores:
            value = store.get(key)
            if value is not None:
                return LedgerRecord.model_validate_json(value)
        return None

    def _open_record(self, key: str) -> LedgerRecord | None:
        record = self._parsed.get(key)
        if record is not None:
            self._parsed.move_to_end(key)
            return record
        held = self._open.get(key)
        if held is None:
            return None
        record = LedgerRecord.model_validate_json(unpacked(held.held))
        self._keep_parsed(key, record)
        return record

    def _keep_parsed(self, key: str, record: LedgerRecord) -> None:
        self._parsed[key] = record
        self._parsed.move_to_end(key)
        if len(self._parsed) > _PARSED:
            idle, _ = self._parsed.popitem(last=False)
            if (held := self._open.get(idle)) is not None:
                self._open[idle] = held._replace(held=pack(held.held))

    def is_open(self, key: str) -> bool:
        """Whether the key has a state that is not finished and announced (held in memory)."""
        held = self._open.get(key)
        return held is not None and not held.finished

    def phase(self, key: str) -> Phase | None:
        """An open key's phase (None for keys not held in memory), without parsing its state."""
        held = self._open.get(key)
        return None if held is None else held.phase

    def keys_in(self, partition: int) -> list[str]:
        """The open keys of a partition."""
        return [k for k, held in self._open.items() if held.partition == partition]

    def __len__(self) -> int:
        return len(self._open) + sum(store.count() for store in self._stores.values())

    @property
    def open_keys(self) -> int:
        return len(self._open)

    @property
    def parsed_keys(self) -> int:
        """Open keys whose state is also held parsed (at most `_PARSED`)."""
        return len(self._parsed)

    def held_bytes(self) -> int:
        """The bytes of the open keys' states as held (packed for idle keys); counts them all."""
        return sum(len(held.held) for held in self._open.values())

    async def write(
        self, record: LedgerRecord, partition: int, *, also: tuple[Outgoing, ...] = ()
    ) -> None:
        """Commit the new state (with `also`, atomically); `Fenced` if no longer the owner."""
        key = record.idempotency_key
        # Fields at their defaults (most are None most of the time) are left out: a third of
        # an in-flight key's bytes, in memory, on the topic and in the store.
        value = record.model_dump_json(exclude_defaults=True).encode()
        finished, updated = _finished(record), record.updated_at.timestamp()
        headers = state_headers(finished, updated)
        state = Outgoing(self.topic, value, key.encode(), partition, headers)
        # What the key counts against its budget moves with its state, in one transaction.
        charge = (
            None
            if self.spend is None
            else self.spend.charge(self._open_record(key), record, partition)
        )
        spent = charge.records if charge is not None else ()
        try:
            offsets = await self._writers.get(partition).write(state, *also, *spent)
        except BaseException:
            if charge is not None:
                charge.undo()
            raise
        self._advance(partition, offsets[0] + 1)
        if finished and (store := self._stores.get(partition)) is not None:
            store.put_many([StoredState(key, updated, True, value)])
            self._forget(key)
        else:
            self._open[key] = _Open(value, partition, record.phase, finished, updated)
            self._keep_parsed(key, record)

    def _advance(self, partition: int, next_offset: int) -> None:
        self._next_offset[partition] = max(self._next_offset.get(partition, 0), next_offset)

    async def forget_expired(self, partition: int, window: timedelta, now: datetime) -> int:
        """Tombstone finished keys older than the dedup window; returns how many."""
        store = self._stores.get(partition)
        if store is None:
            return 0
        writer = self._writers.get(partition)
        forgotten = 0
        while expired := store.finished_before((now - window).timestamp()):
            offsets = await writer.write(
                *(Outgoing(self.topic, None, key.encode(), partition) for key in expired)
            )
            self._advance(partition, max(offsets) + 1)
            store.delete_many(expired)
            forgotten += len(expired)
        return forgotten

    def release(self, partitions: Iterable[int]) -> None:
        """Let partitions go: their stores keep every key and a checkpoint for next time."""
        partitions = set(partitions)
        if self.spend is not None:
            self.spend.release(partitions)
        for partition in partitions:
            keys = self.keys_in(partition)
            store = self._stores.pop(partition, None)
            if store is not None:
                held = [(k, self._open[k]) for k in keys]
                store.put_many(
                    [StoredState(k, h.updated, h.finished, unpacked(h.held)) for k, h in held]
                )
                if (offset := self._next_offset.pop(partition, None)) is not None:
                    store.checkpoint(offset)
                store.close()
            for key in keys:
                self._forget(key)

    def _forget(self, key: str) -> None:
        self._open.pop(key, None)
        self._parsed.pop(key, None)

    def _store(self, partition: int) -> PartitionStore:
        path = self._state_dir / f"{self.topic}-{partition}.sqlite"
        return PartitionStore(path, self.topic, partition)

    async def restore(self, partitions: Iterable[int]) -> RestoreStats:
        """Read the given ledger partitions' committed records: from their store's checkpoint
        when it has one, else from the beginning, to their end.

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
        starts: dict[TopicPartition, int] = await consumer.beginning_offsets(wanted)
        readings: dict[TopicPartition, _Reading] = {}
        tails: list[int] = []
        for tp in wanted:
            store = self._stores.pop(tp.partition, None) or self._store(tp.partition)
            checkpoint = store.open()
            usable = checkpoint is not None and starts[tp] <= checkpoint.next_offset <= ends[tp]
            reading = readings[tp] = _Reading(store, ends[tp])
            if checkpoint is not None and usable:
                tails.append(tp.partition)
                reading.open_values.update(
                    (LedgerRecord.model_validate_json(v).idempotency_key, v)
                    for v in store.open_states()
                )
                consumer.seek(tp, checkpoint.next_offset)
            else:
                store.clear()  # nothing in it can be trusted: rebuild it from the topic
                # An explicit offset: `seek_to_beginning` waits for the fetcher's next round
                # (about 0.5 s) once per call, 6 s for 12 partitions. A start that compaction
                # moved on since is reset to the new one by the "earliest" policy.
                consumer.seek(tp, starts[tp])
        read = await self._read(consumer, readings)
        if self.spend is not None:
            await self.spend.load(tp.partition for tp in wanted)
        for reading in readings.values():
            await reading.flush()
            await reading.written()
        # Indexing a rebuilt store holds SQLite, not the GIL: off the loop, partitions at once.
        await asyncio.gather(*(asyncio.to_thread(r.store.settle) for r in readings.values()))
        keys = 0
        for tp, reading in readings.items():
            for key, value in reading.open_values.items():
                record = LedgerRecord.model_validate_json(value)
                updated = record.updated_at.timestamp()
                self._open[key] = _Open(
                    pack(value), tp.partition, record.phase, _finished(record), updated
                )
            self._stores[tp.partition] = reading.store
            self._next_offset[tp.partition] = ends[tp]
            keys += len(reading.open_values) + reading.store.count()
        stats = RestoreStats(
            tuple(tp.partition for tp in wanted),
            read,
            keys,
            time.monotonic() - started,
            tuple(tails),
        )
        log.info(
            "ledger partitions %s restored (%s from a checkpoint): %d keys from %d records "
            "in %.3f s",
            list(stats.partitions),
            list(stats.from_checkpoint),
            stats.keys,
            stats.records_read,
            stats.seconds,
        )
        return stats

    async def _read(
        self, consumer: AIOKafkaConsumer, readings: dict[TopicPartition, _Reading]
    ) -> int:
        read = 0
        remaining = {tp for tp, r in readings.items() if await consumer.position(tp) < r.end}
        # Compaction leaves gaps, so a partition is done by its position, not by a last offset.
        while remaining:
            # Small batches: parsing is CPU-bound, and the group's heartbeats share this loop.
            batch = await consumer.getmany(*remaining, timeout_ms=500, max_records=_BATCH)
            for tp, messages in batch.items():
                reading = readings[tp]
                end, apply = reading.end, reading.apply
                for message in messages:
                    if (key := message.key) is not None and message.offset < end:
                        apply(key.decode(), message.value, message.headers)
                        read += 1
                await reading.flush(unless_below=_STORE_BATCH)
            for tp in list(remaining):
                if await consumer.position(tp) >= readings[tp].end:
                    remaining.discard(tp)
        return read
