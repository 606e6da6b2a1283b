"""Owning partitions: taking them over off the rebalance path, fenced, and giving them up.

The rebalance callbacks only record what changed and return at once, so heartbeats never stop
for a restore however large the ledger. A newly assigned partition is paused and *restoring*:
its writer is started first (that fences every earlier owner), then its committed ledger is
read, its input positions are set to the offsets committed with that state, its open keys
resume, and only then does it read input again (*ready*). A partition that stays assigned
across a rebalance keeps its state, its writer and its position: nothing is read again.
A partition that leaves, or whose writer is fenced, stops its keys and forgets them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError

from genrelay.consumer.dispatch.jobs import Jobs
from genrelay.consumer.intake.offsets import PartitionOffsets
from genrelay.consumer.ledger.ledger import Ledger, RestoreStats
from genrelay.consumer.ledger.partition_writer import PartitionWriter, Writers
from genrelay.consumer.service.metrics import RelayMetrics
from genrelay.consumer.service.topics import TopicLayoutError
from genrelay.schemas.topics import Topics

log = logging.getLogger(__name__)


class State(Enum):
    RESTORING = "restoring"
    RESTORED = "restored"  # fenced and read, but a rebalance came before it could be positioned
    READY = "ready"
    LOST = "lost"  # fenced while assigned: waits for the group to say whose it is


@dataclass(frozen=True)
class OwnershipConfig:
    bootstrap: str
    group_id: str
    release_grace: float
    # How long a fenced partition that is still assigned waits before taking itself back:
    # longer than the group needs to expel a member that was really replaced.
    lost_wait: float
    max_record_bytes: int


class Ownership:
    """The co-partitioned partitions (requests *p*, webhooks *p*, ledger *p*) this replica owns."""

    def __init__(
        self,
        config: OwnershipConfig,
        topics: Topics,
        *,
        ledger: Ledger,
        jobs: Jobs,
        writers: Writers,
        metrics: RelayMetrics,
        on_change: Callable[[], None],
        on_crash: Callable[[BaseException], None],
    ) -> None:
        self._config = config
        self._topics = topics
        self._ledger = ledger
        self._jobs = jobs
        self._writers = writers
        self._metrics = metrics
        self._on_change = on_change
        self._on_crash = on_crash
        self._consumer: AIOKafkaConsumer | None = None
        self._states: dict[int, State] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._leaving: dict[int, asyncio.Task[None]] = {}
        self.offsets: dict[TopicPartition, PartitionOffsets] = {}
        # The co-partitioned topics' partition count, as found when the replica started.
        self.partition_count = 0
        self._generation: int | None = None
        self.stable = False
        self.rebalances = 0
        self.last_callback_seconds = 0.0
        self.last_restore: RestoreStats | None = None

    def attach(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer

    # --- what the relay asks --------------------------------------------------------------

    def ready(self, partition: int) -> bool:
        return self._states.get(partition) is State.READY

    def owned(self) -> tuple[int, ...]:
        return tuple(sorted(p for p, s in self._states.items() if s is State.READY))

    def restoring(self) -> tuple[int, ...]:
        return tuple(sorted(p for p, s in self._states.items() if s is not State.READY))

    def all_ready(self) -> bool:
        """A stable member of the group whose every assigned partition is ready."""
        return self.stable and all(s is State.READY for s in self._states.values())

    def tracker(self, tp: TopicPartition) -> PartitionOffsets:
        return self.offsets.setdefault(tp, PartitionOffsets())

    def keyed(self, partition: int) -> tuple[TopicPartition, TopicPartition]:
        return (
            TopicPartition(self._topics.requests, partition),
            TopicPartition(self._topics.webhooks, partition),
        )

    # --- rebalance callbacks: bookkeeping only, never I/O ---------------------------------

    def revoked(self, revoked: set[TopicPartition]) -> None:
        # Eager rebalancing revokes everything; what comes back is kept on assignment. Until
        # then nothing changes: a partition that moves is fenced by its next owner.
        self.stable = False
        self._on_change()

    def assigned(self, assigned: set[TopicPartition]) -> None:
        started = time.perf_counter()
        consumer = self._consumer
        assert consumer is not None
        if grown := self._grown(assigned):
            # Keys would hash to other partitions than their ledger state: stop taking input.
            consumer.pause(*assigned)
            self._on_crash(grown)
            return
        mine = {tp.partition for tp in assigned if tp.topic == self._topics.requests}
        if self._missed_a_generation(consumer):
            # Expelled (paused, cut off) while the group went on: whatever this replica holds
            # may have had another owner since. Take everything over again from the topic.
            for partition in [p for p, s in self._states.items() if s is not State.LOST]:
                self._leave(partition)
        for partition in [p for p, s in self._states.items() if s is State.LOST]:
            # Fenced earlier: the group has now said whose it is.
            del self._states[partition]
            if (task := self._tasks.pop(partition, None)) is not None:
                task.cancel()
        for partition in sorted(mine & set(self._states)):
            if self._states[partition] is State.READY and not self._writers.usable(partition):
                # Fenced while the group was deciding: another owner came and went since, so
                # what this replica holds is stale. Take it over again from the topic.
                self._leave(partition)
        for partition in sorted(set(self._states) - mine):
            self._leave(partition)
        fresh = sorted(mine - set(self._states))
        for partition in sorted(mine & set(self._states)):
            self._keep(consumer, partition)
            if self._states[partition] is State.RESTORED:
                self._start_open(partition)
        if fresh:
            consumer.pause(*[tp for p in fresh for tp in self.keyed(p)])
            for partition in fresh:
                self._states[partition] = State.RESTORING
            self._start(fresh)
        self.stable = True
        self.rebalances += 1
        self.last_callback_seconds = time.perf_counter() - started
        self._metrics.rebalanced(self.last_callback_seconds)
        log.info(
            "assigned partitions %s (kept %s) in %.2f ms",
            sorted(mine),
            sorted(set(mine) - set(fresh)),
            self.last_callback_seconds * 1000,
        )
        self._on_change()

    def _missed_a_generation(self, consumer: AIOKafkaConsumer) -> bool:
        # aiokafka sets the new generation before it calls the listener.
        generation = getattr(getattr(consumer, "_coordinator", None), "generation", None)
        if not isinstance(generation, int):
            return True  # unknown: never keep state on a guess
        missed = self._generation is not None and generation != self._generation + 1
        self._generation = generation
        return missed

    def _grown(self, assigned: set[TopicPartition]) -> TopicLayoutError | None:
        keyed = {self._topics.requests, self._topics.webhooks}
        count = self.partition_count
        beyond = sorted(
            {tp.topic for tp in assigned if tp.topic in keyed and tp.partition >= count}
        )
        if not count or not beyond:
            return None
        return TopicLayoutError(
            f"partitions were added to {', '.join(beyond)} while running (this replica started "
            f"with {count}): requests, ledger and webhooks must keep equal "
            "partition counts; intake stopped. See the README, 'Growing partitions'."
        )

    def _keep(self, consumer: AIOKafkaConsumer, partition: int) -> None:
        # The group reset positions to the committed offsets; continue where reading stopped.
        for tp in self.keyed(partition):
            tracker = self.offsets.get(tp)
            if tracker is not None and tracker.next_offset is not None:
                consumer.seek(tp, tracker.next_offset)
        if self._states.get(partition) is not State.READY:
            consumer.pause(*self.keyed(partition))

    # --- taking partitions over -----------------------------------------------------------

    def _start(self, partitions: list[int]) -> None:
        task = asyncio.get_running_loop().create_task(self._take_over(partitions))
        for partition in partitions:
            self._tasks[partition] = task
        task.add_done_callback(self._task_done)

    def _start_open(self, partition: int) -> None:
        self._states[partition] = State.RESTORING
        task = asyncio.get_running_loop().create_task(self._open([partition]))
        self._tasks[partition] = task
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        for partition in [p for p, t in self._tasks.items() if t is task]:
            del self._tasks[partition]
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._on_crash(exc)

    async def _take_over(self, partitions: list[int]) -> None:
        pause = 0.5
        while True:
            try:
                await self._take_over_once(partitions)
                return
            except KafkaError as exc:
                # The broker is away (a restart, an outage): keep the partitions paused and
                # try again while they are still this replica's to take over.
                if not any(self._restoring(p) for p in partitions):
                    return
                log.warning("taking over partitions %s failed, retrying: %r", partitions, exc)
                await asyncio.sleep(pause)
                pause = min(10.0, pause * 2)

    async def _take_over_once(self, partitions: list[int]) -> None:
        partitions = [p for p in partitions if self._restoring(p)]
        # Writers of an attempt that failed half-way are replaced, not leaked.
        await _close_all([w for p in partitions if (w := self._writers.pop(p)) is not None])
        for partition in partitions:
            if (leaving := self._leaving.get(partition)) is not None:
                await leaving
        writers = [self._writer(p) for p in partitions]
        # Fence first: afterwards no earlier owner can commit, so the ledger read next is
        # final, and the offsets committed with it are the ones to continue from.
        try:
            await asyncio.gather(*(w.start() for w in writers))
        except BaseException:
            await _close_all(writers)
            raise
        wanted = [w.partition for w in writers if self._restoring(w.partition)]
        for writer in writers:
            if writer.partition in wanted:
                self._writers.add(writer)
        await _close_all([w for w in writers if w.partition not in wanted])
        self.last_restore = await self._ledger.restore(wanted)
        # One that left while being read is let go.
        self._ledger.release([p for p in wanted if not self._restoring(p)])
        await self._open([p for p in wanted if self._restoring(p)])
        self._on_change()

    def _restoring(self, partition: int) -> bool:
        return self._states.get(partition) is State.RESTORING

    def _writer(self, partition: int) -> PartitionWriter:
        requests, webhooks = self.keyed(partition)

        def offsets() -> dict[TopicPartition, int]:
            points = {}
            for tp in (requests, webhooks):
                tracker = self.offsets.get(tp)
                if tracker is not None and (point := tracker.commit_point()) is not None:
                    points[tp] = point
            return points

        return PartitionWriter(
            bootstrap=self._config.bootstrap,
            group_id=self._config.group_id,
            partition=partition,
            offsets=offsets,
            on_lost=self._lost,
            max_request_size=self._config.max_record_bytes,
        )

    async def _open(self, partitions: list[int]) -> None:
        """Position the input at the offsets committed with the restored state; then read.

        All at once: a position lookup waits behind the fetcher's long poll on the broker's
        connection (about 0.5 s), once for the lot instead of once per partition."""
        consumer = self._consumer
        assert consumer is not None
        keyed = {partition: self.keyed(partition) for partition in partitions}
        opened: list[int] = []
        try:
            committed = {tp: await consumer.committed(tp) for tps in keyed.values() for tp in tps}
            fresh = [tp for tp, offset in committed.items() if offset is None]
            starts = await consumer.beginning_offsets(fresh) if fresh else {}
            for partition in partitions:
                if not self._restoring(partition):
                    continue  # it left while the offsets were looked up
                for tp in keyed[partition]:
                    offset = committed[tp]
                    consumer.seek(tp, starts[tp] if offset is None else offset)
                consumer.resume(*keyed[partition])
                opened.append(partition)
        except IllegalStateError:
            # A rebalance is under way: the assignment that ends it positions the partitions.
            for partition in partitions:
                if self._restoring(partition):
                    self._states[partition] = State.RESTORED
            return
        for partition in opened:
            for tp in keyed[partition]:
                self.offsets[tp] = PartitionOffsets()
            self._jobs.resume(partition)
            self._states[partition] = State.READY

    # --- giving partitions up -------------------------------------------------------------

    def _leave(self, partition: int) -> None:
        self._states.pop(partition, None)
        task = self._tasks.pop(partition, None)
        if task is not None and not any(t is task for t in self._tasks.values()):
            task.cancel()
        for tp in self.keyed(partition):
            self.offsets.pop(tp, None)
        writer = self._writers.pop(partition)
        leaving = asyncio.get_running_loop().create_task(self._let_go(partition, writer))
        self._leaving[partition] = leaving
        leaving.add_done_callback(lambda _: self._forget_leaving(partition, leaving))

    def _forget_leaving(self, partition: int, task: asyncio.Task[None]) -> None:
        if self._leaving.get(partition) is task:
            del self._leaving[partition]

    async def _let_go(self, partition: int, writer: PartitionWriter | None) -> None:
        # Steps already under way may finish (their answers are recorded while the writer
        # still may); none may start. The next owner fences whatever is left.
        await self._jobs.release({partition}, self._config.release_grace)
        if writer is not None:
            await _close_all([writer])
        self._ledger.release([partition])

    def _lost(self, partition: int, exc: BaseException) -> None:
        if self._states.get(partition) is not State.READY:
            return
        log.warning("partition %d was taken over by another replica; stopping its keys", partition)
        self._metrics.fenced()
        self._leave(partition)
        self._states[partition] = State.LOST
        if self._consumer is not None:
            with contextlib.suppress(IllegalStateError):
                self._consumer.pause(*self.keyed(partition))
        task = asyncio.get_running_loop().create_task(self._reclaim(partition))
        self._tasks[partition] = task
        task.add_done_callback(self._task_done)
        self._on_change()

    async def _reclaim(self, partition: int) -> None:
        # Fenced but still assigned: either this replica is stale (the group will move the
        # partition away shortly) or the broker ended its transaction. If it is still ours
        # after the wait, take it over again, fencing whoever fenced us.
        await asyncio.sleep(self._config.lost_wait)
        consumer = self._consumer
        if self._states.get(partition) is not State.LOST or consumer is None:
            return
        if TopicPartition(self._topics.requests, partition) not in consumer.assignment():
            return
        self._states[partition] = State.RESTORING
        await self._take_over([partition])

    async def close(self, grace: float) -> None:
        """Let every owned partition go: running steps finish within `grace`, writers commit."""
        partitions = set(self._states)
        for task in list(self._tasks.values()):
            task.cancel()
        await self._jobs.release(partitions, grace)
        writers = self._writers.all()
        for writer in writers:
            self._writers.pop(writer.partition)
        await _close_all(writers)
        leaving = list(self._leaving.values())
        if leaving:
            await asyncio.gather(*leaving, return_exceptions=True)
        # Stores keep every key and a checkpoint: the next owner here reads only the tail.
        self._ledger.release(partitions)
        self._states.clear()


async def _close_all(writers: list[PartitionWriter]) -> None:
    for writer in writers:
        with contextlib.suppress(KafkaError):
            await writer.close()
