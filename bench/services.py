"""The processes a scenario measures: the emulator, relay replicas, and their topics.

Each runs in its own process so CPU time and memory are its own, and so the load generator,
the provider and the relay never share an event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import httpx
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from minio import Minio
from minio.deleteobjects import DeleteObject

from genrelay.bench.context import Bench
from genrelay.consumer.service.config import Settings
from genrelay.deploy.local.processes import ManagedProcess, free_port
from genrelay.deploy.local.replicas import RelayProcess
from genrelay.deploy.local.stack import StackInfo
from genrelay.schemas.topics import Topics

EMULATOR_KEY = "emulator-key"
_ANNOUNCED = re.compile(r"http://127\.0\.0\.1:\d+")
# Calls a client makes to the provider (webhooks go the other way and are not counted).
PROVIDER_CALLS = (
    "submissions",
    "rejected_submits",
    "unauthorized",
    "status_polls",
    "status_streams",
    "result_fetches",
    "file_downloads",
    "cancel_requests",
)


@dataclass(frozen=True)
class ProviderConditions:
    """How the emulated provider behaves in one run: run times, lost webhooks, failures."""

    run_median_ms: float = 0.0
    # 0: every job runs exactly `run_median_ms`; above 0, run times are lognormal.
    run_sigma: float = 0.0
    webhook_loss: float = 0.0
    # Final failures (fal's queue does not retry this type), drawn per job.
    failure_rate: float = 0.0
    failure_type: str = "runner_server_error"
    # Jobs one endpoint runs at once; None: the emulator's default.
    runners: int | None = None

    def flags(self) -> dict[str, str]:
        """The emulator's command-line settings for these conditions."""
        latency = (
            f"lognormal:{self.run_median_ms:g}:{self.run_sigma:g}"
            if self.run_sigma
            else f"fixed:{self.run_median_ms:g}"
        )
        flags = {"run_latency": latency, "webhook_loss_rate": str(self.webhook_loss)}
        if self.failure_rate:
            flags |= {"failure_rate": str(self.failure_rate), "failure_types": self.failure_type}
        if self.runners is not None:
            flags["concurrency"] = str(self.runners)
        return flags

    def slowest_job_seconds(self) -> float:
        """How long the provider may run one job: four sigmas into a lognormal's tail."""
        return self.run_median_ms * math.exp(4 * self.run_sigma) / 1000

    def as_json(self) -> dict[str, Any]:
        return {
            "run_latency": self.flags()["run_latency"],
            "run_median_ms": self.run_median_ms,
            "run_sigma": self.run_sigma,
            "webhook_loss": self.webhook_loss,
            "failure_rate": self.failure_rate,
            "failure_type": self.failure_type if self.failure_rate else None,
            "runners_per_endpoint": self.runners,
        }


