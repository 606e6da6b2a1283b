"""Completion events (`genrelay.completions`): the one terminal outcome of each idempotency key.

Delivery is at least once; a redelivery after a crash repeats the same `event_id`, and a late
duplicate request gets the stored outcome again with `replayed: true`.
"""

from typing import Any, Literal, Self

from pydantic import (
    ConfigDict,
    Field,
    JsonValue,
    NonNegativeFloat,
    NonNegativeInt,
    model_validator,
)

from genrelay.schemas.base import Record
from genrelay.schemas.fields import (
    Endpoint,
    IdempotencyKey,
    Metadata,
    NonEmptyStr,
    Sha256Hex,
    UtcDatetime,
)

CompletionStatus = Literal["succeeded", "failed", "cancelled", "expired"]

# The JSON Schema form of `CompletionEvent._error_matches_status`.
_ERROR_MATCHES_STATUS: dict[str, Any] = {
    "if": {"properties": {"status": {"const": "succeeded"}}},
    "then": {"properties": {"error": {"type": "null"}}},
    "else": {"properties": {"error": {"type": "object"}}},
}


# Fields added to version 1 later: required in the schema (always written), optional when read.
_ADDED_LATER = ("cost_usd", "cost_source")


def _completion_schema(schema: dict[str, Any]) -> None:
    schema.update(_ERROR_MATCHES_STATUS)
    required = schema.setdefault("required", [])
    required.extend(name for name in _ADDED_LATER if name not in required)


class Artifact(Record):
    """One stored output file, written and verified before the event that names it."""

    bucket: NonEmptyStr
    key: NonEmptyStr
    size: NonNegativeInt
    sha256: Sha256Hex
    content_type: NonEmptyStr
    etag: str


class ErrorDetail(Record):
    """Why a job did not succeed; `retryable` says whether a new request could succeed."""

    type: NonEmptyStr
    message: str
    retryable: bool


class Timings(Record):
    """Milliseconds queued at the provider, running there, and from intake to completion."""

    queued_ms: NonNegativeInt
    running_ms: NonNegativeInt
    total_ms: NonNegativeInt


class CompletionEvent(Record):
    """The terminal outcome of one idempotency key.

    `result` is the provider's output with each file URL replaced by an `object` reference to
    the stored artifact; `error` is set exactly when `status` is not `succeeded`.
    """

    model_config = ConfigDict(json_schema_extra=_completion_schema)

    schema_version: Literal[1] = 1
    event_id: NonEmptyStr
    idempotency_key: IdempotencyKey
    status: CompletionStatus
    endpoint: Endpoint
    request_id: NonEmptyStr | None
    artifacts: list[Artifact]
    result: JsonValue
    error: ErrorDetail | None
    timings: Timings
    attempts: NonNegativeInt
    cost_units: NonNegativeFloat | None = Field(
        description="units the provider billed (X-Fal-Billable-Units)"
    )
    # These two default to null only so that events written before them still read; every
    # event genrelay writes has them, and the JSON Schema requires them (`_schema`).
    cost_usd: NonNegativeFloat | None = Field(
        default=None, description="cost_units at the endpoint's unit price, when both are known"
    )
    cost_source: Literal["estimate"] | None = Field(
        default=None,
        description="estimate: billed units times the listed price, at completion (fal's billing"
        " reports the final figure later)",
    )
    metadata: Metadata
    replayed: bool
    completed_at: UtcDatetime | None = None

    @model_validator(mode="after")
    def _error_matches_status(self) -> Self:
        if (self.status == "succeeded") != (self.error is None):
            raise ValueError("error must be null when status is succeeded, and set otherwise")
        return self
