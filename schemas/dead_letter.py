"""Dead-letter reason codes and the Kafka headers that carry them.

A dead-letter record keeps the original key and value bytes untouched (unless they are too
large to copy: see `TRUNCATED_FROM_HEADER`); why it was refused and where it came from travel
in headers, as `(name, bytes)` pairs like aiokafka uses.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Self

REASON_HEADER = "genrelay-dlq-reason"
ERROR_HEADER = "genrelay-dlq-error"
SOURCE_TOPIC_HEADER = "genrelay-dlq-source-topic"
SOURCE_PARTITION_HEADER = "genrelay-dlq-source-partition"
SOURCE_OFFSET_HEADER = "genrelay-dlq-source-offset"
# Present only when the original value was too large to copy whole: its size in bytes. The
# value is then its first bytes; the whole record is still at the source topic and offset.
TRUNCATED_FROM_HEADER = "genrelay-dlq-truncated-from"

# Error texts can be long (validation summaries); headers stay small.
ERROR_MAX_CHARS = 1024

Headers = list[tuple[str, bytes]]


class DeadLetterReason(StrEnum):
    """Machine-readable reasons a request record was refused. The values are stable."""

    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    MISSING_IDEMPOTENCY_KEY = "missing_idempotency_key"
    INVALID_ENDPOINT = "invalid_endpoint"
    SCHEMA_VIOLATION = "schema_violation"
    OVERSIZED = "oversized"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"


class DeadLetterHeadersError(ValueError):
    """A record's headers lack a dead-letter field or hold a malformed one."""


@dataclass(frozen=True, slots=True)
class DeadLetterInfo:
    """Why a record was dead-lettered and where it was read from.

    `reason` is a `DeadLetterReason` value; it is typed `str` so that a reader built before a
    reason was added can still read records that carry it.
    """

    reason: str
    error: str
    source_topic: str
    source_partition: int
    source_offset: int

    def to_headers(self) -> Headers:
        """The headers to put on the dead-letter record; the error text is truncated."""
        return [
            (REASON_HEADER, self.reason.encode()),
            (ERROR_HEADER, self.error[:ERROR_MAX_CHARS].encode()),
            (SOURCE_TOPIC_HEADER, self.source_topic.encode()),
            (SOURCE_PARTITION_HEADER, str(self.source_partition).encode()),
            (SOURCE_OFFSET_HEADER, str(self.source_offset).encode()),
        ]

    @classmethod
    def from_headers(cls, headers: Iterable[tuple[str, bytes]]) -> Self:
        """Read the dead-letter fields from a record's headers; other headers are ignored.

        Raises:
            DeadLetterHeadersError: a field is missing, not UTF-8, or not a number.
        """
        values = dict(headers)
        return cls(
            reason=_text(values, REASON_HEADER),
            error=_text(values, ERROR_HEADER),
            source_topic=_text(values, SOURCE_TOPIC_HEADER),
            source_partition=_number(values, SOURCE_PARTITION_HEADER),
            source_offset=_number(values, SOURCE_OFFSET_HEADER),
        )


def _text(values: dict[str, bytes], name: str) -> str:
    try:
        return values[name].decode()
    except KeyError:
        raise DeadLetterHeadersError(f"header {name} is missing") from None
    except UnicodeDecodeError as exc:
        raise DeadLetterHeadersError(f"header {name} is not UTF-8") from exc


def _number(values: dict[str, bytes], name: str) -> int:
    text = _text(values, name)
    if not text.isascii() or not text.isdigit():
        raise DeadLetterHeadersError(f"header {name} is not a non-negative integer: {text!r}")
    return int(text)
