"""Dead-letter headers carry reason and origin, and read back the same."""

from __future__ import annotations

import pytest

from genrelay.schemas import (
    ERROR_HEADER,
    REASON_HEADER,
    SOURCE_OFFSET_HEADER,
    SOURCE_PARTITION_HEADER,
    SOURCE_TOPIC_HEADER,
    DeadLetterHeadersError,
    DeadLetterInfo,
    DeadLetterReason,
)
from genrelay.schemas.dead_letter import ERROR_MAX_CHARS

INFO = DeadLetterInfo(
    reason=DeadLetterReason.IDEMPOTENCY_CONFLICT,
    error="same key, different fingerprint",
    source_topic="genrelay.requests",
    source_partition=3,
    source_offset=1234,
)


def test_headers_use_the_published_names() -> None:
    assert dict(INFO.to_headers()) == {
        "genrelay-dlq-reason": b"idempotency_conflict",
        "genrelay-dlq-error": b"same key, different fingerprint",
        "genrelay-dlq-source-topic": b"genrelay.requests",
        "genrelay-dlq-source-partition": b"3",
        "genrelay-dlq-source-offset": b"1234",
    }


def test_headers_round_trip_among_other_headers() -> None:
    headers = [("traceparent", b"00-abc-def-01"), *INFO.to_headers()]
    assert DeadLetterInfo.from_headers(headers) == INFO


def test_a_reason_added_later_is_still_readable() -> None:
    headers = [(REASON_HEADER, b"quota_exceeded"), *INFO.to_headers()[1:]]
    assert DeadLetterInfo.from_headers(headers).reason == "quota_exceeded"


def test_long_errors_are_truncated() -> None:
    info = DeadLetterInfo("schema_violation", "x" * (ERROR_MAX_CHARS * 3), "t", 0, 0)
    assert len(dict(info.to_headers())[ERROR_HEADER]) == ERROR_MAX_CHARS


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (SOURCE_TOPIC_HEADER, None),
        (SOURCE_PARTITION_HEADER, b"three"),
        (SOURCE_OFFSET_HEADER, b"-1"),
        (ERROR_HEADER, b"\xff"),
    ],
)
def test_missing_or_malformed_headers_are_refused(name: str, value: bytes | None) -> None:
    headers = [(n, v) for n, v in INFO.to_headers() if n != name]
    if value is not None:
        headers.append((name, value))
    with pytest.raises(DeadLetterHeadersError, match=name):
        DeadLetterInfo.from_headers(headers)
