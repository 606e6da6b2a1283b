"""Fenced writes for one owned partition, committed in Kafka transactions.

Everything the owner of partition *p* writes (ledger transitions, completion and progress
events, dead letters, re-keyed records) and the input offsets it has consumed from requests
*p* and webhooks *p* go through one transactional producer whose id is derived from the group
and *p*. Initialising that id fences every earlier owner: the broker aborts its open
transaction and refuses everything it sends afterwards, so a paused or cut-off replica that
has not noticed it lost *p* can change nothing. A write counts only once its transaction has
committed; callers wait for that before any effect that depends on it (the paid POST above
all). Writes that come while a transaction commits queue for a short tick and commit
together, so under load a transaction carries many; a write after a quiet spell commits at once.

The new owner starts its writer (fencing) before it reads the ledger, and reads committed data
only, so a write abandoned by the old owner can never appear behind the state it restored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    IllegalOperation,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    TransactionalIdAuthorizationFailed,
)
from aiokafka.structs import OffsetAndMetadata

from genrelay.consumer.errors import Fenced, RecordTooLarge
from genrelay.consumer.service import failpoints

log = logging.getLogger(__name__)

_FIRST_PAUSE = 0.1
_LONGEST_PAUSE = 5.0
# The broker ends a transaction left open longer than this; ours last milliseconds.
_TRANSACTION_TIMEOUT_MS = 60_000
# After these, the producer can never commit again under this epoch.
_FATAL = (ProducerFenced, OutOfOrderSequenceNumber, TransactionalIdAuthorizationFailed)
# Record and batch headers: a record needs this much room beyond its key, value and headers.
_RECORD_OVERHEAD = 128
# The producer's default `max.request.size`, which a record (with its overhead) must fit.
MAX_REQUEST_SIZE = 1024 * 1024
MAX_RECORD_BYTES = MAX_REQUEST_SIZE - _RECORD_OVERHEAD


@dataclass(frozen=True)
class Outgoing:
    """One record to produce."""

    topic: str
    value: bytes | None
    key: bytes | None
    partition: int | None = None
    headers: tuple[tuple[str, bytes], ...] = ()

    def size(self) -> int:
        """Bytes the record adds to a batch, close enough to compare with the broker's limit."""
        extra = sum(len(name) + len(value) for name, value in self.headers)
        return len(self.key or b"") + len(self.value or b"") + extra + _RECORD_OVERHEAD


@dataclass
class _Batch:
    records: Sequence[Outgoing]
    future: asyncio.Future[tuple[int, ...]]  # the records' offsets, once committed
    # Runs just before the transaction is built: the input offsets it finishes then commit
    # in the same transaction as the records (a dead letter and its offset, atomically).
    finishes: Callable[[], None] | None = None
    queued_at: float = field(default_factory=time.monotonic)


def transactional_id(group_id: str, partition: int) -> str:
    """The id every owner of `partition` in `group_id` uses, so each new one fences the last."""
    return f"{group_id}.partition-{partition}"


@dataclass
class WriterStats:
    transactions: int = 0
    records: int = 0
    retries: int = 0
    # Recent transactions: seconds from begin to commit, and batches' wait before their start.
    commit_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=2000))
    queued_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=2000))

    def summary(self) -> str:
        def p(values: deque[float], q: float) -> float:
            ordered = sorted(values)
            return ordered[int(q * (len(ordered) - 1))] * 1000 if ordered else 0.0

        return (
            f"{self.transactions} transactions, {self.records} records, {self.retries} retries; "
            f"commit p50 {p(self.commit_seconds, 0.5):.1f} ms"
            f" p99 {p(self.commit_seconds, 0.99):.1f} ms;"
            f" queued p50 {p(self.queued_seconds, 0.5):.1f} ms"
            f" p99 {p(self.queued_seconds, 0.99):.1f} ms"
        )


