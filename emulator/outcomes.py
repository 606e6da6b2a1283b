"""How a finished request answers: its result response, status fields and webhook body.

fal has two error shapes (fal-api.md §3):

- infrastructure errors: `{"detail": "<text>", "error_type": "<type>"}` with the same type in
  `X-Fal-Error-Type` (runner failures, timeouts, cancellation);
- model errors: `{"detail": [{"loc", "msg", "type"}]}` with a retry hint in `X-Fal-Retryable`
  (validation errors, content policy, ...).

fal's queue retries an attempt that ended in 503 or 504; everything else is final.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

JSON = Any

# error_type -> (HTTP status, detail text)
INFRA_ERRORS: dict[str, tuple[int, str]] = {
    "request_timeout": (504, "Request timed out"),
    "startup_timeout": (504, "Runner startup timed out"),
    "runner_scheduling_failure": (503, "Could not schedule a runner for the request"),
    "runner_connection_timeout": (503, "Timed out connecting to the runner"),
    "runner_disconnected": (503, "The runner disconnected while processing the request"),
    "runner_connection_refused": (503, "The runner refused the connection"),
    "runner_connection_error": (503, "Could not connect to the runner"),
    "runner_incomplete_response": (502, "The runner returned an incomplete response"),
    "runner_server_error": (500, "The runner returned an internal server error"),
    "internal_error": (500, "Internal error"),
    "client_cancelled": (499, "Request was cancelled by the client"),
}
# type -> (HTTP status, message, retryable)
MODEL_ERRORS: dict[str, tuple[int, str, bool]] = {
    "content_policy_violation": (
        422,
        "The content could not be processed because it contained material flagged by a "
        "content checker.",
        False,
    ),
    "no_media_generated": (422, "The model did not generate any media.", False),
    "internal_server_error": (500, "Internal server error", True),
    "generation_timeout": (504, "Generation timed out", True),
    "downstream_service_error": (502, "A downstream service returned an error", True),
}
RETRIED_BY_QUEUE = frozenset({503, 504})
PAYLOAD_ERROR = (
    "Response payload is not JSON serializable. Either return a JSON serializable object or "
    "use the queue endpoint to retrieve the response."
)


def dumps(value: JSON) -> bytes:
    """Compact JSON, the way fal's responses and webhook bodies are written."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class Outcome:
    """The final answer of one request (or of one failed attempt, before a retry)."""

    status_code: int
    payload: JSON
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    error: str | None = None
    error_type: str | None = None
    inference_time: float | None = None

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    @property
    def retried_by_queue(self) -> bool:
        return self.status_code in RETRIED_BY_QUEUE

    def status_fields(self) -> dict[str, JSON]:
        """The `error` and `error_type` a COMPLETED status carries when the request failed."""
        if self.ok:
            return {}
        return {"error": self.error, "error_type": self.error_type}


def success(payload: JSON, inference_time: float) -> Outcome:
    return Outcome(200, payload, dumps(payload), inference_time=inference_time)


def infra_error(error_type: str, *, user_timeout: bool = False) -> Outcome:
    """A flat infrastructure error; `user_timeout` marks an expired `X-Fal-Request-Timeout`."""
    status, detail = INFRA_ERRORS[error_type]
    payload = {"detail": detail, "error_type": error_type}
    headers: tuple[tuple[str, str], ...] = (("x-fal-error-type", error_type),)
    if user_timeout:
        headers += (("x-fal-request-timeout-type", "user"),)
    return Outcome(status, payload, dumps(payload), headers, detail, error_type)


def model_error(error_type: str) -> Outcome:
    status, message, retryable = MODEL_ERRORS[error_type]
    detail = [{"loc": ["body"], "msg": message, "type": error_type}]
    return _detail_error(status, detail, retryable)


def validation_error(detail: list[dict[str, JSON]]) -> Outcome:
    """A 422 for invalid input; fal accepts the submit and fails the request with it."""
    return _detail_error(422, detail, retryable=False)


def failure(error_type: str) -> Outcome:
    """An injected failure of either kind."""
    if error_type in INFRA_ERRORS:
        return infra_error(error_type)
    return model_error(error_type)


def _detail_error(status: int, detail: list[dict[str, JSON]], retryable: bool) -> Outcome:
    payload = {"detail": detail}
    headers = (("x-fal-retryable", "true" if retryable else "false"),)
    first = detail[0]
    return Outcome(status, payload, dumps(payload), headers, str(first["msg"]), str(first["type"]))