class EmulatorProcess:
    """`python -m genrelay.emulator` with the given settings as flags.

    It binds a port of its own choosing and announces its URL on its first line of output,
    so no other program on the machine can take the port between choosing and binding.
    """

    def __init__(self, workdir: Path, name: str, **settings: str) -> None:
        flags = {"port": "0", "seed": "1", **settings}
        argv = [sys.executable, "-m", "genrelay.emulator", "--log-level", "WARNING"]
        for flag, value in flags.items():
            argv += ["--" + flag.replace("_", "-"), value]
        self.process = ManagedProcess(name, argv, workdir / f"{name}.log")
        self.base_url = ""
        self._log_start = 0
        self._http = httpx.AsyncClient(timeout=120.0)

    @property
    def jwks_url(self) -> str:
        return f"{self.base_url}/.well-known/jwks.json"

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    async def __aenter__(self) -> Self:
        # The log is appended to: an earlier emulator's address in it must not be taken.
        log = self.process.log_path
        self._log_start = log.stat().st_size if log.exists() else 0
        self.process.start()
        async with asyncio.timeout(60):
            while not (url := self._announced()):
                if self.process.exit_code() is not None:
                    raise self.process.fail("exited during start")
                # Polling is deliberate: the state belongs to another process.
                await asyncio.sleep(0.05)
        self.base_url = url
        return self

    def _announced(self) -> str:
        try:
            with self.process.log_path.open("rb") as log:
                log.seek(self._log_start)
                lines = log.read().decode(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return next((line for line in lines if _ANNOUNCED.fullmatch(line)), "")

    async def __aexit__(self, *exc_info: object) -> None:
        await self._http.aclose()
        await asyncio.to_thread(self.process.stop, 10.0)

    async def stats(self) -> dict[str, Any]:
        """The emulator's counters (`/_emulator/stats`)."""
        response = await self._http.get(f"{self.base_url}/_emulator/stats")
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats

    async def submissions(self) -> list[dict[str, Any]]:
        """Every accepted (paid) submission, in arrival order."""
        response = await self._http.get(f"{self.base_url}/_emulator/submissions")
        response.raise_for_status()
        items: list[dict[str, Any]] = response.json()["submissions"]
        return items

    async def describe(self, request_id: str) -> dict[str, Any]:
        """The emulator's view of one request (its `completed_at`, for instance)."""
        response = await self._http.get(f"{self.base_url}/_emulator/requests/{request_id}")
        response.raise_for_status()
        view: dict[str, Any] = response.json()
        return view


def provider_calls(stats: dict[str, Any], jobs: int) -> dict[str, Any]:
    """HTTP calls the client made to the provider, per job and by kind."""
    by_kind = {name: int(stats.get(name, 0)) for name in PROVIDER_CALLS}
    total = sum(by_kind.values())
    return {
        "per_job": round(total / jobs, 3) if jobs else None,
        "total": total,
        "by_kind": {name: n for name, n in by_kind.items() if n},
        "webhooks_delivered": int(stats.get("webhooks_delivered", 0)),
    }


def spend(submissions: list[dict[str, Any]], expected: set[str]) -> dict[str, Any]:
    """Paid submissions per unique key, from the provider's own log (must be exactly 1)."""
    paid = Counter(str(item["input"].get("prompt")) for item in submissions)
    unexpected = sum(n for key, n in paid.items() if key not in expected)
    keys = len(paid)
    return {
        "submissions": sum(paid.values()),
        "unique_keys": keys,
        "expected_keys": len(expected),
        "per_key": round(sum(paid.values()) / keys, 6) if keys else None,
        "max_per_key": max(paid.values(), default=0),
        "unpaid_keys": len(expected - paid.keys()),
        "unexpected_keys": unexpected,
        "ok": keys == len(expected) and sum(paid.values()) == keys and not unexpected,
    }


def relay_settings(
    bench: Bench,
    topics: Topics,
    emulator: EmulatorProcess,
    *,
    webhooks: bool,
    **overrides: Any,
) -> Settings:
    """A relay on the bench's stack and emulator; webhooks point at its own port."""
    port = free_port()
    concurrency = bench.plan.concurrency
    values: dict[str, Any] = {
        "kafka_bootstrap": bench.stack.kafka_bootstrap,
        "group_id": f"{topics.requests}.relay",
        "topic_requests": topics.requests,
        "topic_ledger": topics.ledger,
        "topic_webhooks": topics.webhooks,
        "topic_completions": topics.completions,
        "topic_progress": topics.progress,
        "topic_dead_letter": topics.dead_letter,
        "topic_costs": topics.costs,
        "topic_budgets": topics.budgets,
        "topic_spend": topics.spend,
        "partitions": bench.plan.partitions,
        "fal_queue_url": emulator.base_url,
        "fal_platform_url": f"{emulator.base_url}/v1",
        "fal_key": EMULATOR_KEY,
        "fal_jwks_url": emulator.jwks_url,
        "http_port": port,
        "admin_port": free_port(),
        "public_webhook_url": f"http://127.0.0.1:{port}" if webhooks else None,
        "webhook_secret": f"bench-webhook-secret-{bench.run_id}-0123456789abcdef",
        "s3_endpoint": bench.stack.s3_endpoint,
        "s3_access_key": bench.stack.s3_access_key,
        "s3_secret_key": bench.stack.s3_secret_key,
        "bucket": f"bench-{bench.run_id}",
        "download_hosts": ["127.0.0.1"],
        "allow_private_downloads": True,
        "max_in_flight": concurrency,
        "max_in_flight_per_endpoint": concurrency,
        "shutdown_grace_seconds": 5.0,
    }
    values.update(overrides)
    return Settings(**values)


class RelayExitedError(RuntimeError):
    """A relay replica ended during a measurement."""


def last_error(log: Path) -> str:
    """The last error a relay logged (its JSON log line's message and exception)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "no log"
    for line in reversed(lines):
        if '"level": "ERROR"' not in line and '"level": "CRITICAL"' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            return line[-300:]
        cause = str(entry.get("exception", "")).strip().splitlines()[-1:]
        return " / ".join([str(entry.get("message", "")), *cause])
    return lines[-1][-300:] if lines else "empty log"


class RelayFleet:
    """N relay replicas in one consumer group, each with its own HTTP port."""

    def __init__(self, base: Settings, count: int, workdir: Path, name: str) -> None:
        self.replicas = [
            RelayProcess(
                base.model_copy(update=self._own_port(base, n)),
                workdir,
                name=f"{name}-{n}",
            )
            for n in range(count)
        ]

    @staticmethod
    def _own_port(base: Settings, n: int) -> dict[str, Any]:
        if n == 0:
            return {}
        port = free_port()
        hook = None if base.public_webhook_url is None else f"http://127.0.0.1:{port}"
        return {"http_port": port, "admin_port": free_port(), "public_webhook_url": hook}

    @property
    def pids(self) -> dict[str, int]:
        return {f"relay-{n}": r.pid for n, r in enumerate(self.replicas) if r.pid is not None}

    @property
    def ports(self) -> list[int]:
        return [r.settings.http_port for r in self.replicas]

    @property
    def admin_ports(self) -> list[int]:
        """Where each replica serves `/metrics`."""
        return [r.settings.admin_port for r in self.replicas]

    async def __aenter__(self) -> Self:
        # Started together: a start is mostly waiting on the broker, and the group settles once
        # every replica has joined anyway.
        starts = [asyncio.ensure_future(replica.start()) for replica in self.replicas]
        try:
            await asyncio.gather(*starts)
            await self._spread(self.replicas[0].settings.partitions)
        except BaseException:
            for start in starts:
                start.cancel()
            await self._stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stop()

    def check(self) -> None:
        """Raise if a replica has exited: waiting for its work would only time out."""
        for replica in self.replicas:
            code = replica.process.exit_code()
            if code is not None:
                raise RelayExitedError(
                    f"{replica.process.name} exited with code {code}: "
                    f"{last_error(replica.process.log_path)} (log {replica.process.log_path})"
                )

    async def _stop(self) -> None:
        await asyncio.gather(*(asyncio.to_thread(r.stop) for r in self.replicas))

    async def _spread(self, partitions: int, timeout: float = 90.0) -> None:
        # Every replica answers ready as soon as it has partitions, but the group is only
        # settled once each owns its share and together they own all of them.
        async with httpx.AsyncClient(timeout=2.0) as client, asyncio.timeout(timeout):
            while True:
                owned: list[set[int]] = []
                for port in self.ports:
                    with contextlib.suppress(httpx.HTTPError, ValueError):
                        body = (await client.get(f"http://127.0.0.1:{port}/readyz")).json()
                        owned.append(set(body.get("partitions", [])))
                total = sum(len(p) for p in owned)
                union = set().union(*owned) if owned else set()
                if (
                    len(owned) == len(self.ports)
                    and all(owned)
                    and total == partitions
                    and len(union) == partitions
                ):
                    return
                await asyncio.sleep(0.2)


async def create_topics(bootstrap: str, topics: Topics, partitions: int) -> None:
    """Create a scenario's topics as the relay would, with broker-side append timestamps.

    `LogAppendTime` on the ledger and completion topics makes each record's timestamp the
    moment the broker appended (and so acknowledged) it, which the hop latencies need.
    """
    append_time = {"message.timestamp.type": "LogAppendTime"}
    configs = {
        topics.ledger: {"cleanup.policy": "compact", **append_time},
        topics.completions: append_time,
    }
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(name, partitions, 1, topic_configs=configs.get(name, {}))
                for name in topics.all()
            ]
        )
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, names: list[str]) -> None:
    """Remove a scenario's topics (the restore topic alone holds gigabytes)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        with contextlib.suppress(KafkaError):
            await admin.delete_topics(names)
    finally:
        await admin.close()


async def committed_total(bootstrap: str, group: str, topic: str) -> int:
    """The sum of a group's committed offsets over the partitions of one topic."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(
        meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0
    )


async def remove_buckets(stack: StackInfo, prefix: str) -> list[str]:
    """Delete the bucket `prefix` and every `prefix-…` bucket with their objects; returns the
    names of the buckets removed."""

    def remove() -> list[str]:
        client = Minio(
            stack.s3_endpoint,
            access_key=stack.s3_access_key,
            secret_key=stack.s3_secret_key,
            secure=False,
        )
        removed: list[str] = []
        for bucket in client.list_buckets():
            if bucket.name != prefix and not bucket.name.startswith(prefix + "-"):
                continue
            names = [
                item.object_name
                for item in client.list_objects(bucket.name, recursive=True)
                if item.object_name is not None
            ]
            # Deletion errors come back lazily, one per object that stayed.
            failed = list(client.remove_objects(bucket.name, map(DeleteObject, names)))
            if failed:
                raise RuntimeError(f"{len(failed)} objects stayed in {bucket.name}: {failed[0]}")
            client.remove_bucket(bucket.name)
            removed.append(bucket.name)
        return removed

    return await asyncio.to_thread(remove)
