"""What each tenant has spent in each budget period, as every replica needs to know it.

Each key's ledger state says what it counts against its tenant's budget (`charged_usd`: the
estimate reserved with its `SUBMITTING` commit, its cost once it ended). Per partition, the
sum of those is a spend record (`genrelay.spend`, co-partitioned, compacted) that the owner
writes **in the same transaction** as the states that change it: fenced like them, and never
out of step with them. So:

- a partition's owner keeps its partitions' totals exactly (`charge`), and reads them back
  from the spend topic when it takes a partition over (`load`, after fencing, like the
  ledger);
- every replica follows the spend topic for the partitions others own (`follow`);
- a verdict counts the keys granted here but not yet committed (`hold`).

A replica sees another's reservations once they are committed and read: a budget can be
overshot by at most what other replicas reserve for the tenant within that lag.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from genrelay.consumer.ledger.partition_writer import Outgoing
from genrelay.producers.kafka import read_topic
from genrelay.schemas.base import from_json_bytes, to_json_bytes
from genrelay.schemas.budgets import SpendRecord, spend_key
from genrelay.schemas.ledger import LedgerRecord

log = logging.getLogger(__name__)

# (tenant, period start), e.g. ("shop", "2026-12")
Account = tuple[str, str]


@dataclass(frozen=True)
class Charge:
    """The spend records to commit with a state, and how to take the change back if the
    commit fails."""

    records: tuple[Outgoing, ...]
    undo: Callable[[], None]


def _account(record: LedgerRecord | None) -> tuple[Account, float] | None:
    if record is None or record.charged_usd is None or record.budget_period is None:
        return None
    return (record.request.tenant or "", record.budget_period), record.charged_usd


class SpendBook:
    """Spend per tenant and period, over every partition."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._bootstrap = bootstrap
        self.topic = topic
        self._own: dict[int, dict[Account, float]] = {}
        self._others: dict[int, dict[Account, float]] = {}
        self._held: dict[Account, float] = {}
        self.on_change: Callable[[], None] = lambda: None
        self.caught_up = asyncio.Event()

    def total(self, account: Account) -> float:
        """Committed here, read from the others' partitions, and held for keys being posted."""
        own = sum(spent.get(account, 0.0) for spent in self._own.values())
        others = sum(
            spent.get(account, 0.0) for p, spent in self._others.items() if p not in self._own
        )
        return own + others + self._held.get(account, 0.0)

    def hold(self, account: Account, usd: float) -> Callable[[], None]:
        """Count `usd` until the returned function is called (once its state is committed)."""
        self._held[account] = self._held.get(account, 0.0) + usd
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._held[account] -= usd
                if self._held[account] <= 1e-12:
                    del self._held[account]

        return release

    def charge(
        self, before: LedgerRecord | None, after: LedgerRecord, partition: int
    ) -> Charge | None:
        """The spend records to write with `after`, when its charge differs from `before`'s;
        the partition's totals change now."""
        old, new = _account(before), _account(after)
        if old == new:
            return None
        totals = self._own.setdefault(partition, {})
        changes: dict[Account, float] = {}
        if old is not None:
            changes[old[0]] = changes.get(old[0], 0.0) - old[1]
        if new is not None:
            changes[new[0]] = changes.get(new[0], 0.0) + new[1]
        for account, delta in changes.items():
            totals[account] = totals.get(account, 0.0) + delta
        now = datetime.now(UTC)
        records = tuple(
            self._record(partition, account, totals[account], now) for account in changes
        )

        def undo() -> None:
            for account, delta in changes.items():
                totals[account] = totals.get(account, 0.0) - delta

        return Charge(records, undo)

    def _record(self, partition: int, account: Account, usd: float, now: datetime) -> Outgoing:
        tenant, start = account
        record = SpendRecord(
            tenant=tenant,
            period_start=start,
            partition=partition,
            usd=round(usd, 9),
            updated_at=now,
        )
        return Outgoing(self.topic, to_json_bytes(record), spend_key(tenant, start), partition)

    async def load(self, partitions: Iterable[int]) -> None:
        """Read taken-over partitions' committed totals (after fencing: they are final)."""
        wanted = list(partitions)
        totals: dict[int, dict[Account, float]] = {p: {} for p in wanted}
        for message in await read_topic(self._bootstrap, self.topic, partitions=wanted):
            _apply(totals[message.partition], message.value)
        self._own.update(totals)

    def release(self, partitions: Iterable[int]) -> None:
        """Partitions given up: their totals are now another replica's, as last known here."""
        for partition in partitions:
            if (totals := self._own.pop(partition, None)) is not None:
                self._others[partition] = totals

    async def follow(self) -> None:
        """Keep the other partitions' totals up to date, until cancelled (`caught_up` is set
        once everything committed before the start was read)."""
        await follow_topic(self._bootstrap, self.topic, self._read, self.caught_up)

    def _read(self, partition: int, key: bytes | None, value: bytes | None) -> None:
        _apply(self._others.setdefault(partition, {}), value)
        self.on_change()


def _apply(totals: dict[Account, float], value: bytes | None) -> None:
    if value is None:
        return  # a tombstone: nothing to subtract, the key's period is over
    try:
        record = from_json_bytes(SpendRecord, value)
    except ValidationError:
        log.warning("an unreadable spend record was skipped")
        return
    totals[(record.tenant, record.period_start)] = record.usd


async def follow_topic(
    bootstrap: str,
    topic: str,
    read: Callable[[int, bytes | None, bytes | None], None],
    caught_up: asyncio.Event,
) -> None:
    """Read every partition of a (small, compacted) topic from its beginning and go on
    reading, committed records only, until cancelled; a broker outage is waited out."""
    pause = 0.5
    while True:
        # Subscribed without a group: every partition is assigned once it has started.
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        try:
            await consumer.start()
            await _read_on(consumer, topic, read, caught_up)
        except KafkaError as exc:
            log.warning("reading %s failed, retrying: %r", topic, exc)
            await asyncio.sleep(pause)
            pause = min(10.0, pause * 2)
        finally:
            await consumer.stop()


async def _read_on(
    consumer: AIOKafkaConsumer,
    topic: str,
    read: Callable[[int, bytes | None, bytes | None], None],
    caught_up: asyncio.Event,
) -> None:
    partitions = list(consumer.assignment())
    if not partitions:
        raise KafkaError(f"topic {topic} has no partitions")
    await consumer.seek_to_beginning(*partitions)
    ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
    while True:
        if not caught_up.is_set():
            positions = {tp: await consumer.position(tp) for tp in partitions}
            if all(positions[tp] >= end for tp, end in ends.items()):
                caught_up.set()
        batches = await consumer.getmany(timeout_ms=500)
        for tp, messages in batches.items():
            for message in messages:
                read(tp.partition, message.key, message.value)
