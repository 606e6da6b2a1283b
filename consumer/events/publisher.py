"""Events: what genrelay announces on Kafka (completions, progress, dead letters).

Completions are keyed by idempotency key; a redelivery after a crash is the identical event
(same `event_id`), so consumers can dedupe. Everything written for an owned partition goes
through that partition's fenced writer, in a transaction: consumers of these topics read with
`isolation_level=read_committed`. Records from inputs outside the co-partitioned topics (a
team's own topic) are re-keyed or dead-lettered by the plain producer.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer

from genrelay.consumer.events.recent_outcomes import RecentOutcomes
from genrelay.consumer.intake.intake import SourceRecord
from genrelay.consumer.ledger.durable import send_durably
from genrelay.consumer.ledger.partition_writer import Outgoing, Writers
from genrelay.consumer.provider.provider import JobState
from genrelay.consumer.service.metrics import RelayMetrics
from genrelay.schemas.base import to_json_bytes
from genrelay.schemas.completions import CompletionEvent
from genrelay.schemas.dead_letter import (
    TRUNCATED_FROM_HEADER,
    DeadLetterInfo,
    DeadLetterReason,
)
from genrelay.schemas.ledger import ProviderJob
from genrelay.schemas.progress import ProgressEvent
from genrelay.schemas.topics import Topics

# Room for the truncation header and the record's own framing.
_TRUNCATION_NOTE = 1024


class KafkaPublisher:
    """Builds genrelay's outgoing records and writes them through the owning partition."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        writers: Writers,
        topics: Topics,
        metrics: RelayMetrics,
        max_record_bytes: int,
        recent: RecentOutcomes | None = None,
    ) -> None:
        self._max_record_bytes = max_record_bytes
        self._recent = recent
        self._producer = producer
        self._writers = writers
        self._topics = topics
        self._metrics = metrics

    def completion_record(self, event: CompletionEvent) -> Outgoing:
        return Outgoing(
            self._topics.completions, to_json_bytes(event), event.idempotency_key.encode()
        )

    async def completion(self, event: CompletionEvent, partition: int) -> None:
        await self._writers.get(partition).write(self.completion_record(event))

    async def progress(
        self, key: str, job: ProviderJob, state: JobState, position: int | None, partition: int
    ) -> None:
        event = ProgressEvent(
            idempotency_key=key,
            request_id=job.request_id,
            stage="queued" if state is JobState.IN_QUEUE else "started",
            queue_position=position,
            at=datetime.now(UTC),
        )
        # Progress is informative: no need to hold the job until its transaction commits.
        record = Outgoing(self._topics.progress, to_json_bytes(event), key.encode())
        self._writers.get(partition).submit((record,))

    def dead_letter_record(self, source: SourceRecord, reason: str, error: str) -> Outgoing:
        """The original record, bytes and headers, with why it was refused."""
        info = DeadLetterInfo(reason, error, source.topic, source.partition, source.offset)
        self._metrics.dead_lettered(reason)
        if self._recent is not None:
            self._recent.dead_lettered()
        record = Outgoing(
            self._topics.dead_letter,
            source.value,
            source.key,
            headers=(*source.headers, *info.to_headers()),
        )
        excess = record.size() + _TRUNCATION_NOTE - self._max_record_bytes
        if excess <= 0 or source.value is None:
            return record
        # Cut to fit, never dropped: the whole original stays at its source offset.
        kept = source.value[: max(0, len(source.value) - excess)]
        size = str(len(source.value)).encode()
        return replace(record, value=kept, headers=(*record.headers, (TRUNCATED_FROM_HEADER, size)))

    async def conflict(self, source: SourceRecord, partition: int) -> None:
        reason = DeadLetterReason.IDEMPOTENCY_CONFLICT.value
        error = "this idempotency key was first used with a different payload"
        await self._writers.get(partition).write(self.dead_letter_record(source, reason, error))

    def rekey_record(self, source: SourceRecord, key: str) -> Outgoing:
        """The record, for the requests topic under its idempotency key."""
        return Outgoing(self._topics.requests, source.value, key.encode(), headers=source.headers)

    async def forward_plain(self, record: Outgoing) -> None:
        """Produce a record from a non-co-partitioned input (acknowledged, not transactional)."""
        await send_durably(
            self._producer,
            record.topic,
            record.value,
            key=record.key,
            headers=list(record.headers),
        )
