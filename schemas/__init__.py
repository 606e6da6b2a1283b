"""The public record contracts: pydantic models of every topic's records.

The JSON Schemas generated from them live in `schemas/json/`; `README.md` beside this file
holds the evolution rules.
"""

from genrelay.schemas.base import Record, canonical_json, from_json_bytes, to_json_bytes
from genrelay.schemas.completions import (
    Artifact,
    CompletionEvent,
    CompletionStatus,
    ErrorDetail,
    Timings,
)
from genrelay.schemas.dead_letter import (
    ERROR_HEADER,
    REASON_HEADER,
    SOURCE_OFFSET_HEADER,
    SOURCE_PARTITION_HEADER,
    SOURCE_TOPIC_HEADER,
    DeadLetterHeadersError,
    DeadLetterInfo,
    DeadLetterReason,
)
from genrelay.schemas.progress import LogEntry, ProgressEvent, ProgressStage
from genrelay.schemas.requests import (
    CancelRequest,
    OutputTarget,
    RecordInvalid,
    RequestRecord,
    SubmitRequest,
    fingerprint,
    parse_request,
)
from genrelay.schemas.topics import DEFAULT_TOPICS, Topics
from genrelay.schemas.webhooks import WebhookDelivery

__all__ = [
    "DEFAULT_TOPICS",
    "ERROR_HEADER",
    "REASON_HEADER",
    "SOURCE_OFFSET_HEADER",
    "SOURCE_PARTITION_HEADER",
    "SOURCE_TOPIC_HEADER",
    "Artifact",
    "CancelRequest",
    "CompletionEvent",
    "CompletionStatus",
    "DeadLetterHeadersError",
    "DeadLetterInfo",
    "DeadLetterReason",
    "ErrorDetail",
    "LogEntry",
    "OutputTarget",
    "ProgressEvent",
    "ProgressStage",
    "Record",
    "RecordInvalid",
    "RequestRecord",
    "SubmitRequest",
    "Timings",
    "Topics",
    "WebhookDelivery",
    "canonical_json",
    "fingerprint",
    "from_json_bytes",
    "parse_request",
    "to_json_bytes",
]
