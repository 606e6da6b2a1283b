"""What the provider saw: every accepted (paid) submission and counters of everything else.

Tests use it to prove properties from fal's side, e.g. one paid submission per idempotency
key: the key travels in the webhook URL, so `submissions(webhook_contains=key)` has length 1.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

JSON = Any

COUNTERS = (
    "submissions",
    "rejected_submits",
    "dropped_submit_responses",
    "reset_submits",
    "gateway_error_submit_responses",
    "delayed_submit_responses",
    "unauthorized",
    "platform_calls",
    "completed",
    "billed",
    "billed_units",
    "succeeded",
    "failed",
    "cancelled",
    "cancel_requests",
    "internal_retries",
    "cold_starts",
    "status_polls",
    "status_streams",
    "result_fetches",
    "file_downloads",
    "webhooks_sent",
    "webhook_attempts",
    "webhooks_delivered",
    "webhooks_failed",
    "webhooks_lost",
    "webhooks_duplicated",
    "webhooks_delayed",
    "webhooks_payload_error",
)


@dataclass(frozen=True, slots=True)
class Submission:
    """One accepted submit, as the provider would bill it."""

    seq: int
    request_id: str
    endpoint: str
    input: JSON
    webhook_url: str | None
    priority: str
    received_at: float

    def as_json(self) -> dict[str, JSON]:
        return {
            "seq": self.seq,
            "request_id": self.request_id,
            "endpoint": self.endpoint,
            "input": self.input,
            "webhook_url": self.webhook_url,
            "priority": self.priority,
            "received_at": self.received_at,
        }


class Accounting:
    """Counters plus a bounded log of accepted submissions."""

    def __init__(self, log_limit: int) -> None:
        self.counts: Counter[str] = Counter(dict.fromkeys(COUNTERS, 0))
        self.per_endpoint: Counter[str] = Counter()
        self._log: deque[Submission] = deque(maxlen=log_limit)

    def resize(self, log_limit: int) -> None:
        if self._log.maxlen != log_limit:
            self._log = deque(self._log, maxlen=log_limit)

    def clear(self) -> None:
        self.counts = Counter(dict.fromkeys(COUNTERS, 0))
        self.per_endpoint.clear()
        self._log.clear()

    def count(self, name: str, amount: int = 1) -> None:
        self.counts[name] += amount

    def record_submission(self, submission: Submission) -> None:
        self.counts["submissions"] += 1
        self.per_endpoint[submission.endpoint] += 1
        self._log.append(submission)

    def submissions(
        self,
        *,
        endpoint: str | None = None,
        webhook_contains: str | None = None,
        input_contains: str | None = None,
    ) -> list[Submission]:
        """Logged submissions in arrival order, filtered by every given criterion."""
        return [
            item
            for item in self._log
            if (endpoint is None or item.endpoint == endpoint)
            and (webhook_contains is None or webhook_contains in (item.webhook_url or ""))
            and (input_contains is None or input_contains in json.dumps(item.input))
        ]

    def snapshot(self) -> dict[str, JSON]:
        return {**self.counts, "per_endpoint": dict(self.per_endpoint)}
