"""The inference provider as the core sees it: values and a small Protocol, no fal specifics.

An adapter (``genrelay.consumer.provider.fal``) implements ``Provider`` and raises only the
``ProviderError`` family from ``genrelay.consumer.errors``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum, StrEnum
from typing import Protocol, TypeAlias

JSON: TypeAlias = "bool | int | float | str | list[JSON] | dict[str, JSON] | None"
JSONObject: TypeAlias = "dict[str, JSON]"

# The error type a provider reports for a request that was cancelled at our request.
CANCELLED_ERROR_TYPE = "client_cancelled"
# The error type of a request that reached its time-to-start deadline: it never ran.
START_TIMEOUT_ERROR_TYPE = "start_timeout"


class JobState(StrEnum):
    """Where a submitted request is. A failed request is COMPLETED with an error."""

    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"


class Priority(StrEnum):
    """Queue priority: bulk work goes ``low`` so interactive traffic overtakes it."""

    NORMAL = "normal"
    LOW = "low"


class CancelOutcome(Enum):
    """What a cancel achieved. After REQUESTED the request may still complete and bill."""

    REQUESTED = "requested"
    ALREADY_COMPLETED = "already_completed"
    NOT_FOUND = "not_found"


@dataclass(frozen=True)
class Submission:
    """A request the provider accepted, with the URLs it gave us to follow verbatim."""

    request_id: str
    gateway_request_id: str | None
    status_url: str
    response_url: str
    cancel_url: str
    queue_position: int | None = None


@dataclass(frozen=True)
class LogLine:
    message: str
    level: str | None
    timestamp: str | None


@dataclass(frozen=True)
class JobStatus:
    state: JobState
    queue_position: int | None = None
    logs: tuple[LogLine, ...] = ()
    inference_time: float | None = None
    error: str | None = None
    error_type: str | None = None

    @property
    def failed(self) -> bool:
        return self.state is JobState.COMPLETED and (
            self.error is not None or self.error_type is not None
        )


@dataclass(frozen=True)
class ErrorInfo:
    """Why a request failed. ``retryable`` means a new (paid) submission might succeed."""

    type: str
    message: str
    retryable: bool

    @property
    def cancelled(self) -> bool:
        return self.type == CANCELLED_ERROR_TYPE


@dataclass(frozen=True)
class JobResult:
    """A completed request's outcome: its output when ``ok``, else ``error``."""

    ok: bool
    payload: JSON
    error: ErrorInfo | None
    billable_units: float | None = None


@dataclass(frozen=True)
class WebhookNews:
    """What a verified webhook delivery says about a request."""

    request_id: str
    gateway_request_id: str | None
    ok: bool
    payload: JSON
    error: ErrorInfo | None
    payload_error: str | None

    @property
    def needs_fetch(self) -> bool:
        """The delivery carries no usable output: fetch the result from the provider."""
        return self.ok and (self.payload is None or self.payload_error is not None)


@dataclass(frozen=True)
class ListedRequest:
    """One request as the provider's request history lists it."""

    request_id: str
    endpoint: str
    sent_at: datetime | None
    input: JSON
    status_code: int | None = None


@dataclass(frozen=True)
class Tags:
    """What a submit is labelled with at the provider, to find it in its records later."""

    key_hash: str
    attempt: int
    tenant: str | None = None


class RequestHistory(Protocol):
    """The provider's own record of the requests it received (it lags behind the queue)."""

    async def requests(
        self, endpoint: str, *, start: datetime, end: datetime | None
    ) -> list[ListedRequest]:
        """Every request on `endpoint` sent in `[start, end)` (end None: up to now), with its
        input; raises ``ProviderError`` when the history cannot be read whole."""
        ...


class Provider(Protocol):
    """A paid inference queue. Every method raises only ``ProviderError`` subclasses."""

    def submission_for(self, endpoint: str, request_id: str) -> Submission:
        """The handle of a request known only by its id (from a webhook or the history)."""
        ...

    async def submit(
        self,
        endpoint: str,
        input: JSONObject,
        *,
        webhook_url: str | None,
        priority: Priority,
        start_timeout: float | None = None,
        tags: Tags | None = None,
    ) -> Submission:
        """Enqueue one paid request. ``NotSent`` may be retried; ``MaybeSent`` must not.
        ``start_timeout``: seconds within which the provider must start it, or never."""
        ...

    async def status(self, submission: Submission, *, with_logs: bool = False) -> JobStatus:
        """Poll where the request is; ``NotFound`` if the provider does not know it."""
        ...

    async def result(self, submission: Submission) -> JobResult:
        """Fetch a completed request's outcome; ``ResultExpired`` if it is gone."""
        ...

    async def cancel(self, submission: Submission) -> CancelOutcome:
        """Ask the provider to cancel; the request may still complete."""
        ...

    async def aclose(self) -> None:
        """Release connections; safe to call twice."""
        ...
