"""Scenario 8: genrelay and the naive fal-client consumer against a provider that behaves like
a busy one: run times lognormal around a 3 s median, 10% of webhooks lost, 5% of jobs failing,
the same jobs in flight for each (1,000).

What differs is how each learns outcomes: the naive loop asks for every request's status
every 0.1 s (fal-client's `subscribe`); genrelay waits for the webhook and polls a key only
when none came within its grace. Per job: provider calls, CPU of the client's process, jobs/s
and end-to-end p50/p99 (record produced → completion appended, or the naive job done).
Failed jobs are expected here; only failures of another kind than the injected one count as
errors.
"""

from __future__ import annotations

from typing import Any

from genrelay.bench.baselines import BaselineRun
from genrelay.bench.context import Plan
from genrelay.bench.services import ProviderConditions
from genrelay.bench.throughput import RelayRun

# An operator expecting runs of about 3 s lets a lost webhook cost a few medians, no more.
POLL_GRACE_SECONDS = 10.0


def provider(plan: Plan) -> ProviderConditions:
    """The provider both clients face; it runs every job in flight at once, as fal scales its
    runners, so run times are the distribution's and not a queue's."""
    return ProviderConditions(
        run_median_ms=3_000,
        run_sigma=0.5,
        webhook_loss=0.1,
        failure_rate=0.05,
        runners=plan.realistic_concurrency,
    )


def relay_run(plan: Plan, *, profile: bool = False) -> RelayRun:
    limit = plan.realistic_concurrency
    return RelayRun(
        "realistic",
        paced=False,
        profile=profile,
        jobs=plan.realistic_jobs,
        provider=provider(plan),
        relay_settings={
            "poll_grace_seconds": POLL_GRACE_SECONDS,
            "max_in_flight": limit,
            "max_in_flight_per_endpoint": limit,
        },
        end_to_end=True,
    )


def naive_run(plan: Plan) -> BaselineRun:
    return BaselineRun(
        "naive",
        name="realistic-naive",
        jobs=plan.realistic_jobs,
        concurrency=plan.realistic_concurrency,
        provider=provider(plan),
    )


def settings(plan: Plan) -> dict[str, Any]:
    return {
        "jobs": plan.realistic_jobs,
        "concurrency": plan.realistic_concurrency,
        "provider": provider(plan).as_json(),
        "genrelay_poll_grace_seconds": POLL_GRACE_SECONDS,
    }


def naive_over_genrelay(genrelay: dict[str, Any], naive: dict[str, Any]) -> dict[str, Any]:
    """What the naive loop spends per job as a multiple of genrelay's (above 1: it spends
    more)."""

    def ratio(theirs: Any, ours: Any) -> float | None:
        return round(theirs / ours, 2) if theirs is not None and ours else None

    return {
        "provider_calls_per_job": ratio(
            naive.get("provider_calls", {}).get("per_job"),
            genrelay.get("provider_calls", {}).get("per_job"),
        ),
        "cpu_ms_per_job": ratio(naive.get("cpu_ms_per_job"), genrelay.get("relay_cpu_ms_per_job")),
    }
