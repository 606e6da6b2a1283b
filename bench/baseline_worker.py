"""The baselines genrelay is compared with, each run as its own process by `baselines.py`.

    naive         what a user writes without genrelay: an aiokafka consumer that calls the
                  official `fal-client`'s `subscribe` per record (it polls the status every
                  0.1 s), downloads the image with httpx, uploads it with `minio`, and commits
                  the record's offset after each job. No ledger: a crash or a retried submit
                  can pay twice, and out-of-order commits can skip a record.
    floor         the transport limit: consume, then one POST of the input to the provider per
                  record, nothing else; the httpx API on the aiohttp engine genrelay uses.
    floor-httpx   the same with httpx's own connection pool.

Protocol with the parent: JSON lines on stdout, `{"event": "warm"}` once the warm-up records
are handled and `{"event": "done", "last_done_at": <unix time>, ...}` after the measured ones,
with the failed jobs by error type and phase, and p50/p99 of the measured jobs' end-to-end
time (the record's CreateTime to the job done); then the process waits to be terminated, so
its memory can still be read.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from minio import Minio

from genrelay.bench.measure import summary_ms
from genrelay.consumer.provider.http_transport import pooled_client

log = logging.getLogger("genrelay.bench.baseline")
Job = Callable[[Any], Coroutine[Any, Any, None]]
KINDS = ("naive", "floor", "floor-httpx")


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def drive(consumer: AIOKafkaConsumer, job: Job, args: argparse.Namespace) -> None:
    """Run `job` per record, at most `concurrency` at once, and report warm-up and done."""
    slots = asyncio.Semaphore(args.concurrency)
    produced_ms: dict[asyncio.Task[None], int] = {}  # running job -> its record's CreateTime
    finished = asyncio.Event()
    tally = {"done": 0, "errors": 0}
    failed: dict[str, Counter[str]] = {"warm": Counter(), "measured": Counter()}
    end_to_end: list[float] = []

    def settle(task: asyncio.Task[None]) -> None:
        produced = produced_ms.pop(task)
        slots.release()
        tally["done"] += 1
        # The measured records are produced only once the warm-up is reported done.
        phase = "warm" if tally["done"] <= args.warmup else "measured"
        if phase == "measured":
            end_to_end.append(time.time() * 1000 - produced)
        if task.cancelled() or task.exception() is not None:
            tally["errors"] += 1
            failed[phase][failure_type(task)] += 1
            if not task.cancelled():
                log.error("job failed: %r", task.exception())
        if tally["done"] == args.warmup:
            emit("warm")
        if tally["done"] == args.warmup + args.jobs:
            emit(
                "done",
                last_done_at=time.time(),
                jobs=args.jobs,
                errors=tally["errors"],
                errors_by_type={name: dict(counts) for name, counts in failed.items()},
                end_to_end_ms=summary_ms(end_to_end),
            )
            finished.set()

    while not finished.is_set():
        batch = await consumer.getmany(timeout_ms=100, max_records=500)
        for records in batch.values():
            for record in records:
                await slots.acquire()
                task = asyncio.get_running_loop().create_task(job(record))
                produced_ms[task] = record.timestamp
                task.add_done_callback(settle)


def failure_type(task: asyncio.Task[None]) -> str:
    """The provider's error type of a failed job (fal-client carries it), else the exception's
    class."""
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    return str(getattr(exc, "error_type", None) or type(exc).__name__)


def consumer_for(args: argparse.Namespace, *, auto_commit: bool) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=auto_commit,
        auto_offset_reset="earliest",
    )


async def naive(args: argparse.Namespace) -> None:
    # fal's SDK is a development dependency (pip install 'genrelay[dev]'): imported here, so
    # the module itself imports from a plain install.
    import fal_client
    import fal_client.client

    fal_client.client.QUEUE_URL_FORMAT = args.emulator + "/"
    fal = fal_client.AsyncClient()  # FAL_KEY from the environment, as its docs say
    downloads = httpx.AsyncClient(timeout=60.0)
    store = Minio(
        args.s3_endpoint,
        access_key=os.environ["BENCH_S3_ACCESS_KEY"],
        secret_key=os.environ["BENCH_S3_SECRET_KEY"],
        secure=False,
    )
    if not store.bucket_exists(args.bucket):
        store.make_bucket(args.bucket)
    consumer = consumer_for(args, auto_commit=False)

    async def job(record: Any) -> None:
        request = json.loads(record.value)
        result = await fal.subscribe(request["endpoint"], arguments=request["input"])
        image = result["images"][0]
        response = await downloads.get(image["url"])
        response.raise_for_status()
        data = response.content
        name = f"{request['idempotency_key']}/0.png"
        await asyncio.to_thread(
            store.put_object,
            args.bucket,
            name,
            io.BytesIO(data),
            len(data),
            content_type=image.get("content_type") or "image/png",
        )
        await consumer.commit({TopicPartition(record.topic, record.partition): record.offset + 1})

    await consumer.start()
    await drive(consumer, job, args)


async def floor(args: argparse.Namespace) -> None:
    timeout = httpx.Timeout(60.0, connect=10.0)
    if args.kind == "floor":
        client = pooled_client(timeout=timeout, max_connections=args.concurrency)
    else:
        limits = httpx.Limits(max_connections=args.concurrency)
        client = httpx.AsyncClient(timeout=timeout, limits=limits)
    headers = {"Authorization": f"Key {os.environ['FAL_KEY']}", "Content-Type": "application/json"}
    consumer = consumer_for(args, auto_commit=True)

    async def job(record: Any) -> None:
        request = json.loads(record.value)
        url = f"{args.emulator}/{request['endpoint']}"
        response = await client.post(url, content=json.dumps(request["input"]), headers=headers)
        response.raise_for_status()

    await consumer.start()
    await drive(consumer, job, args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m genrelay.bench.baseline_worker")
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--emulator", required=True, help="the emulator's base URL")
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--jobs", type=int, required=True)
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--s3-endpoint", default="")
    p.add_argument("--bucket", default="")
    return p


async def _run(args: argparse.Namespace) -> None:
    await (naive(args) if args.kind == "naive" else floor(args))
    # Stay alive until terminated: the parent reads this process's peak memory first.
    await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one baseline until terminated."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
