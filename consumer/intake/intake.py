"""Intake: what to do with one record read from an input topic.

A record is a command for the lifecycle, or it is re-keyed onto the requests topic (its Kafka
key is not its idempotency key, or it came from a team's own input topic), or it is refused
with a stable reason and goes to the dead-letter topic. Nothing here performs I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from genrelay.consumer import lifecycle as lc
from genrelay.consumer.artifacts.files import object_key
from genrelay.schemas.dead_letter import DeadLetterReason
from genrelay.schemas.requests import (
    CancelRequest,
    RecordInvalid,
    SubmitRequest,
    fingerprint,
    parse_request,
)


@dataclass(frozen=True)
class SourceRecord:
    """A record as read, kept whole so a dead letter can carry the original bytes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    def header(self, name: str) -> str | None:
        for header_name, value in self.headers:
            if header_name.lower() == name:
                return value.decode(errors="replace")
        return None


@dataclass(frozen=True)
class Command:
    key: str
    event: lc.SubmitCommand | lc.CancelCommand


@dataclass(frozen=True)
class Rekey:
    key: str


@dataclass(frozen=True)
class Refuse:
    reason: str
    error: str


Verdict = Command | Rekey | Refuse


def classify(
    record: SourceRecord,
    *,
    requests_topic: str,
    max_bytes: int,
    default_prefix: str = "",
    partition_for: int | None = None,
) -> Verdict:
    """Decide a record's fate.

    `partition_for` is the partition its idempotency key hashes to; a record elsewhere is
    re-keyed, since its ledger state would otherwise live on the wrong partition.
    """
    try:
        request = parse_request(record.value or b"", max_bytes)
    except RecordInvalid as exc:
        return Refuse(exc.reason_code.value, exc.message)
    key = request.idempotency_key
    misplaced = partition_for is not None and partition_for != record.partition
    if record.topic != requests_topic or record.key != key.encode() or misplaced:
        return Rekey(key)
    if isinstance(request, CancelRequest):
        return Command(key, lc.CancelCommand())
    prefix = (request.output.prefix if request.output else None) or default_prefix
    try:
        # Refused before anything is paid for: the files could never be stored.
        object_key(prefix, key, 0, "png")
    except ValueError as exc:
        return Refuse(DeadLetterReason.SCHEMA_VIOLATION.value, f"output cannot be stored: {exc}")
    return Command(key, _submit(request, record.header("traceparent")))


def _submit(request: SubmitRequest, traceparent: str | None) -> lc.SubmitCommand:
    return lc.SubmitCommand(
        request=request.model_dump(mode="json"),
        fingerprint=fingerprint(request),
        endpoint=request.endpoint,
        traceparent=traceparent,
    )


CONFLICT = DeadLetterReason.IDEMPOTENCY_CONFLICT.value
