"""Cost records (`genrelay.costs`, compacted, keyed by idempotency key): what fal billed a key.

Written by `genrelay audit --publish-costs` from fal's billing events (`source=tagged-billed`),
once fal's billing reports the key's requests; a later audit of the same window writes the
same record again (compaction keeps one). The completion event's `cost_usd` is the estimate
made at completion; this is the figure fal billed.
"""

from typing import Literal

from pydantic import Field, NonNegativeFloat

from genrelay.schemas.base import Record
from genrelay.schemas.fields import IdempotencyKey, NonEmptyStr, UtcDatetime


class CostRecord(Record):
    """The requests fal billed for one key, and what they cost."""

    schema_version: Literal[1] = 1
    idempotency_key: IdempotencyKey
    endpoint: NonEmptyStr
    tenant: str | None = None
    request_ids: list[NonEmptyStr] = Field(
        description="every request fal billed for the key (more than one: a double charge)"
    )
    billed_units: NonNegativeFloat | None = None
    cost_usd: NonNegativeFloat
    cost_source: Literal["billed"] = "billed"
    estimated_usd: NonNegativeFloat | None = Field(
        default=None, description="the completion event's estimate, for comparison"
    )
    billed_at: UtcDatetime = Field(description="when fal billed the key's last request")
    settled_at: UtcDatetime = Field(description="when this record was written")
