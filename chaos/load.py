"""What a chaos run submits and when: a bounded plan of requests and the producer that sends it.

Each request's prompt is its idempotency key, so the provider's own accounting (what it was
paid for) can be counted per key without trusting anything genrelay reports.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer

IMAGE_ENDPOINTS = ("fal-ai/flux/schnell", "fal-ai/flux/dev", "fal-ai/fast-sdxl")
VIDEO_ENDPOINT = "fal-ai/fake-video"


@dataclass(frozen=True)
class Job:
    """One request of the plan: sent `at` seconds after the load starts."""

    key: str
    endpoint: str
    at: float
    value: bytes


@dataclass(frozen=True)
class Load:
    """`jobs` requests spread evenly over `seconds`, or sent in `bursts` equal groups.

    With bursts, group *g* goes to `endpoints[g % len(endpoints)]` (so an endpoint can sit
    idle between its bursts); otherwise requests take the endpoints in turn.
    """

    jobs: int
    seconds: float
    bursts: int = 1
    endpoints: tuple[str, ...] = IMAGE_ENDPOINTS[:1]
    image_side: int = 64
    video_frames: int = 24

    def plan(self, prefix: str) -> list[Job]:
        """The requests in sending order; keys are `<prefix>-<n>`."""
        jobs: list[Job] = []
        for n in range(self.jobs):
            if self.bursts > 1:
                group = n * self.bursts // self.jobs
                at = group * self.seconds / self.bursts
                endpoint = self.endpoints[group % len(self.endpoints)]
            else:
                at = n * self.seconds / self.jobs
                endpoint = self.endpoints[n % len(self.endpoints)]
            key = f"{prefix}-{n}"
            jobs.append(Job(key, endpoint, at, self._record(key, endpoint, n)))
        return jobs

    def _record(self, key: str, endpoint: str, n: int) -> bytes:
        model_input: dict[str, Any] = {"prompt": key, "seed": n}
        if endpoint == VIDEO_ENDPOINT:
            model_input["num_frames"] = self.video_frames
        else:
            side = self.image_side
            model_input["image_size"] = {"width": side, "height": side}
        body = {
            "schema_version": 1,
            "action": "submit",
            "idempotency_key": key,
            "endpoint": endpoint,
            "input": model_input,
            "metadata": {"chaos": "1"},
        }
        return json.dumps(body).encode()


async def produce(
    bootstrap: str,
    topic: str,
    jobs: list[Job],
    *,
    started: float,
    on_sent: Callable[[int], None],
) -> None:
    """Send each job at its time (relative to the monotonic `started`), acknowledged by the
    broker; `on_sent(n)` reports how many are acknowledged so far."""
    # A long request timeout lets the producer ride out a stopped broker instead of failing.
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, request_timeout_ms=120_000
    )
    await producer.start()
    acknowledged = 0

    def acked(_: object) -> None:
        nonlocal acknowledged
        acknowledged += 1
        on_sent(acknowledged)

    try:
        pending: list[asyncio.Future[Any]] = []
        for job in jobs:
            delay = started + job.at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            future = await producer.send(topic, job.value, key=job.key.encode())
            future.add_done_callback(acked)
            pending.append(future)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
