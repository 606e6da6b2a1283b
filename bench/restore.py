"""Scenario 3 (in part): restoring a ledger partition that holds `Plan.ledger_keys` keys.

The partition is filled with COMPLETED records shaped like the ones the throughput scenario
leaves behind (request, provider job, stored result and completion event; every identifier
unique per key), produced in large uncompressed batches. Then `Ledger.restore` reads it back
in this process, timed, with the memory it keeps: a cold rebuild of the local store from the
topic, then, after a clean release wrote the store's checkpoint, a warm restore that reads
only the tail. A dedup window of finished keys is what a long-lived partition mostly holds.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import JsonValue

from genrelay.bench.context import Bench
from genrelay.bench.measure import rss_bytes
from genrelay.bench.services import delete_topics
from genrelay.bench.workload import ENDPOINT, IMAGE_SIZE
from genrelay.consumer.ledger.ledger import Ledger, state_headers
from genrelay.consumer.ledger.partition_writer import Writers
from genrelay.consumer.service.process import tune_collector
from genrelay.schemas.completions import Artifact, CompletionEvent, Timings
from genrelay.schemas.ledger import LedgerRecord, Phase, ProviderJob

_MB = 1024 * 1024
_FIELDS = ("key", "fingerprint", "request_id", "event_id", "sha256")


def record_template() -> str:
    """One COMPLETED record as JSON, with `%(field)s` where per-key values go."""
    now = datetime.now(UTC)
    mark = {name: f"@@{name}@@" for name in _FIELDS}
    key = mark["key"]
    base = f"http://127.0.0.1:8000/fal-ai/flux/requests/{mark['request_id']}"
    request = {
        "schema_version": 1,
        "action": "submit",
        "idempotency_key": key,
        "endpoint": ENDPOINT,
        "input": {"prompt": key, "image_size": IMAGE_SIZE, "num_images": 1},
        "priority": "normal",
        "metadata": {},
    }
    stored = f"s3://genrelay/{key}/0.png"
    result: dict[str, JsonValue] = {
        "images": [{"object": stored, "width": 64, "height": 64, "content_type": "image/png"}],
        "timings": {"inference": 0.0},
        "seed": 7,
        "has_nsfw_concepts": [False],
        "prompt": key,
    }
    event = CompletionEvent(
        event_id=mark["event_id"],
        idempotency_key=key,
        status="succeeded",
        endpoint=ENDPOINT,
        request_id=mark["request_id"],
        artifacts=[
            Artifact(
                bucket="genrelay",
                key=f"{key}/0.png",
                size=1320,
                sha256="0" * 64,
                content_type="image/png",
                etag="d41d8cd98f00b204e9800998ecf8427e",
            )
        ],
        result=result,
        error=None,
        timings=Timings(queued_ms=12, running_ms=0, total_ms=12),
        attempts=1,
        cost_units=None,
        cost_usd=None,
        cost_source=None,
        metadata={},
        replayed=False,
    )
    record = LedgerRecord(
        idempotency_key=key,
        phase=Phase.COMPLETED,
        fingerprint="1" * 64,
        endpoint=ENDPOINT,
        request=request,
        attempts=1,
        job=ProviderJob(
            request_id=mark["request_id"],
            gateway_request_id=mark["request_id"],
            status_url=f"{base}/status",
            response_url=base,
            cancel_url=f"{base}/cancel",
        ),
        result=result,
        event=event,
        published=True,
        accepted_at=now,
        submitted_at=now,
        finished_at=now,
        updated_at=now,
    )
    text = record.model_dump_json(exclude_defaults=True).replace("%", "%%")  # as `Ledger` does
    text = text.replace("0" * 64, "@@sha256@@").replace("1" * 64, "@@fingerprint@@")
    for name, placeholder in mark.items():
        text = text.replace(placeholder, f"%({name})s")
    return text


def _value(template: str, prefix: str, n: int) -> tuple[bytes, bytes]:
    # Keys in no particular order, like the UUIDs or hashes producers use: a store written in
    # key order would flatter the rebuild (every insert at the end of its index).
    key = f"{prefix}-{hashlib.sha256(f'{prefix}-{n}'.encode()).hexdigest()[:32]}"
    digest = hashlib.sha256(key.encode()).hexdigest()
    fields = {
        "key": key,
        "fingerprint": digest,
        "request_id": f"{n:08x}-0000-4000-8000-{n:012x}",
        "event_id": f"{n:08x}-0000-5000-8000-{n:012x}",
        "sha256": digest[::-1],
    }
    return key.encode(), (template % fields).encode()


async def fill(
    bootstrap: str, topic: str, template: str, prefix: str, keys: int, *, partition: int = 0
) -> None:
    """Produce `keys` COMPLETED ledger records to one partition, fast."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks=1,
        linger_ms=50,
        max_batch_size=1024 * 1024,
        max_request_size=8 * 1024 * 1024,
        compression_type=None,
    )
    await producer.start()
    try:
        sent = []
        n = 0
        headers = list(state_headers(True, time.time()))
        while n < keys:
            # Whole batches: far fewer Python calls per record than one send() each.
            batch = producer.create_batch()
            while n < keys:
                key, value = _value(template, prefix, n)
                # The headers genrelay puts on a finished key's state.
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    break
                n += 1
            batch.close()
            sent.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def restore(bench: Bench) -> dict[str, Any]:
    """Fill one ledger partition, then time `Ledger.restore` of it."""
    keys = bench.plan.ledger_keys
    template = record_template()
    bootstrap = bench.stack.kafka_bootstrap
    topic = f"bench-{bench.run_id}-restore.ledger"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        compacted = {"cleanup.policy": "compact"}
        await admin.create_topics([NewTopic(topic, 1, 1, topic_configs=compacted)])
    finally:
        await admin.close()
    try:
        began = time.monotonic()
        await fill(bootstrap, topic, template, f"bench-{bench.run_id}-restore", keys)
        filled = time.monotonic() - began
        # The partition was written long before a replica restores it: its pages are on disk,
        # not still being written back while the restore writes its own store.
        await asyncio.to_thread(os.sync)
        return await _timed_restore(bootstrap, topic, keys, filled, len(template))
    finally:
        gc.collect()
        await delete_topics(bootstrap, [topic])


