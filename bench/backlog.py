"""Scenario 7: a backlog behind a full endpoint limit. Every key of a burst is produced at
once while the endpoint admits `Plan.backlog_limit` jobs in flight, so nearly all of them wait
in the relay for a slot (it buffers them all) at zero inference time. Its jobs/s and relay CPU
per job are reported beside the throughput scenario's, which has no backlog: the difference is
what waiting keys cost the relay.
"""

from __future__ import annotations

from typing import Any

from genrelay.bench.context import Plan
from genrelay.bench.throughput import RelayRun


def backlog_run(plan: Plan) -> RelayRun:
    return RelayRun(
        "backlog",
        paced=False,
        jobs=plan.backlog_jobs,
        relay_settings={
            "max_in_flight_per_endpoint": plan.backlog_limit,
            "max_buffered_records": plan.backlog_jobs,
        },
    )


def without_backlog(throughput: dict[str, Any]) -> dict[str, Any] | None:
    """The throughput scenario's figures to set beside the backlog's, if it ran."""
    if throughput.get("jobs_per_second") is None:
        return None
    return {
        "jobs": throughput.get("jobs"),
        "jobs_per_second": throughput["jobs_per_second"],
        "relay_cpu_ms_per_job": throughput.get("relay_cpu_ms_per_job"),
    }