class PartitionWriter:
    """The only way this replica writes anything for one owned partition."""

    def __init__(
        self,
        *,
        bootstrap: str,
        group_id: str,
        partition: int,
        offsets: Callable[[], dict[TopicPartition, int]],
        on_lost: Callable[[int, BaseException], None],
        tick_seconds: float = 0.02,
        max_request_size: int = MAX_REQUEST_SIZE,
    ) -> None:
        self.partition = partition
        self._group_id = group_id
        self._offsets = offsets
        self._on_lost = on_lost
        self._tick = tick_seconds
        self._max_record_bytes = max_request_size - _RECORD_OVERHEAD
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            transactional_id=transactional_id(group_id, partition),
            transaction_timeout_ms=_TRANSACTION_TIMEOUT_MS,
            enable_idempotence=True,
            acks="all",
            max_request_size=max_request_size,
            # A transaction that starts while the last one's markers are still being written
            # is answered "concurrent transactions" and retried after this: not 100 ms.
            retry_backoff_ms=5,
        )
        self._pending: list[_Batch] = []
        self._wakeup = asyncio.Event()
        self._committed: dict[TopicPartition, int] = {}
        # Offsets ride along only when asked (each commit interval) or when a batch finishes
        # input records: adding them costs a transaction two more round trips.
        self._offsets_wanted = False
        self._last_began = -tick_seconds  # when the last transaction began (monotonic)
        self._task: asyncio.Task[None] | None = None
        self._broken: BaseException | None = None
        self._closing = False
        self.stats = WriterStats()

    async def start(self) -> None:
        """Initialise the transactional id: from here on, no earlier owner can commit."""
        await self._producer.start()
        self._task = asyncio.get_running_loop().create_task(
            self._loop(), name=f"writer-{self.partition}"
        )
        self._task.add_done_callback(self._loop_ended)

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or (exc := task.exception()) is None:
            return
        # A writer that cannot commit cannot prove ownership: its keys must stop.
        log.error("partition %d: writer failed", self.partition, exc_info=exc)
        if self._broken is None:
            self._lose([], exc)

    @property
    def usable(self) -> bool:
        return self._broken is None and not self._closing

    def submit(
        self, records: Sequence[Outgoing], *, finishes: Callable[[], None] | None = None
    ) -> asyncio.Future[tuple[int, ...]]:
        """Queue records for the next transaction; the future gives their offsets once it has
        committed."""
        future: asyncio.Future[tuple[int, ...]] = asyncio.get_running_loop().create_future()
        # A caller that does not wait (progress, a dead letter) must not leave an error unread.
        future.add_done_callback(_consume_error)
        if not self.usable:
            future.set_exception(Fenced(self.partition, self._why()))
            return future
        too_big = [r for r in records if r.size() > self._max_record_bytes]
        if too_big:
            # Refused here, alone: inside the transaction it would fail every write with it.
            future.set_exception(RecordTooLarge(too_big[0].topic, too_big[0].size()))
            return future
        self._pending.append(_Batch(records, future, finishes))
        self._wakeup.set()
        return future

    async def write(self, *records: Outgoing) -> tuple[int, ...]:
        """Produce `records` atomically and wait until their transaction has committed;
        returns their offsets."""
        return await self.submit(records)

    def nudge(self) -> None:
        """Commit consumed offsets with the next transaction (or alone, if none is due)."""
        self._offsets_wanted = True
        self._wakeup.set()

    async def close(self) -> None:
        """Commit what is queued (unless fenced), then stop; safe to call twice."""
        if self._closing:
            return
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._fail_pending(Fenced(self.partition, "the writer was closed"))
        await self._producer.stop()
        log.info("partition %d writer closed: %s", self.partition, self.stats.summary())

    def _why(self) -> str:
        if self._broken is not None:
            return f"its transactional producer was fenced ({self._broken!r})"
        return "the writer was closed"

    # --- the commit loop ------------------------------------------------------------------

    async def _loop(self) -> None:
        pause = _FIRST_PAUSE
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._closing and not self._pending and not self._offsets_due():
                return
            # At most one transaction per tick: a write after a quiet spell commits at once,
            # writes that come while one commits wait for the tick and commit together.
            if (wait := self._last_began + self._tick - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            self._last_began = time.monotonic()
            batches, self._pending = self._pending, []
            try:
                committed = await self._commit(batches)
            except _FATAL as exc:
                self._lose(batches, exc)
                return
            except (KafkaError, IllegalOperation) as exc:
                if self._producer._txn_manager.is_fatal_error():
                    self._lose(batches, exc)
                    return
                await self._abort()
                self.stats.retries += 1
                log.warning(
                    "transaction of partition %d not committed, retrying in %.1f s: %r",
                    self.partition,
                    pause,
                    exc,
                )
                self._pending = batches + self._pending
                self._wakeup.set()
                await asyncio.sleep(pause)
                pause = min(_LONGEST_PAUSE, pause * 2)
                continue
            pause = _FIRST_PAUSE
            for batch, offsets in zip(batches, committed, strict=True):
                if not batch.future.done():
                    batch.future.set_result(offsets)
            if self._closing and not self._pending:
                return

    def _offsets_due(self) -> dict[TopicPartition, int]:
        return {tp: o for tp, o in self._offsets().items() if self._committed.get(tp) != o}

    async def _commit(self, batches: list[_Batch]) -> list[tuple[int, ...]]:
        for batch in batches:
            if batch.finishes is not None:
                batch.finishes()
                batch.finishes = None  # once, even if this transaction has to be retried
                self._offsets_wanted = True
        offsets = self._offsets_due() if self._offsets_wanted or self._closing else {}
        if not batches and not offsets:
            return []
        producer = self._producer
        began = time.monotonic()
        self.stats.queued_seconds.extend(began - batch.queued_at for batch in batches)
        await producer.begin_transaction()
        sent: list[asyncio.Future[Any]] = []
        for batch in batches:
            for r in batch.records:
                sent.append(
                    await producer.send(
                        r.topic, r.value, key=r.key, partition=r.partition, headers=list(r.headers)
                    )
                )
        if offsets:
            await producer.send_offsets_to_transaction(
                {tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()}, self._group_id
            )
        try:
            await producer.commit_transaction()
            failpoints.reached("after_commit")
            # Resolved by the commit; raises if a record was refused.
            written = iter([(await delivery).offset for delivery in sent])
        finally:
            for delivery in sent:
                delivery.add_done_callback(_consume_error)
        self._committed.update(offsets)
        if offsets:
            self._offsets_wanted = False
        self.stats.commit_seconds.append(time.monotonic() - began)
        self.stats.transactions += 1
        self.stats.records += len(sent)
        return [tuple(next(written) for _ in batch.records) for batch in batches]

    async def _abort(self) -> None:
        with contextlib.suppress(KafkaError, IllegalOperation, AssertionError):
            await self._producer.abort_transaction()

    def _lose(self, batches: list[_Batch], exc: BaseException) -> None:
        log.warning("partition %d: transactional producer fenced: %r", self.partition, exc)
        self._broken = exc
        # aiokafka leaves the same error on its transaction waiter
        # (and on each unsent batch's drain waiter), which nobody awaits now.
        internal = [self._producer._txn_manager.wait_for_transaction_end()]
        for queued in getattr(self._producer._message_accumulator, "_batches", {}).values():
            internal += [getattr(batch, "_drain_waiter", None) for batch in queued]
        for waiter in internal:
            if isinstance(waiter, asyncio.Future) and waiter.done():
                _consume_error(waiter)
        self._pending = batches + self._pending
        self._fail_pending(Fenced(self.partition, self._why()))
        self._on_lost(self.partition, exc)

    def _fail_pending(self, error: Fenced) -> None:
        pending, self._pending = self._pending, []
        for batch in pending:
            if not batch.future.done():
                batch.future.set_exception(error)


def _consume_error(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


@dataclass
class Writers:
    """The writers of the partitions this replica currently owns."""

    _by_partition: dict[int, PartitionWriter] = field(default_factory=dict)
    # Transactions and records committed by writers already let go (for the totals).
    _retired: tuple[int, int] = (0, 0)

    def add(self, writer: PartitionWriter) -> None:
        self._by_partition[writer.partition] = writer

    def pop(self, partition: int) -> PartitionWriter | None:
        writer = self._by_partition.pop(partition, None)
        if writer is not None:
            transactions, records = self._retired
            self._retired = (
                transactions + writer.stats.transactions,
                records + writer.stats.records,
            )
        return writer

    def committed(self) -> tuple[int, int]:
        """Transactions committed by this replica's writers so far, and the records in them."""
        transactions, records = self._retired
        for writer in self._by_partition.values():
            transactions += writer.stats.transactions
            records += writer.stats.records
        return transactions, records

    def get(self, partition: int) -> PartitionWriter:
        """The partition's writer; `Fenced` when this replica does not own it."""
        writer = self._by_partition.get(partition)
        if writer is None or not writer.usable:
            raise Fenced(partition, "not owned by this replica")
        return writer

    def usable(self, partition: int) -> bool:
        writer = self._by_partition.get(partition)
        return writer is not None and writer.usable

    def all(self) -> list[PartitionWriter]:
        return list(self._by_partition.values())
