"""Dead letters an operator can act on: list them, show one, send it (or a fixed version of
it) back onto the requests topic.

A dead letter's id is `partition:offset` in the dead-letter topic. Re-driving one produces
the original record (its key, value and headers), or the records of a corrected file, with a
`genrelay-redriven-from` header naming where it came from. Re-driving twice is harmless: the
idempotency key still rules (a finished key replays its event; a key in hand is not sent
again).
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer

from genrelay.producers.errors import BrokerError
from genrelay.producers.kafka import read_topic
from genrelay.schemas.dead_letter import (
    TRUNCATED_FROM_HEADER,
    DeadLetterHeadersError,
    DeadLetterInfo,
)

REDRIVEN_FROM_HEADER = "genrelay-redriven-from"
# Dead-letter bookkeeping is not copied onto the re-driven record.
_DLQ_PREFIX = "genrelay-dlq-"


@dataclass(frozen=True)
class DeadLetter:
    id: str  # partition:offset in the dead-letter topic
    at: datetime
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    info: DeadLetterInfo | None  # None when its headers are not genrelay's

    @property
    def truncated(self) -> bool:
        return any(name == TRUNCATED_FROM_HEADER for name, _ in self.headers)

    @property
    def reason(self) -> str:
        return self.info.reason if self.info else "unknown"

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "reason": self.reason,
            "error": self.info.error if self.info else None,
            "key": _text(self.key) if self.key is not None else None,
            "source": (
                f"{self.info.source_topic}:{self.info.source_partition}:{self.info.source_offset}"
                if self.info
                else None
            ),
            "truncated": self.truncated,
        }

    def to_json(self) -> dict[str, Any]:
        body = self.summary()
        try:
            body["value"] = json.loads(self.value)
        except ValueError:
            body["value_base64"] = base64.b64encode(self.value).decode()
        return body


async def read_dead_letters(bootstrap: str, topic: str) -> list[DeadLetter]:
    letters = []
    for record in await read_topic(bootstrap, topic):
        headers = tuple((name, value or b"") for name, value in record.headers or ())
        try:
            info: DeadLetterInfo | None = DeadLetterInfo.from_headers(headers)
        except DeadLetterHeadersError:
            info = None
        letters.append(
            DeadLetter(
                id=f"{record.partition}:{record.offset}",
                at=datetime.fromtimestamp(record.timestamp / 1000, UTC),
                key=record.key,
                value=record.value or b"",
                headers=headers,
                info=info,
            )
        )
    return letters


def select(
    letters: Iterable[DeadLetter], *, reason: str | None = None, since: datetime | None = None
) -> list[DeadLetter]:
    return [
        letter
        for letter in letters
        if (reason is None or letter.reason == reason) and (since is None or letter.at >= since)
    ]


def counts(letters: Iterable[DeadLetter]) -> dict[str, int]:
    return dict(Counter(letter.reason for letter in letters).most_common())


@dataclass(frozen=True)
class Redrive:
    """One record to put back on the requests topic."""

    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


def redrive_of(letter: DeadLetter) -> Redrive:
    """The original record, as it was sent, marked with where it comes back from."""
    if letter.truncated:
        source = letter.summary()["source"]
        raise ValueError(
            f"dead letter {letter.id} holds only the start of its value; re-drive it from"
            f" its source ({source}) or with --file"
        )
    kept = tuple((n, v) for n, v in letter.headers if not n.startswith(_DLQ_PREFIX))
    return Redrive(letter.key, letter.value, (*kept, _marker(letter)))


def fixed_redrives(letter: DeadLetter, lines: Sequence[str]) -> list[Redrive]:
    """Corrected request records (JSON lines) that replace `letter`; each keyed by its own
    idempotency key."""
    redrives = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            key = str(record["idempotency_key"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"line {number}: not a request record with an idempotency_key"
            ) from exc
        redrives.append(Redrive(key.encode(), line.strip().encode(), (_marker(letter),)))
    return redrives


def _marker(letter: DeadLetter) -> tuple[str, bytes]:
    return (REDRIVEN_FROM_HEADER, f"dead-letter:{letter.id}".encode())


async def send(bootstrap: str, topic: str, redrives: Sequence[Redrive]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    try:
        await producer.start()
        for item in redrives:
            await producer.send_and_wait(
                topic, item.value, key=item.key, headers=list(item.headers)
            )
    except Exception as exc:  # aiokafka's errors, reported as one line
        raise BrokerError(f"cannot write {topic}: {exc!r}", retryable=True) from exc
    finally:
        await producer.stop()


def _text(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode()
