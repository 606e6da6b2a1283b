"""Producing a record that must not be dropped: retried for as long as the broker is away.

A ledger transition or a completion event has nowhere else to go: giving up would crash the
job (and, before this, the whole replica after aiokafka's 40 s request timeout). Retrying a
send that timed out may write the record twice; both are harmless here (the ledger is
compacted, events carry their `event_id`).
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError

log = logging.getLogger(__name__)

_FIRST_PAUSE = 0.1
_LONGEST_PAUSE = 5.0


async def send_durably(
    producer: AIOKafkaProducer,
    topic: str,
    value: bytes | None,
    *,
    key: bytes | None,
    partition: int | None = None,
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    """`send_and_wait`, retried with backoff on retriable broker errors until acknowledged."""
    pause = _FIRST_PAUSE
    while True:
        try:
            await producer.send_and_wait(
                topic, value, key=key, partition=partition, headers=headers
            )
            return
        except KafkaError as exc:
            # aiokafka marks its own timeout (a full accumulator, an unacknowledged batch) as
            # not retriable, but for a record that must land, waiting longer is the answer.
            if not (exc.retriable or isinstance(exc, KafkaTimeoutError)):
                raise
            log.warning("produce to %s not acknowledged, retrying in %.1f s: %r", topic, pause, exc)
        await asyncio.sleep(pause)
        pause = min(_LONGEST_PAUSE, pause * 2)
