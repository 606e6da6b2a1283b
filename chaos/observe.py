"""What a chaos run observes on Kafka: completion events as they arrive, and the ledger at the end.

Both read the plain (unproxied) listener with no consumer group, from the beginning, so a
fault between genrelay and Kafka never hides an event from the observer.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition


class TopicTail:
    """Every record of one topic from offset 0; `follow()` or `read_to_end()`."""

    def __init__(self, bootstrap: str, topic: str, on_record: Callable[[Any], None]) -> None:
        self._on_record = on_record
        # No group: every partition is assigned, and nothing is committed anywhere.
        self._consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            # What downstream consumers see: committed transactions only.
            isolation_level="read_committed",
        )

    async def __aenter__(self) -> TopicTail:
        await self._consumer.start()
        try:
            async with asyncio.timeout(30):
                while not self._consumer.assignment():
                    await self._take(100)
        except BaseException:
            await self._consumer.stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._consumer.stop()

    async def _take(self, timeout_ms: int) -> None:
        batch = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=5000)
        for records in batch.values():
            for record in records:
                self._on_record(record)

    async def follow(self) -> None:
        """Read until cancelled."""
        while True:
            await self._take(200)

    async def read_to_end(self, timeout: float = 60.0) -> None:
        """Read up to the end offsets as they are now."""
        assigned = list(self._consumer.assignment())
        ends: dict[TopicPartition, int] = await self._consumer.end_offsets(assigned)
        async with asyncio.timeout(timeout):
            while True:
                positions = [await self._consumer.position(tp) for tp in assigned]
                if all(pos >= ends[tp] for pos, tp in zip(positions, assigned, strict=True)):
                    return
                await self._take(200)


@dataclass
class Completions:
    """Completion events per key, and when (run clock) each key's first one arrived."""

    started: float
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    first_at: dict[str, float] = field(default_factory=dict)
    unreadable: int = 0

    def record(self, message: Any) -> None:
        try:
            event = json.loads(message.value)
            key = event["idempotency_key"]
        except (ValueError, KeyError, TypeError):
            self.unreadable += 1
            return
        self.events.setdefault(key, []).append(event)
        self.first_at.setdefault(key, time.monotonic() - self.started)

    def finished(self, keys: Iterable[str]) -> int:
        """How many of `keys` have a terminal event."""
        return sum(1 for key in keys if key in self.events)


# How far along a key is; its committed ledger states may only move up (or stay).
_PHASE_RANK = {
    "ACCEPTED": 0,  # waiting for a slot, never posted
    "SUBMITTING": 0,
    "BACKING_OFF": 0,  # the last POST provably never arrived
    "UNKNOWN": 0,  # both mean "the POST may have happened"; a policy may re-post from here
    "SUBMITTED": 1,
    "RESULT_READY": 2,
    "STORED": 3,
    "COMPLETED": 4,
    "FAILED": 4,
    "CANCELLED": 4,
    "EXPIRED": 4,
}


@dataclass
class LedgerTally:
    """Keys whose ambiguous submit was adopted (from a webhook or the request history),
    re-posts after the history proved a submit never arrived, deliberate resubmissions, and
    keys whose committed state ever went backwards (a stale owner's write that landed)."""

    adopted: set[str] = field(default_factory=set)
    proven_absent: Counter[str] = field(default_factory=Counter)
    resubmissions: Counter[str] = field(default_factory=Counter)
    phases: dict[str, str] = field(default_factory=dict)
    regressed: dict[str, str] = field(default_factory=dict)

    def record(self, message: Any) -> None:
        if message.value is None:
            return  # a tombstone
        try:
            state = json.loads(message.value)
            key = state["idempotency_key"]
        except (ValueError, KeyError, TypeError):
            return
        if state.get("adopted"):
            self.adopted.add(key)
        if state.get("proven_absent"):
            self.proven_absent[key] = max(self.proven_absent[key], int(state["proven_absent"]))
        if state.get("resubmissions"):
            self.resubmissions[key] = max(self.resubmissions[key], int(state["resubmissions"]))
        phase = str(state.get("phase"))
        before = self.phases.get(key)
        if before is not None and _went_back(before, phase):
            self.regressed.setdefault(key, f"{before} -> {phase}")
        self.phases[key] = phase


def _went_back(before: str, after: str) -> bool:
    rank_before, rank_after = _PHASE_RANK.get(before, -1), _PHASE_RANK.get(after, -1)
    if rank_after < rank_before:
        return True
    return rank_before == _PHASE_RANK["COMPLETED"] and after != before
