"""A record that must not be dropped is retried while the broker is away, not given up."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError, LeaderNotAvailableError, UnsupportedVersionError

from genrelay.consumer.ledger import durable
from genrelay.consumer.ledger.durable import send_durably


class FlakyProducer:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.sent: list[tuple[str, bytes | None]] = []

    async def send_and_wait(self, topic: str, value: bytes | None, **_: Any) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append((topic, value))


@pytest.fixture(autouse=True)
def no_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(durable, "_FIRST_PAUSE", 0.0)


async def test_retriable_errors_are_retried_until_acknowledged() -> None:
    producer = FlakyProducer([LeaderNotAvailableError(), KafkaTimeoutError()])
    await send_durably(producer, "t", b"v", key=b"k")
    assert producer.sent == [("t", b"v")]


async def test_a_non_retriable_error_is_raised() -> None:
    producer = FlakyProducer([UnsupportedVersionError()])
    with pytest.raises(UnsupportedVersionError):
        await send_durably(producer, "t", b"v", key=b"k")
    assert producer.sent == []
