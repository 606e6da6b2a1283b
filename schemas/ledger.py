"""The ledger record: the full state of one idempotency key (internal, compacted topic).

Each record replaces the previous one for its key, so it carries everything a new owner needs
to resume the job after a crash or rebalance without paying for it again.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from genrelay.schemas.completions import CompletionEvent, ErrorDetail
from genrelay.schemas.requests import OutputTarget


class Phase(StrEnum):
    """Where a key is in its life; transitions only move forward (see consumer.lifecycle)."""

    ACCEPTED = "ACCEPTED"  # recorded, waiting for an in-flight slot: never posted
    SUBMITTING = "SUBMITTING"  # intent recorded; the POST may or may not have happened
    BACKING_OFF = "BACKING_OFF"  # the last POST provably never arrived; the next is at retry_at
    SUBMITTED = "SUBMITTED"  # the provider accepted it and we hold its request_id
    UNKNOWN = "UNKNOWN"  # the POST's outcome is ambiguous; reconcile, never re-post blindly
    RESULT_READY = "RESULT_READY"  # the provider finished; its output is recorded here
    STORED = "STORED"  # every output file is in the object store; the event is built
    COMPLETED = "COMPLETED"  # succeeded and announced
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"


TERMINAL_PHASES = frozenset({Phase.COMPLETED, Phase.FAILED, Phase.CANCELLED, Phase.EXPIRED})


class ProviderJob(BaseModel):
    """The provider's handle on a submission; URLs are followed verbatim, never rebuilt."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    request_id: str
    gateway_request_id: str | None = None
    status_url: str
    response_url: str
    cancel_url: str


class KeptRequest(BaseModel):
    """The submit request as the ledger keeps it: the validated `SubmitRequest`, typed.

    Every field has a default because some states keep less: a cancel that arrived before its
    submit keeps nothing, and a state too large for a record drops the input (and large
    metadata).
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1] = 1
    action: Literal["submit"] = "submit"
    idempotency_key: str | None = None
    endpoint: str = ""
    input: dict[str, Any] | None = None
    priority: Literal["normal", "low"] = "normal"
    tenant: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    output: OutputTarget | None = None
    deadline: datetime | None = None


class LedgerRecord(BaseModel):
    """The state of one key, written (and acknowledged) before each side effect it enables."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1] = 1
    idempotency_key: str
    phase: Phase
    fingerprint: str
    endpoint: str
    request: KeptRequest = Field(description="the submit request as validated at intake")
    attempts: int = Field(default=0, description="submit POSTs made for this key")
    resubmissions: int = Field(
        default=0, description="deliberate re-posts after an unresolved UNKNOWN"
    )
    proven_absent: int = Field(
        default=0,
        description="re-posts after the provider's records proved the last POST never arrived",
    )
    job: ProviderJob | None = None
    adopted: bool = Field(
        default=False, description="request_id learnt (webhook or request history) after UNKNOWN"
    )
    cancel_requested: bool = False
    result: Any = None
    result_at: datetime | None = Field(
        default=None, description="when the result was learnt (copying its files began then)"
    )
    result_refetches: int = 0
    inference_seconds: float | None = None
    cost_units: float | None = None
    unit_price: float | None = Field(default=None, description="USD per unit of the endpoint")
    charged_usd: float | None = Field(
        default=None,
        description="what the key counts against its tenant's budget: the estimate reserved"
        " when it was posted, the cost once it ended (None: no budget applied)",
    )
    budget_period: str | None = Field(default=None, description="the period charged: `2026-12`")
    last_error: ErrorDetail | None = None
    retry_at: datetime | None = None
    posted_at: datetime | None = Field(
        default=None, description="when the current attempt's POST was decided (committed)"
    )
    start_by: datetime | None = Field(
        default=None, description="the provider was told to start the current attempt by then"
    )
    unknown_since: datetime | None = Field(
        default=None, description="when the submit became ambiguous (its grace counts from here)"
    )
    step_failures: int = Field(
        default=0, description="consecutive transient failures of the current step (poll, …)"
    )
    step_failing_since: datetime | None = Field(
        default=None, description="when the current step first failed (its deadline counts)"
    )
    event: CompletionEvent | None = None
    published: bool = False
    traceparent: str | None = None
    accepted_at: datetime
    submitted_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime

    @model_validator(mode="after")
    def _backing_off_was_a_flag(self) -> LedgerRecord:
        # Records written before BACKING_OFF was a phase said it with SUBMITTING + retry_at.
        if self.phase is Phase.SUBMITTING and self.retry_at is not None:
            return self.model_copy(update={"phase": Phase.BACKING_OFF})
        return self

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES
