"""In-memory stand-ins for Kafka, for testing code that submits requests or awaits completions.

sender = RecordingSender()
async with GenrelayProducer(sender) as producer:
    await producer.submit("fal-ai/flux/schnell", {"prompt": "a lighthouse"})
assert sender.records[0].topic == "genrelay.requests"

source = MemoryCompletionSource()
async with CompletionWatcher(source) as watcher:
    source.publish(event)
    assert await watcher.await_completion(event.idempotency_key, timeout=1) == event
"""

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from genrelay.schemas.base import to_json_bytes
from genrelay.schemas.completions import CompletionEvent


@dataclass(frozen=True, slots=True)
class SentRecord:
    """One record as a `RecordSender` was asked to send it."""

    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


class RecordingSender:
    """A `RecordSender` that keeps every record; set `failure` to make sends raise it."""

    def __init__(self) -> None:
        self.records: list[SentRecord] = []
        self.failure: Exception | None = None
        self.started = False
        self.stopped = False

    async def start(self) -> None:
        """Mark the sender started."""
        self.started = True

    async def stop(self) -> None:
        """Mark the sender stopped."""
        self.stopped = True

    async def send(
        self, topic: str, *, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> None:
        """Keep the record, or raise `failure` if it is set."""
        if self.failure is not None:
            raise self.failure
        self.records.append(SentRecord(topic, key, value, tuple(headers)))


class MemoryCompletionSource:
    """A `CompletionSource` whose records are whatever `publish` was given, in order."""

    def __init__(self) -> None:
        self._pending: asyncio.Queue[bytes] = asyncio.Queue()

    def publish(self, record: CompletionEvent | bytes) -> None:
        """Make a completion event (or any raw value) readable."""
        value = to_json_bytes(record) if isinstance(record, CompletionEvent) else record
        self._pending.put_nowait(value)

    async def start(self) -> None:
        """Nothing to connect."""

    async def stop(self) -> None:
        """Nothing to disconnect."""

    async def fetch(self, timeout: float) -> Sequence[bytes]:
        """Every published value not yet fetched, waiting up to `timeout` s for the first."""
        try:
            first = await asyncio.wait_for(self._pending.get(), timeout)
        except TimeoutError:
            return []
        values = [first]
        while not self._pending.empty():
            values.append(self._pending.get_nowait())
        return values
