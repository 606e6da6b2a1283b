"""Scenario 2: the same jobs, stack, emulator settings and concurrency as genrelay's burst,
handled by the baselines of `baseline_worker` instead (each in its own process)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any, Self

from genrelay.bench.context import Bench
from genrelay.bench.measure import CpuWatch, peak_rss_bytes
from genrelay.bench.services import (
    EMULATOR_KEY,
    EmulatorProcess,
    create_topics,
    delete_topics,
    provider_calls,
    spend,
)
from genrelay.bench.throughput import wait_budget
from genrelay.bench.workload import RequestProducer
from genrelay.deploy.local.processes import ManagedProcess

_MB = 1024 * 1024


class BaselineProcess:
    """One `baseline_worker` child; its JSON event lines are read from its log."""

    def __init__(self, bench: Bench, kind: str, argv: list[str]) -> None:
        env = {
            **os.environ,
            "FAL_KEY": EMULATOR_KEY,
            "BENCH_S3_ACCESS_KEY": bench.stack.s3_access_key,
            "BENCH_S3_SECRET_KEY": bench.stack.s3_secret_key,
            "PYTHONUNBUFFERED": "1",
        }
        command = [sys.executable, "-m", "genrelay.bench.baseline_worker", kind, *argv]
        self.log = bench.workdir / f"baseline-{kind}.log"
        self.process = ManagedProcess(f"baseline {kind}", command, self.log, env=env)
        self._read = 0

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    async def __aenter__(self) -> Self:
        self.process.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.process.stop, 10.0)

    async def event(self, name: str, timeout: float) -> dict[str, Any]:
        """Wait for the child's next event line called `name`."""
        async with asyncio.timeout(timeout):
            while True:
                if (found := self._next(name, self.log)) is not None:
                    return found
                if self.process.exit_code() is not None:
                    raise self.process.fail(f"exited before reporting {name!r}")
                # Polling is deliberate: the state belongs to another process.
                await asyncio.sleep(0.05)

    def _next(self, name: str, log: Path) -> dict[str, Any] | None:
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        for n in range(self._read, len(lines)):
            if lines[n].startswith('{"event"'):
                event: dict[str, Any] = json.loads(lines[n])
                if event["event"] == name:
                    self._read = n + 1
                    return event
        return None


async def run_baseline(bench: Bench, kind: str) -> dict[str, Any]:
    """Warm-up, then the burst; jobs/s from the first record produced to the last job done."""
    plan = bench.plan
    topics = bench.topics(kind)
    bootstrap = bench.stack.kafka_bootstrap
    await create_topics(bootstrap, topics, plan.partitions)
    try:
        async with (
            EmulatorProcess(bench.workdir, f"{kind}-emulator", run_latency="fixed:0") as emulator,
            RequestProducer(bootstrap) as producer,
        ):
            warm = bench.keys(kind, "warm", plan.warmup)
            burst = bench.keys(kind, "burst", plan.jobs)
            await producer.burst(topics.requests, warm)
            argv = [
                f"--bootstrap={bootstrap}",
                f"--topic={topics.requests}",
                f"--group={topics.requests}.{kind}",
                f"--emulator={emulator.base_url}",
                f"--warmup={plan.warmup}",
                f"--jobs={plan.jobs}",
                f"--concurrency={plan.concurrency}",
                f"--s3-endpoint={bench.stack.s3_endpoint}",
                f"--bucket=bench-{bench.run_id}-naive",
            ]
            async with BaselineProcess(bench, kind, argv) as child:
                await child.event("warm", wait_budget(len(warm)) + 60)
                pids = {kind: child.pid, "emulator": emulator.pid, **bench.infra_pids()}
                cpu = CpuWatch({**pids, "bench": os.getpid()}).start()
                started = await producer.burst(topics.requests, burst)
                done = await child.event("done", wait_budget(len(burst)))
                spent = cpu.stop()
                peak = peak_rss_bytes(child.pid)
            elapsed = float(done["last_done_at"]) - started
            everyone = warm + burst
            return {
                "jobs": plan.jobs,
                "concurrency": plan.concurrency,
                "jobs_per_second": round(plan.jobs / elapsed, 1),
                "burst_seconds": round(elapsed, 2),
                "errors": int(done["errors"]),
                "cpu_ms_per_job": round(spent.process_seconds.get(kind, 0.0) / plan.jobs * 1000, 3),
                "peak_rss_mb": round(peak / _MB, 1),
                "cpu": spent.as_json(),
                "provider_calls": provider_calls(await emulator.stats(), len(everyone)),
                "spend": spend(await emulator.submissions(), set(everyone)),
            }
    finally:
        await delete_topics(bootstrap, list(topics.all()))


def compare(genrelay: dict[str, Any], baselines: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """genrelay's throughput as a ratio to each baseline's (above 1: genrelay is faster)."""
    ours = genrelay.get("jobs_per_second")
    return {
        kind: round(ours / figures["jobs_per_second"], 3)
        if ours and figures.get("jobs_per_second")
        else None
        for kind, figures in baselines.items()
    }
