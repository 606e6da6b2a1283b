"""The load: request records produced in a burst or at a steady rate, and readers of the topics
the figures are computed from.

Every request asks for one small PNG; its idempotency key is also its prompt, so the
emulator's log of paid submissions can be counted per key whichever client submitted it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

__all__ = ["read_topic"]  # re-exported: bench and tests read whole topics through it

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import JsonValue

from genrelay.producers.kafka import read_topic
from genrelay.schemas.base import to_json_bytes
from genrelay.schemas.requests import SubmitRequest

ENDPOINT = "fal-ai/flux/schnell"
IMAGE_SIZE: dict[str, JsonValue] = {"width": 64, "height": 64}


def submit_value(key: str) -> bytes:
    """A valid submit record for one small PNG."""
    request = SubmitRequest(
        idempotency_key=key,
        endpoint=ENDPOINT,
        input={"prompt": key, "image_size": IMAGE_SIZE, "num_images": 1},
    )
    return to_json_bytes(request)


class RequestProducer:
    """Produces submit records keyed by idempotency key, as a producer service would."""

    def __init__(self, bootstrap: str) -> None:
        # linger 0: a record's timestamp is when it was handed over, not when a batch filled.
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=0
        )

    async def __aenter__(self) -> Self:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._producer.stop()

    async def burst(self, topic: str, keys: list[str]) -> float:
        """Produce every record as fast as possible; returns the wall time it started."""
        records = [(key.encode(), submit_value(key)) for key in keys]
        started = time.time()
        sent = [await self._producer.send(topic, value, key=key) for key, value in records]
        await asyncio.gather(*sent)
        return started

    async def paced(self, topic: str, keys: list[str], per_second: float) -> float:
        """Produce one record every 1/`per_second` s (open loop); returns the start time."""
        records = [(key.encode(), submit_value(key)) for key in keys]
        loop = asyncio.get_running_loop()
        began, started = loop.time(), time.time()
        sent = []
        for n, (key, value) in enumerate(records):
            delay = began + n / per_second - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sent.append(await self._producer.send(topic, value, key=key))
        await asyncio.gather(*sent)
        return started


@dataclass(frozen=True)
class Completion:
    """One completion event as the bench needs it: when the broker took it, its status and
    the type of its error, if any."""

    appended_ms: int
    status: str
    error_type: str | None = None


class CompletionWatch:
    """Reads a completion topic from its beginning and waits for given keys to finish."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        # No group: every partition is assigned, nothing is committed.
        self._consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        self.seen: dict[str, Completion] = {}

    async def __aenter__(self) -> Self:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._consumer.stop()

    async def wait(
        self, keys: list[str], timeout: float, alive: Callable[[], None]
    ) -> dict[str, Completion]:
        """The completions of `keys`, once all have arrived; TimeoutError otherwise.

        `alive` is called between reads and raises if the producers of the events are gone.
        """
        wanted = set(keys)
        try:
            async with asyncio.timeout(timeout):
                while not wanted <= self.seen.keys():
                    alive()
                    batch = await self._consumer.getmany(timeout_ms=200, max_records=5000)
                    for records in batch.values():
                        for record in records:
                            self._take(record)
        except TimeoutError:
            missing = len(wanted - self.seen.keys())
            raise TimeoutError(
                f"{missing} of {len(wanted)} completions missing after {timeout:.0f} s"
            ) from None
        return {key: self.seen[key] for key in keys}

    def _take(self, record: Any) -> None:
        key = record.key.decode()
        if key not in self.seen:
            event = json.loads(record.value)
            error = event.get("error") or {}
            self.seen[key] = Completion(record.timestamp, str(event["status"]), error.get("type"))
