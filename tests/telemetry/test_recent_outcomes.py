"""The status page's memory: bounded rings of outcomes and rates over the last minute."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from genrelay.consumer.events.recent_outcomes import RateWindow, RecentOutcomes
from genrelay.schemas.completions import CompletionEvent


class Clock:
    def __init__(self, now: float = 1_790_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def event(key: str, status: str = "succeeded", **extra: Any) -> CompletionEvent:
    error = None
    if status != "succeeded":
        error = {"type": "provider_error", "message": "boom", "retryable": False}
    return CompletionEvent.model_validate(
        {
            "event_id": f"ev-{key}",
            "idempotency_key": key,
            "status": status,
            "endpoint": "fal-ai/flux/schnell",
            "request_id": f"req-{key}",
            "artifacts": [],
            "result": None,
            "error": error,
            "timings": {"queued_ms": 100, "running_ms": 900, "total_ms": 1000},
            "attempts": 1,
            "cost_units": None,
            "metadata": {},
            "replayed": False,
            **extra,
        }
    )


def test_outcomes_are_listed_newest_first_and_bounded() -> None:
    clock = Clock()
    recent = RecentOutcomes(capacity=3, clock=clock)
    for n in range(5):
        clock.now += 1
        recent.add(event(f"k{n}"))

    assert [o.idempotency_key for o in recent.completions()] == ["k4", "k3", "k2"]
    newest = recent.completions()[0]
    assert newest.finished_at == datetime.fromtimestamp(clock.now, UTC)
    assert newest.total_ms == 1000
    assert newest.error is None


def test_failures_survive_a_flood_of_successes() -> None:
    recent = RecentOutcomes(capacity=3, clock=Clock())
    recent.add(event("broken", "failed"))
    recent.add(event("gone", "expired"))
    for n in range(10):
        recent.add(event(f"ok{n}"))

    assert [(o.idempotency_key, o.status, o.error) for o in recent.failures()] == [
        ("gone", "expired", "provider_error"),
        ("broken", "failed", "provider_error"),
    ]
    assert len(recent.completions()) == 3


def test_rates_are_per_second_over_the_last_minute() -> None:
    clock = Clock()
    recent = RecentOutcomes(clock=clock)
    for _ in range(90):
        recent.add(event("k"))
    recent.add(event("f", "failed"))
    assert recent.rates() == {"failed": 1 / 60, "succeeded": 1.5}

    clock.now += 59
    recent.add(event("k"))
    assert recent.rates() == {"failed": 1 / 60, "succeeded": 91 / 60}

    clock.now += 1  # the first second leaves the window
    assert recent.rates() == {"succeeded": 1 / 60}
    clock.now += 3600
    assert recent.rates() == {}


def test_a_rate_window_counts_any_named_event() -> None:
    clock = Clock()
    window = RateWindow(window_seconds=10, clock=clock)
    window.mark("submitted", 25)
    clock.now += 0.5  # the same second
    window.mark("submitted", 5)
    assert window.rates() == {"submitted": 3.0}
