"""Scenario 2: the same jobs, stack, emulator settings and concurrency as genrelay's burst,
handled by the baselines of `baseline_worker` instead (each in its own process).

A run may name other provider conditions, job count and concurrency (the realistic scenario
runs the naive baseline this way).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from genrelay.bench.context import Bench
from genrelay.bench.measure import CpuWatch, peak_rss_bytes
from genrelay.bench.services import (
    EMULATOR_KEY,
    EmulatorProcess,
    ProviderConditions,
    create_topics,
    delete_topics,
    provider_calls,
    spend,
)
from genrelay.bench.throughput import wait_budget
from genrelay.bench.workload import RequestProducer
from genrelay.deploy.local.processes import ManagedProcess

_MB = 1024 * 1024


@dataclass(frozen=True)
class BaselineRun:
    """One baseline measurement; by default genrelay's burst, concurrency and provider."""

    kind: str
    # Names its topics, keys and logs; the kind when empty.
    name: str = ""
    jobs: int | None = None
    concurrency: int | None = None
    provider: ProviderConditions = field(default_factory=ProviderConditions)

    @property
    def label(self) -> str:
        return self.name or self.kind


class BaselineProcess:
    """One `baseline_worker` child; its JSON event lines are read from its log."""

    def __init__(self, bench: Bench, run: BaselineRun, argv: list[str]) -> None:
        env = {
            **os.environ,
            "FAL_KEY": EMULATOR_KEY,
            "BENCH_S3_ACCESS_KEY": bench.stack.s3_access_key,
            "BENCH_S3_SECRET_KEY": bench.stack.s3_secret_key,
            "PYTHONUNBUFFERED": "1",
        }
        command = [sys.executable, "-m", "genrelay.bench.baseline_worker", run.kind, *argv]
        self.log = bench.workdir / f"baseline-{run.label}.log"
        self.process = ManagedProcess(f"baseline {run.label}", command, self.log, env=env)
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


async def run_baseline(bench: Bench, run: BaselineRun) -> dict[str, Any]:
    """Warm-up, then the burst; jobs/s from the first record produced to the last job done."""
    plan = bench.plan
    jobs = plan.jobs if run.jobs is None else run.jobs
    concurrency = plan.concurrency if run.concurrency is None else run.concurrency
    slowest = run.provider.slowest_job_seconds()
    topics = bench.topics(run.label)
    bootstrap = bench.stack.kafka_bootstrap
    await create_topics(bootstrap, topics, plan.partitions)
    try:
        async with (
            EmulatorProcess(
                bench.workdir, f"{run.label}-emulator", **run.provider.flags()
            ) as emulator,
            RequestProducer(bootstrap) as producer,
        ):
            warm = bench.keys(run.label, "warm", plan.warmup)
            burst = bench.keys(run.label, "burst", jobs)
            await producer.burst(topics.requests, warm)
            argv = [
                f"--bootstrap={bootstrap}",
                f"--topic={topics.requests}",
                f"--group={topics.requests}.{run.kind}",
                f"--emulator={emulator.base_url}",
                f"--warmup={plan.warmup}",
                f"--jobs={jobs}",
                f"--concurrency={concurrency}",
                f"--s3-endpoint={bench.stack.s3_endpoint}",
                f"--bucket=bench-{bench.run_id}-{run.label}",
                f"--events-topic={topics.completions}",
            ]
            async with BaselineProcess(bench, run, argv) as child:
                await child.event("warm", wait_budget(len(warm), slowest) + 60)
                pids = {run.kind: child.pid, "emulator": emulator.pid, **bench.infra_pids()}
                cpu = CpuWatch({**pids, "bench": os.getpid()}).start()
                started = await producer.burst(topics.requests, burst)
                # A baseline may be far slower than genrelay (fal-client's polling of a
                # thousand requests saturates its process): it is given until 4 jobs/s.
                done = await child.event("done", wait_budget(len(burst), slowest, least_rate=4.0))
                spent = cpu.stop()
                peak = peak_rss_bytes(child.pid)
            elapsed = float(done["last_done_at"]) - started
            everyone = warm + burst
            return {
                "jobs": jobs,
                "concurrency": concurrency,
                "jobs_per_second": round(jobs / elapsed, 1),
                "burst_seconds": round(elapsed, 2),
                **_failures(done, run.provider),
                "end_to_end_ms": done["end_to_end_ms"],
                "cpu_ms_per_job": round(spent.process_seconds.get(run.kind, 0.0) / jobs * 1000, 3),
                "peak_rss_mb": round(peak / _MB, 1),
                "cpu": spent.as_json(),
                "provider_calls": provider_calls(await emulator.stats(), len(everyone)),
                "spend": spend(await emulator.submissions(), set(everyone)),
            }
    finally:
        await delete_topics(bootstrap, list(topics.all()))


def _failures(done: dict[str, Any], provider: ProviderConditions) -> dict[str, Any]:
    """The baseline's jobs that failed otherwise than the provider was told to make them fail
    (`failed_otherwise`, reported: a baseline's own failures, such as fal-client losing a
    connection the server closed, are a figure of that baseline, not a broken run), apart
    from those that failed as injected (`failed_as_injected`)."""
    by_phase: dict[str, dict[str, int]] = done["errors_by_type"]
    injected = {
        phase: counts.get(provider.failure_type, 0) if provider.failure_rate else 0
        for phase, counts in by_phase.items()
    }
    found: dict[str, Any] = {
        "failed_otherwise": int(done["errors"]) - sum(injected.values()),
        "errors_by_type": by_phase,
    }
    if provider.failure_rate:
        found["failed_as_injected"] = injected.get("measured", 0)
    return found


def compare(genrelay: dict[str, Any], baselines: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """genrelay's throughput as a ratio to each baseline's (above 1: genrelay is faster)."""
    return _ratios(genrelay.get("jobs_per_second"), baselines, "jobs_per_second")


def cpu_multiple(genrelay: dict[str, Any], baselines: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """genrelay's relay CPU per job as a multiple of each baseline's (below 1: genrelay spends
    less; against `floor-job`, what the relay's own work adds to the job's traffic)."""
    return _ratios(genrelay.get("relay_cpu_ms_per_job"), baselines, "cpu_ms_per_job")


def _ratios(
    ours: float | None, baselines: dict[str, dict[str, Any]], figure: str
) -> dict[str, float | None]:
    """`ours` over each baseline's `figure`; None where either is missing (a failed run)."""
    return {
        kind: round(ours / figures[figure], 3) if ours and figures.get(figure) else None
        for kind, figures in baselines.items()
    }
