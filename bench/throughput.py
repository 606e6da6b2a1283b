"""genrelay end to end: relay replicas in child processes against the emulator (at zero
inference time unless the run says otherwise), one small PNG per job.

A run has three phases on the same replicas:

1. warm-up (connections, bucket, JWKS; not measured);
2. burst: every job produced at once; jobs/s is the job count over the time from the first
   record produced to the broker's append of the last completion event; CPU seconds of each
   process over the same interval;
3. paced: jobs offered at `Plan.paced_share` of the burst's throughput, so the hop latencies
   are genrelay's own rather than time spent queueing behind a saturated CPU.

A run may change the provider's conditions and the relay's settings, and ask for the burst's
end-to-end latencies (request produced → completion appended) instead of the paced phase.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from genrelay.bench.context import Bench, Plan
from genrelay.bench.hops import Histogram, TopicTimes, parse_counters, parse_histograms
from genrelay.bench.measure import CpuWatch, peak_rss_bytes, rss_bytes, summary_ms
from genrelay.bench.profile import Profiler
from genrelay.bench.services import (
    EmulatorProcess,
    ProviderConditions,
    RelayFleet,
    create_topics,
    delete_topics,
    provider_calls,
    relay_settings,
    spend,
)
from genrelay.bench.workload import Completion, CompletionWatch, RequestProducer
from genrelay.schemas.topics import Topics

# Without webhooks the relay learns outcomes by polling after this grace; at zero inference
# time the first poll finds the result. An operator would set it near the expected run time.
POLL_GRACE_WITHOUT_WEBHOOKS = 1.0
TRANSFER_HISTOGRAMS = ("genrelay_download_duration_seconds", "genrelay_upload_duration_seconds")
# Every assignment callback since the relays started (heartbeats wait for it; goal ≤ 100 ms).
REBALANCE_HISTOGRAM = "genrelay_rebalance_callback_duration_seconds"
# What the partition writers committed: transactions, and the records in them.
TRANSACTION_COUNTERS = ("genrelay_transactions", "genrelay_transaction_records")
_WEBHOOK_SAMPLE = 200
_MB = 1024 * 1024


@dataclass(frozen=True)
class RelayRun:
    """One genrelay measurement: which mode, how many replicas, which phases, and what the
    provider and the relay's settings differ in from the plain throughput run."""

    name: str
    webhooks: bool = True
    replicas: int = 1
    paced: bool = True
    profile: bool = False
    # The burst's size; None: the plan's `jobs`.
    jobs: int | None = None
    # None: zero run time, losing the plan's share of webhooks.
    provider: ProviderConditions | None = None
    relay_settings: Mapping[str, Any] = field(default_factory=dict)
    end_to_end: bool = False

    def conditions(self, plan: Plan) -> ProviderConditions:
        if self.provider is not None:
            return self.provider
        return ProviderConditions(webhook_loss=plan.webhook_loss if self.webhooks else 0.0)


def wait_budget(jobs: int, slowest_job: float = 0.0, least_rate: float = 20.0) -> float:
    """Seconds to wait for `jobs` completions before calling the run stuck (at least
    `least_rate` jobs/s), plus the longest a single job may take."""
    return max(120.0, jobs / least_rate) + slowest_job


async def run_genrelay(bench: Bench, run: RelayRun) -> dict[str, Any]:
    """Run the phases and return every figure of this run."""
    topics = bench.topics(run.name)
    bootstrap = bench.stack.kafka_bootstrap
    await create_topics(bootstrap, topics, bench.plan.partitions)
    try:
        conditions = run.conditions(bench.plan)
        async with EmulatorProcess(
            bench.workdir, f"{run.name}-emulator", **conditions.flags()
        ) as emulator:
            overrides: dict[str, Any] = {}
            if not run.webhooks or conditions.webhook_loss > 0:
                # Keys without a webhook finish by polling: a short grace keeps the run short.
                overrides["poll_grace_seconds"] = POLL_GRACE_WITHOUT_WEBHOOKS
            overrides.update(run.relay_settings)
            settings = relay_settings(bench, topics, emulator, webhooks=run.webhooks, **overrides)
            async with (
                RelayFleet(settings, run.replicas, bench.workdir, f"{run.name}-relay") as fleet,
                RequestProducer(bootstrap) as producer,
                CompletionWatch(bootstrap, topics.completions) as watch,
            ):
                figures = await _phases(bench, run, topics, emulator, fleet, producer, watch)
                figures["settings"] = {
                    "replicas": run.replicas,
                    "webhooks": run.webhooks,
                    "partitions": settings.partitions,
                    "max_in_flight": settings.max_in_flight,
                    "max_in_flight_per_endpoint": settings.max_in_flight_per_endpoint,
                    "max_buffered_records": settings.max_buffered_records,
                    "poll_grace_seconds": settings.poll_grace_seconds,
                    "provider": conditions.as_json(),
                }
                return figures
    finally:
        await delete_topics(bootstrap, list(topics.all()))


