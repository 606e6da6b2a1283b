"""A relay wired to the session's Kafka and MinIO and to an in-process emulator."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client.parser import text_string_to_metric_families

from genrelay.consumer.ledger.partition_writer import PartitionWriter, Writers
from genrelay.consumer.service.config import Settings
from genrelay.consumer.service.relay import Relay
from genrelay.deploy.local.processes import free_port
from genrelay.deploy.local.stack import StackInfo
from genrelay.emulator.server import EmulatorServer


def relay_settings(stack: StackInfo, emulator: EmulatorServer, **overrides: Any) -> Settings:
    """Settings for one test: its own topics, group and bucket, so tests never share state."""
    run = uuid.uuid4().hex[:8]
    port = free_port()
    values: dict[str, Any] = {
        "kafka_bootstrap": stack.kafka_bootstrap,
        "group_id": f"genrelay-{run}",
        "topic_requests": f"{run}.requests",
        "topic_ledger": f"{run}.ledger",
        "topic_webhooks": f"{run}.webhooks",
        "topic_completions": f"{run}.completions",
        "topic_progress": f"{run}.progress",
        "topic_dead_letter": f"{run}.dead-letter",
        "topic_costs": f"{run}.costs",
        "topic_budgets": f"{run}.budgets",
        "topic_spend": f"{run}.spend",
        "partitions": 3,
        "fal_queue_url": emulator.base_url,
        "fal_platform_url": f"{emulator.base_url}/v1",
        "fal_key": "emulator-key",
        "fal_jwks_url": emulator.jwks_url,
        "http_port": port,
        "admin_port": free_port(),
        "public_webhook_url": f"http://127.0.0.1:{port}",
        "webhook_secret": "s" * 32 + run,
        "s3_endpoint": stack.s3_endpoint,
        "s3_access_key": stack.s3_access_key,
        "s3_secret_key": stack.s3_secret_key,
        "bucket": f"genrelay-{run}",
        "download_hosts": ["127.0.0.1"],
        "allow_private_downloads": True,
        "poll_grace_seconds": 2.0,
        "poll_max_interval_seconds": 2.0,
        "commit_interval_seconds": 0.2,
        "shutdown_grace_seconds": 5.0,
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def owned_partitions(
    bootstrap: str, group_id: str, partitions: Iterable[int]
) -> AsyncIterator[Writers]:
    """Started (so fencing) partition writers, as a relay that owns `partitions` holds them."""
    writers = Writers()
    started = []
    try:
        for partition in partitions:
            writer = PartitionWriter(
                bootstrap=bootstrap,
                group_id=group_id,
                partition=partition,
                offsets=dict,
                on_lost=lambda partition, exc: None,
            )
            await writer.start()
            started.append(writer)
            writers.add(writer)
        yield writers
    finally:
        for writer in started:
            await writer.close()


@dataclass
class RunningRelay:
    relay: Relay
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.relay.stop()
        await self.task


@contextlib.asynccontextmanager
async def running(
    settings: Settings, span_exporter: SpanExporter | None = None
) -> AsyncIterator[RunningRelay]:
    """A relay consuming in the background until the block ends."""
    async with Relay(settings, span_exporter=span_exporter) as relay:
        task = asyncio.get_running_loop().create_task(relay.run())
        running_relay = RunningRelay(relay, task)
        try:
            await asyncio.wait_for(relay.ready.wait(), timeout=60)
            yield running_relay
        finally:
            relay.stop()
            await task


def submit_record(key: str, prompt: str, **extra: Any) -> bytes:
    body = {
        "schema_version": 1,
        "action": "submit",
        "idempotency_key": key,
        "endpoint": "fal-ai/flux/schnell",
        "input": {"prompt": prompt, "seed": 7, "image_size": {"width": 64, "height": 64}},
        **extra,
    }
    return json.dumps(body).encode()


async def produce(
    bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes]]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


@dataclass
class TopicReader:
    """Reads a whole topic from the beginning, for assertions."""

    bootstrap: str
    topic: str
    records: list[Any] = field(default_factory=list)
    _consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> TopicReader:
        self._consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._consumer is not None
        await self._consumer.stop()

    async def until(self, done: Any, timeout: float = 120.0) -> list[Any]:
        """Read until `done(records)` holds, or fail after `timeout` seconds."""
        assert self._consumer is not None
        async with asyncio.timeout(timeout):
            while not done(self.records):
                batch = await self._consumer.getmany(timeout_ms=500)
                for messages in batch.values():
                    self.records.extend(messages)
        return self.records


async def scrape(settings: Settings) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The relay's Prometheus metrics: (sample name, sorted labels) -> value."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{settings.admin_port}/metrics")).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """The sum of a metric's samples whose labels include `labels` (0 when absent)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def completions_by_key(records: list[Any]) -> dict[str, list[dict[str, Any]]]:
    by_key: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        event = json.loads(record.value)
        by_key.setdefault(event["idempotency_key"], []).append(event)
    return by_key


async def submit_and_finish(bootstrap: str, settings: Settings, keys: list[str]) -> list[Any]:
    """Produce a plain request for each key (its prompt is the key) and wait until every key
    has its completion event; returns the completion records read."""
    records = [(k.encode(), submit_record(k, k)) for k in keys]
    await produce(bootstrap, settings.topic_requests, records)
    async with TopicReader(bootstrap, settings.topic_completions) as reader:
        await reader.until(lambda rs: len(completions_by_key(rs)) == len(keys))
    return reader.records