async def _timed_restore(
    bootstrap: str, topic: str, keys: int, filled: float, record_bytes: int
) -> dict[str, Any]:
    # The ledger only reads here: it owns no writers. Its stores live in a scratch folder.
    thresholds = gc.get_threshold()
    with tempfile.TemporaryDirectory(prefix="bench-state-") as state:
        ledger = Ledger(Writers(), bootstrap, topic, Path(state))
        gc.collect()
        tune_collector()  # the cyclic collector as the relay runs it
        rss_before, cpu_before = rss_bytes(os.getpid()), time.process_time()
        cold = await ledger.restore([0])
        cpu = time.process_time() - cpu_before
        held = rss_bytes(os.getpid()) - rss_before
        restored = len(ledger)
        # Let the partition go cleanly (checkpoint), then own it again: only the tail is read.
        ledger.release([0])
        again = Ledger(Writers(), bootstrap, topic, Path(state))
        warm = await again.restore([0])
        again.release([0])
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    return {
        "keys": keys,
        "keys_restored": restored,
        "records_read": cold.records_read,
        "record_bytes": record_bytes,
        "fill_seconds": round(filled, 1),
        "restore_seconds": round(cold.seconds, 2),
        "records_per_second": round(cold.records_read / cold.seconds) if cold.seconds else None,
        "restore_cpu_seconds": round(cpu, 2),
        "warm_restore_seconds": round(warm.seconds, 3),
        "warm_records_read": warm.records_read,
        "memory_mb": round(held / _MB, 1),
        "rss_bytes_per_finished_key": round(max(0, held) / keys, 1),
    }
