"""Scenario 3 (in part): memory per in-flight job, and throughput over 1, 2, 4 replicas.

In-flight memory: every job is submitted to an emulator whose jobs take an hour, so each one
stays in flight (SUBMITTED, webhook pending, no polling). The relay's resident memory once all
records are handled, minus its memory when idle, divided by the job count, is what one
in-flight job costs.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from genrelay.bench.context import Bench
from genrelay.bench.measure import peak_rss_bytes, rss_bytes
from genrelay.bench.services import (
    EmulatorProcess,
    RelayFleet,
    committed_total,
    create_topics,
    delete_topics,
    relay_settings,
    spend,
)
from genrelay.bench.throughput import RelayRun, run_genrelay, wait_budget
from genrelay.bench.workload import RequestProducer

_SLOW_JOB = "fixed:3600000"  # an hour: nothing finishes while memory is measured
_STEP = 2_000
_MB = 1024 * 1024


async def in_flight(bench: Bench) -> dict[str, Any]:
    """RSS per in-flight job with `Plan.in_flight_jobs` jobs in flight at once."""
    jobs = bench.plan.in_flight_jobs
    topics = bench.topics("inflight")
    bootstrap = bench.stack.kafka_bootstrap
    await create_topics(bootstrap, topics, bench.plan.partitions)
    try:
        async with EmulatorProcess(
            bench.workdir, "inflight-emulator", run_latency=_SLOW_JOB
        ) as emulator:
            settings = relay_settings(
                bench,
                topics,
                emulator,
                webhooks=True,
                max_in_flight=jobs,
                max_in_flight_per_endpoint=jobs,
                # No polling while the jobs wait: the figure is the state, not poll traffic.
                poll_grace_seconds=7200.0,
            )
            async with (
                RelayFleet(settings, 1, bench.workdir, "inflight-relay") as fleet,
                RequestProducer(bootstrap) as producer,
            ):
                pid = next(iter(fleet.pids.values()))
                idle = rss_bytes(pid)
                keys = bench.keys("inflight", "job", jobs)
                started = time.time()
                # In steps, so the figure is the memory of jobs in flight rather than of a
                # backlog of records waiting to be admitted.
                for first in range(0, jobs, _STEP):
                    step = keys[first : first + _STEP]
                    await producer.burst(topics.requests, step)
                    await _handled(
                        bootstrap, settings.group_id, topics.requests, first + len(step), fleet
                    )
                handled = time.time() - started
                loaded = rss_bytes(pid)
                peak = peak_rss_bytes(pid)
                submissions = await emulator.submissions()
            return {
                "jobs_in_flight": jobs,
                "relay_idle_rss_mb": round(idle / _MB, 1),
                "relay_rss_mb": round(loaded / _MB, 1),
                "relay_peak_rss_mb": round(peak / _MB, 1),
                "rss_kb_per_in_flight_job": round((loaded - idle) / jobs / 1024, 2),
                "seconds_to_submit_all": round(handled, 1),
                "submits_per_second": round(jobs / handled, 1),
                "fed_in_steps_of": _STEP,
                "emulator_run_latency_ms": 3_600_000,
                "spend": spend(submissions, set(keys)),
            }
    finally:
        await delete_topics(bootstrap, list(topics.all()))


async def _handled(bootstrap: str, group: str, topic: str, records: int, fleet: RelayFleet) -> None:
    # A record's offset is committed only once its job is durably SUBMITTED. Polling is
    # deliberate: the state belongs to another process.
    async with asyncio.timeout(wait_budget(_STEP)):
        while await committed_total(bootstrap, group, topic) < records:
            fleet.check()
            await asyncio.sleep(0.5)


async def replicas(bench: Bench) -> dict[str, Any]:
    """The burst of scenario 1 with 1, 2, 4 replicas, and where the CPU went."""
    steps: dict[str, Any] = {}
    for count in bench.plan.replicas:
        run = RelayRun(f"replicas{count}", replicas=count, paced=False)
        figures = await run_genrelay(bench, run)
        cpu = figures["cpu"]
        relay_share = sum(
            share for name, share in cpu["share_of_machine"].items() if name.startswith("relay")
        )
        steps[str(count)] = {
            "jobs_per_second": figures["jobs_per_second"],
            "relay_cpu_ms_per_job": figures["relay_cpu_ms_per_job"],
            "relay_share_of_machine": round(relay_share, 3),
            "machine_busy_share": cpu["machine_busy_share"],
            "cpus": cpu["cpus"],
            "others_share": cpu["others_share"],
            "share_of_machine": cpu["share_of_machine"],
            "spend": figures["spend"],
            "rebalance_callback_ms": figures["rebalance_callback_ms"],
        }
    first = steps[str(bench.plan.replicas[0])]["jobs_per_second"]
    for step in steps.values():
        step["speedup"] = round(step["jobs_per_second"] / first, 2) if first else None
    return {"steps": steps, "verdict": _verdict(steps)}


def _verdict(steps: dict[str, Any]) -> str:
    """Where throughput stops rising and what held it there: a relay's own core (one event
    loop uses one core at most) or the whole machine, and how much other programs took."""
    counts = sorted(steps, key=int)
    best = max(counts, key=lambda n: steps[n]["jobs_per_second"])
    shape = (
        f"throughput still rises at {best} processes"
        if best == counts[-1]
        else f"throughput peaks at {best} process{'es' if best != '1' else ''}"
    )
    details = []
    saturated = None
    for n in counts:
        step = steps[n]
        per_core = step["relay_share_of_machine"] * step["cpus"] / int(n)
        busy = step["machine_busy_share"]
        if saturated is None and (per_core >= 0.85 or busy >= 0.9):
            saturated = n
        details.append(
            f"{n}: each relay {per_core:.0%} of a core, machine {busy:.0%} busy "
            f"(other programs {step['others_share']:.0%}), "
            f"relay CPU {step['relay_cpu_ms_per_job']:.1f} ms/job"
        )
    where = f"CPU saturates from {saturated} process(es)" if saturated else "CPU never saturates"
    return f"{shape}; {where}. " + "; ".join(details)