async def _phases(
    bench: Bench,
    run: RelayRun,
    topics: Topics,
    emulator: EmulatorProcess,
    fleet: RelayFleet,
    producer: RequestProducer,
    watch: CompletionWatch,
) -> dict[str, Any]:
    plan = bench.plan
    jobs = plan.jobs if run.jobs is None else run.jobs
    conditions = run.conditions(plan)
    # A key whose webhook is lost waits out the grace before its first poll.
    slowest = conditions.slowest_job_seconds() + fleet.replicas[0].settings.poll_grace_seconds

    def budget(keys: list[str]) -> float:
        return wait_budget(len(keys), slowest)

    idle_rss = sum(rss_bytes(pid) for pid in fleet.pids.values())
    warm = bench.keys(run.name, "warm", plan.warmup)
    await producer.burst(topics.requests, warm)
    await watch.wait(warm, budget(warm), fleet.check)

    burst = bench.keys(run.name, "burst", jobs)
    pids = {**fleet.pids, "emulator": emulator.pid, **bench.infra_pids(), "bench": os.getpid()}
    before = await _scrape(fleet.admin_ports)
    committed_before = await _counters(fleet.admin_ports, TRANSACTION_COUNTERS)
    cpu = CpuWatch(pids).start()
    async with _profiled(bench, run, fleet) as profile:
        started = await producer.burst(topics.requests, burst)
        done = await watch.wait(burst, budget(burst), fleet.check)
    spent = cpu.stop()
    after = await _scrape(fleet.admin_ports)
    committed = _transactions(
        committed_before, await _counters(fleet.admin_ports, TRANSACTION_COUNTERS), jobs
    )
    rebalance = (after or {}).pop(REBALANCE_HISTOGRAM, None)
    if before is not None:
        before.pop(REBALANCE_HISTOGRAM, None)
    transfer = _transfer_delta(before, after)
    finished = max(c.appended_ms for c in done.values()) / 1000
    per_second = jobs / (finished - started)
    relay_cpu = sum(spent.process_seconds.get(name, 0.0) for name in fleet.pids)
    figures: dict[str, Any] = {
        "jobs": jobs,
        "jobs_per_second": round(per_second, 1),
        "burst_seconds": round(finished - started, 2),
        **outcomes(done.values(), conditions),
        "relay_cpu_ms_per_job": round(relay_cpu / jobs * 1000, 3),
        "emulator_cpu_ms_per_job": round(
            spent.process_seconds.get("emulator", 0.0) / jobs * 1000, 3
        ),
        "cpu": spent.as_json(),
        "transfer_from_metrics_ms": transfer,
        "transactions": committed,
        "webhook_loss": conditions.webhook_loss if run.webhooks else None,
        # p50/p99 are bucket bounds (0.5, 1, 5, 10, 50, 100 ms, ...).
        "rebalance_callback_ms": rebalance.summary_ms() if rebalance is not None else None,
    }
    if profile is not None:
        figures["profile"] = profile.summary()

    paced: list[str] = []
    if run.paced:
        paced = bench.keys(run.name, "paced", plan.paced_jobs)
        offered = per_second * plan.paced_share
        committed_before = await _counters(fleet.admin_ports, TRANSACTION_COUNTERS)
        cpu = CpuWatch(fleet.pids).start()
        await producer.paced(topics.requests, paced, offered)
        await watch.wait(paced, budget(paced) + len(paced) / offered, fleet.check)
        spent = cpu.stop()
        figures["paced_offered_jobs_per_second"] = round(offered, 1)
        # A steady rate batches less than a burst: fewer records per transaction, more
        # wake-ups per job. Operators mostly run here, not at the burst's peak.
        figures["paced_relay_cpu_ms_per_job"] = round(
            sum(spent.process_seconds.values()) / len(paced) * 1000, 3
        )
        figures["paced_transactions"] = _transactions(
            committed_before,
            await _counters(fleet.admin_ports, TRANSACTION_COUNTERS),
            len(paced),
        )

    figures["relay_idle_rss_mb"] = round(idle_rss / _MB, 1)
    figures["relay_peak_rss_mb"] = round(
        sum(peak_rss_bytes(pid) for pid in fleet.pids.values()) / _MB, 1
    )
    everyone = warm + burst + paced
    submissions = await emulator.submissions()
    figures["provider_calls"] = provider_calls(await emulator.stats(), len(everyone))
    figures["spend"] = spend(submissions, set(everyone))
    if not paced and not run.end_to_end:
        return figures
    times = await TopicTimes.read(bench.stack.kafka_bootstrap, topics, submissions)
    if run.end_to_end:
        figures["end_to_end_ms"] = times.end_to_end(burst)
    if paced:
        figures["hops_at_saturation"] = times.hops(burst)
        figures["hops"] = times.hops(paced)
        if run.webhooks:
            figures["hops"]["provider_done_to_webhook_ms"] = await _delivery(
                emulator, times, paced[:_WEBHOOK_SAMPLE]
            )
    return figures


