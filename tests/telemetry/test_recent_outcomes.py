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


def test_the_last_hour_is_a_point_per_minute_with_gaps_and_percentiles() -> None:
    clock = Clock(1_790_000_000.0 // 60 * 60)
    in_flight = [0]
    recent = RecentOutcomes(clock=clock, in_flight=lambda: in_flight[0])
    in_flight[0] = 7
    for n in range(100):
        timed = {"timings": {"queued_ms": 0, "running_ms": 0, "total_ms": 10 * (n + 1)}}
        recent.add(event(f"k{n}", "succeeded" if n % 10 else "failed", **timed))
    for _ in range(300):
        recent.provider_called()
    recent.dead_lettered()
    in_flight[0] = 2
    clock.now += 120  # two minutes later: one quiet minute between
    recent.add(event("late"))

    points = recent.trends()
    assert len(points) == 60
    first, quiet, last = points[-3], points[-2], points[-1]
    assert (first["completions"], first["failures"], first["dead_letters"]) == (90, 10, 1)
    assert first["in_flight"] == 7
    assert first["provider_calls"] == 300
    assert first["provider_calls_per_job"] == 3.0
    assert first["p50_ms"] == 505.0
    assert 985 <= first["p99_ms"] <= 1000
    assert quiet == {**quiet, "completions": 0, "failures": 0, "p50_ms": None}
    assert quiet["provider_calls_per_job"] is None
    assert (last["completions"], last["in_flight"], last["p50_ms"]) == (1, 2, 1000.0)
    assert points[0]["at"] < first["at"] < last["at"]

    clock.now += 3600  # an hour on, the old minutes are gone
    assert sum(p["completions"] + p["failures"] for p in recent.trends()) == 0
