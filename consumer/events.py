"""Events: what genrelay announces on Kafka (completions, progress, dead letters).

Completions are keyed by idempotency key; a redelivery after a crash is the identical event
(same `event_id`), so consumers can dedupe.
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer

from genrelay.consumer.durable import send_durably
from genrelay.consumer.intake import SourceRecord
from genrelay.consumer.metrics import RelayMetrics
from genrelay.consumer.provider import JobState
from genrelay.schemas.base import to_json_bytes
from genrelay.schemas.completions import CompletionEvent
from genrelay.schemas.dead_letter import DeadLetterInfo, DeadLetterReason
from genrelay.schemas.ledger import ProviderJob
from genrelay.schemas.progress import ProgressEvent
from genrelay.schemas.topics import Topics


class KafkaPublisher:
    """Produces genrelay's outgoing records and waits for each acknowledgement."""

    def __init__(self, producer: AIOKafkaProducer, topics: Topics, metrics: RelayMetrics) -> None:
        self._producer = producer
        self._topics = topics
        self._metrics = metrics

    async def completion(self, event: CompletionEvent) -> None:
        await send_durably(
            self._producer,
            self._topics.completions,
            to_json_bytes(event),
            key=event.idempotency_key.encode(),
        )

    async def progress(
        self, key: str, job: ProviderJob, state: JobState, position: int | None
    ) -> None:
        event = ProgressEvent(
            idempotency_key=key,
            request_id=job.request_id,
            stage="queued" if state is JobState.IN_QUEUE else "started",
            queue_position=position,
            at=datetime.now(UTC),
        )
        # Progress is informative: no need to hold the job for its acknowledgement.
        await self._producer.send(self._topics.progress, to_json_bytes(event), key=key.encode())

    async def dead_letter(self, source: SourceRecord, reason: str, error: str) -> None:
        """Copy the original record, bytes and headers, with why it was refused."""
        info = DeadLetterInfo(reason, error, source.topic, source.partition, source.offset)
        await send_durably(
            self._producer,
            self._topics.dead_letter,
            source.value,
            key=source.key,
            headers=[*source.headers, *info.to_headers()],
        )
        self._metrics.dead_lettered(reason)

    async def conflict(self, source: SourceRecord) -> None:
        await self.dead_letter(
            source,
            DeadLetterReason.IDEMPOTENCY_CONFLICT.value,
            "this idempotency key was first used with a different payload",
        )

    async def rekey(self, source: SourceRecord, key: str) -> None:
        """Put the record on the requests topic under its idempotency key."""
        await send_durably(
            self._producer,
            self._topics.requests,
            source.value,
            key=key.encode(),
            headers=list(source.headers),
        )
