"""The baselines genrelay is compared with, each run as its own process by `baselines.py`.

    naive         what a user writes without genrelay: an aiokafka consumer that calls the
                  official `fal-client`'s `subscribe` per record (it polls the status every
                  0.1 s), downloads the image with httpx, uploads it with `minio`, and commits
                  the record's offset after each job. No ledger: a crash or a retried submit
                  can pay twice, and out-of-order commits can skip a record.
    floor         the transport limit: consume, then one POST of the input to the provider per
                  record, nothing else; the httpx API on the aiohttp engine genrelay uses.
    floor-httpx   the same with httpx's own connection pool.
    floor-job     a whole job's traffic and nothing else, on genrelay's HTTP clients (httpx on
                  aiohttp's engine to fal and for the download, aiohttp's own for the upload):
                  consume, the submit with a webhook URL, the webhook received (aiohttp's
                  server), the result read, the file downloaded and PUT to S3 (a presigned
                  URL), the completion event produced; offsets auto-committed. No ledger, no
                  transactions, no signature checks, no retries: what any relay on these
                  clients must at least spend per job on this machine.
    floor-job-aiohttp  the same with every call on aiohttp's own client: what the httpx layer
                  costs genrelay's three calls through it.

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
from datetime import timedelta
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
import httpx
import yarl
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from minio import Minio

from genrelay.bench.measure import summary_ms
from genrelay.consumer.provider.http_transport import pooled_client

log = logging.getLogger("genrelay.bench.baseline")
Job = Callable[[Any], Coroutine[Any, Any, None]]
KINDS = ("naive", "floor", "floor-httpx", "floor-job", "floor-job-aiohttp")


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


class Webhooks:
    """An aiohttp server that resolves each job's wait when its webhook arrives."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._receive)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook"

    def expect(self, key: str) -> asyncio.Future[None]:
        arrival = asyncio.get_running_loop().create_future()
        self._waiting[key] = arrival
        return arrival

    def forget(self, key: str) -> None:
        self._waiting.pop(key, None)

    async def _receive(self, request: web.Request) -> web.Response:
        json.loads(await request.read())
        arrival = self._waiting.pop(request.query.get("key", ""), None)
        if arrival is not None and not arrival.done():
            arrival.set_result(None)
        return web.Response(status=200)


Answer = tuple[int, bytes]  # status, body


class Http(Protocol):
    async def __call__(
        self, method: str, url: str, *, body: bytes | None = None, headers: dict[str, str]
    ) -> Answer: ...


def httpx_calls(args: argparse.Namespace) -> Http:
    """genrelay's client: the httpx API on aiohttp's engine."""
    client = pooled_client(
        timeout=httpx.Timeout(60.0, connect=10.0), max_connections=args.concurrency
    )

    async def call(
        method: str, url: str, *, body: bytes | None = None, headers: dict[str, str]
    ) -> Answer:
        response = await client.request(method, url, content=body, headers=headers)
        return response.status_code, response.content

    return call


def aiohttp_calls(args: argparse.Namespace) -> Http:
    """aiohttp's own client API, with the same connection limit."""
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=args.concurrency),
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=60.0, sock_connect=10.0),
    )

    async def call(
        method: str, url: str, *, body: bytes | None = None, headers: dict[str, str]
    ) -> Answer:
        # Already quoted (the webhook URL, the presigned query): sent as it is.
        async with session.request(
            method, yarl.URL(url, encoded=True), data=body, headers=headers
        ) as response:
            return response.status, await response.read()

    return call


def ok(answer: Answer, what: str) -> bytes:
    status, body = answer
    if not 200 <= status < 300:
        raise RuntimeError(f"{what}: HTTP {status}")
    return body


async def floor_job(args: argparse.Namespace) -> None:
    # genrelay's own split: fal and the download on httpx, the upload on aiohttp (MinioStore).
    uploads = aiohttp_calls(args)
    http = uploads if args.kind == "floor-job-aiohttp" else httpx_calls(args)
    auth = {"Authorization": f"Key {os.environ['FAL_KEY']}"}
    store = Minio(
        args.s3_endpoint,
        access_key=os.environ["BENCH_S3_ACCESS_KEY"],
        secret_key=os.environ["BENCH_S3_SECRET_KEY"],
        secure=False,
        region="us-east-1",  # known, so presigning asks the server nothing
    )
    if not store.bucket_exists(args.bucket):
        store.make_bucket(args.bucket)
    webhooks = Webhooks()
    await webhooks.start()
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, acks="all")
    await producer.start()
    consumer = consumer_for(args, auto_commit=True)

    async def job(record: Any) -> None:
        request = json.loads(record.value)
        key = request["idempotency_key"]
        hook = quote(f"{webhooks.url}?key={quote(key, safe='')}", safe="")
        arrival = webhooks.expect(key)
        submit_url = f"{args.emulator}/{request['endpoint']}?fal_webhook={hook}"
        body = json.dumps(request["input"]).encode()
        json_auth = {**auth, "Content-Type": "application/json"}
        submitted = json.loads(
            ok(await http("POST", submit_url, body=body, headers=json_auth), "submit")
        )
        try:
            await asyncio.wait_for(arrival, 60.0)
        finally:
            webhooks.forget(key)
        result = json.loads(
            ok(await http("GET", submitted["response_url"], headers=auth), "result")
        )
        image = result["images"][0]
        data = ok(await http("GET", image["url"], headers={}), "download")
        target = store.presigned_put_object(args.bucket, f"{key}/0.png", timedelta(hours=1))
        ok(await uploads("PUT", target, body=data, headers={"Content-Type": "image/png"}), "upload")
        event = {"idempotency_key": key, "status": "succeeded", "files": [target.split("?")[0]]}
        await producer.send_and_wait(args.events_topic, json.dumps(event).encode(), key.encode())

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
    p.add_argument("--events-topic", default="", help="floor-job: where completions go")
    return p


async def _run(args: argparse.Namespace) -> None:
    runs = {"naive": naive, "floor-job": floor_job, "floor-job-aiohttp": floor_job}
    await runs.get(args.kind, floor)(args)
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
