"""Progress events (`genrelay.progress`): optional, best-effort news about a running job."""

from typing import Literal

from pydantic import Field, NonNegativeInt

from genrelay.schemas.base import Record
from genrelay.schemas.fields import IdempotencyKey, NonEmptyStr, UtcDatetime

ProgressStage = Literal["queued", "started", "log"]


class LogEntry(Record):
    """One log line from the provider, as it reported it."""

    message: str
    level: str | None = None
    source: str | None = None
    timestamp: str | None = None


class ProgressEvent(Record):
    """A job's place in the provider's queue, its start, or new log lines."""

    schema_version: Literal[1] = 1
    idempotency_key: IdempotencyKey
    request_id: NonEmptyStr
    stage: ProgressStage
    queue_position: NonNegativeInt | None = None
    logs: list[LogEntry] = Field(default_factory=list)
    at: UtcDatetime
