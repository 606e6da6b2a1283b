"""One back-off rule, one Retry-After reader, and the pacer that spreads polls."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from genrelay.consumer.dispatch.backoff import Pacer, jittered, retry_after


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("7", 7.0), ("0", 0.0), ("1.5", 1.5), ("", None), ("soon", None), ("-3", None), ("nan", None)],
)
def test_retry_after_reads_delta_seconds(value: str, seconds: float | None) -> None:
    assert retry_after({"retry-after": value}) == seconds


def test_retry_after_reads_an_http_date() -> None:
    when = datetime(2026, 12, 4, 12, 0, 30, tzinfo=UTC)
    now = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC).timestamp()
    assert retry_after({"retry-after": format_datetime(when, usegmt=True)}, now=now) == 30.0
    # A date already past means "now", never a negative wait.
    assert retry_after({"retry-after": format_datetime(when, usegmt=True)}, now=now + 60) == 0.0


def test_jitter_stays_under_its_ceiling_and_honours_retry_after_up_to_the_cap() -> None:
    for attempt in range(1, 12):
        delay = jittered(attempt, base=0.5, cap=30.0, floor=0.5)
        ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert jittered(1, base=0.5, cap=30.0, retry_after=12.0) == 12.0
    assert jittered(1, base=0.5, cap=30.0, retry_after=3600.0) == 30.0


def test_the_pacer_lets_a_seconds_worth_through_then_spaces_calls_at_its_rate() -> None:
    now = [100.0]
    pacer = Pacer(10.0, clock=lambda: now[0])
    delays = [pacer.delay() for _ in range(30)]
    assert delays[:11] == [0.0] * 11  # a second's worth, and the call due now
    # The rest queue up one interval apart.
    assert delays[11:] == pytest.approx([0.1 * n for n in range(1, 20)])
    now[0] += 60.0  # idle: the burst is available again
    assert pacer.delay() == 0.0