def outcomes(done: Iterable[Completion], conditions: ProviderConditions) -> dict[str, Any]:
    """Jobs that did not succeed, by status: `not_succeeded` fails the run, while failures of
    the type the provider was told to inject are expected (`failed_as_injected`)."""
    unexpected: Counter[str] = Counter()
    injected = 0
    for completion in done:
        if completion.status == "succeeded":
            continue
        if (
            conditions.failure_rate
            and completion.status == "failed"
            and completion.error_type == conditions.failure_type
        ):
            injected += 1
        else:
            unexpected[completion.status] += 1
    found: dict[str, Any] = {"not_succeeded": dict(unexpected)}
    if conditions.failure_rate:
        found["failed_as_injected"] = injected
    return found


@contextlib.asynccontextmanager
async def _profiled(
    bench: Bench, run: RelayRun, fleet: RelayFleet
) -> AsyncIterator[Profiler | None]:
    if not run.profile or bench.profile_dir is None:
        yield None
        return
    pid = next(iter(fleet.pids.values()))
    async with Profiler(pid, bench.profile_dir / f"{run.name}-relay.collapsed") as profiler:
        yield profiler


async def _expositions(ports: list[int]) -> list[str] | None:
    """Each relay's `/metrics` text; None if one could not be read."""
    texts: list[str] = []
    async with httpx.AsyncClient(timeout=10.0) as client:
        for port in ports:
            try:
                response = await client.get(f"http://127.0.0.1:{port}/metrics")
            except httpx.HTTPError:
                return None
            if response.status_code != 200:
                return None
            texts.append(response.text)
    return texts


async def _scrape(ports: list[int]) -> dict[str, Histogram] | None:
    """The relays' transfer histograms from `/metrics`, summed; None if not exposed."""
    texts = await _expositions(ports)
    if texts is None:
        return None
    merged: dict[str, Histogram] = {}
    wanted = (*TRANSFER_HISTOGRAMS, REBALANCE_HISTOGRAM)
    for text in texts:
        for name, histogram in parse_histograms(text, wanted).items():
            previous = merged.get(name)
            merged[name] = histogram if previous is None else _add(previous, histogram)
    return merged or None


async def _counters(ports: list[int], names: tuple[str, ...]) -> dict[str, float] | None:
    """The relays' counters from `/metrics`, summed; None if one could not be read."""
    texts = await _expositions(ports)
    if texts is None:
        return None
    merged: dict[str, float] = {}
    for text in texts:
        for name, value in parse_counters(text, names).items():
            merged[name] = merged.get(name, 0.0) + value
    return merged


def _transactions(
    before: dict[str, float] | None, after: dict[str, float] | None, jobs: int
) -> dict[str, float | None] | None:
    """Transactions per job and records per transaction over the burst."""
    if before is None or after is None:
        return None
    transactions, records = (after.get(n, 0.0) - before.get(n, 0.0) for n in TRANSACTION_COUNTERS)
    return {
        "per_job": round(transactions / jobs, 3) if jobs else None,
        "records_per_job": round(records / jobs, 3) if jobs else None,
        "records_per_transaction": round(records / transactions, 2) if transactions else None,
    }


def _add(a: Histogram, b: Histogram) -> Histogram:
    other = dict(b.buckets)
    return Histogram(
        tuple((le, n + other.get(le, 0.0)) for le, n in a.buckets),
        a.total + b.total,
        a.count + b.count,
    )


def _transfer_delta(
    before: dict[str, Histogram] | None, after: dict[str, Histogram] | None
) -> dict[str, Any] | None:
    if after is None:
        return None
    return {
        name.removeprefix("genrelay_").removesuffix("_duration_seconds"): histogram.minus(
            (before or {}).get(name)
        ).summary_ms()
        for name, histogram in after.items()
    }


async def _delivery(
    emulator: EmulatorProcess, times: TopicTimes, keys: list[str]
) -> dict[str, float | int | None]:
    """Provider side, for context: the emulator's completion to the relay's hand-over of the
    verified webhook (sending, HTTP, signature check); not one of genrelay's own hops."""
    delays: list[float] = []
    for key in keys:
        request_id = times.request_ids.get(key)
        hook = times.hook_ms.get(key)
        if request_id is None or hook is None:
            continue
        completed = (await emulator.describe(request_id)).get("completed_at")
        if completed is not None:
            delays.append(hook - float(completed) * 1000)
    return summary_ms(delays)
