"""`/metrics` shows every genrelay series with the values the relay recorded."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from genrelay.consumer.service.metrics import GaugeSources, RelayMetrics, Resolution

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]
ENDPOINT = "fal-ai/flux/schnell"


class LiveState:
    """Stands in for the relay's in-memory state that the gauges read at scrape time."""

    def __init__(self) -> None:
        self.phases = {"SUBMITTED": 7, "UNKNOWN": 1}
        self.in_flight = 8
        self.by_endpoint = {ENDPOINT: 6, "fal-ai/veo3": 2}
        self.by_tenant = {"shop": 5, "bulk": 3}
        self.spans = {("genrelay.requests", 0): 12, ("genrelay.requests", 4): 0}
        self.ages = {("genrelay.requests", 0): 95.5}
        self.committed = (40, 130)

    def sources(self) -> GaugeSources:
        return GaugeSources(
            jobs_by_phase=lambda: self.phases,
            in_flight=lambda: self.in_flight,
            in_flight_by_endpoint=lambda: self.by_endpoint,
            in_flight_by_tenant=lambda: self.by_tenant,
            waiting_by_tenant=lambda: {"bulk": 4_997},
            share_by_tenant=lambda: {"shop": 0.75, "bulk": 0.25},
            uncommitted_offsets=lambda: self.spans,
            oldest_in_flight_age=lambda: self.ages,
            committed=lambda: self.committed,
        )


@pytest.fixture
def state() -> LiveState:
    return LiveState()


@pytest.fixture
async def metrics(state: LiveState) -> AsyncIterator[RelayMetrics]:
    metrics = RelayMetrics(state.sources())
    yield metrics
    metrics.shutdown()


async def scrape(metrics: RelayMetrics) -> Series:
    app = Starlette(routes=[metrics.metrics_route()])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://relay") as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(series: Series, name: str, **labels: str) -> float:
    return series[(name, frozenset(labels.items()))]


async def test_counters_appear_with_their_labels_and_values(metrics: RelayMetrics) -> None:
    metrics.outcome("succeeded", ENDPOINT)
    metrics.outcome("succeeded", ENDPOINT)
    metrics.outcome("failed", ENDPOINT)
    for _ in range(3):
        metrics.submitted(ENDPOINT)
    metrics.submit_retried(ENDPOINT)
    metrics.ambiguous_submit(ENDPOINT)
    metrics.duplicate_suppressed()
    metrics.replayed()
    metrics.resolved(Resolution.WEBHOOK)
    metrics.resolved(Resolution.WEBHOOK)
    metrics.resolved(Resolution.POLL)
    metrics.dead_lettered("idempotency_conflict")
    metrics.downloaded(48_213, 0.2)
    metrics.uploaded(48_213, 0.05)

    series = await scrape(metrics)

    assert value(series, "genrelay_outcomes_total", status="succeeded", endpoint=ENDPOINT) == 2
    assert value(series, "genrelay_outcomes_total", status="failed", endpoint=ENDPOINT) == 1
    assert value(series, "genrelay_submissions_total", endpoint=ENDPOINT) == 3
    assert value(series, "genrelay_submit_retries_total", endpoint=ENDPOINT) == 1
    assert value(series, "genrelay_ambiguous_submits_total", endpoint=ENDPOINT) == 1
    assert value(series, "genrelay_duplicates_suppressed_total") == 1
    assert value(series, "genrelay_replays_total") == 1
    assert value(series, "genrelay_resolutions_total", source="webhook") == 2
    assert value(series, "genrelay_resolutions_total", source="poll") == 1
    assert value(series, "genrelay_dead_letters_total", reason="idempotency_conflict") == 1
    assert value(series, "genrelay_downloaded_bytes_total") == 48_213
    assert value(series, "genrelay_uploaded_bytes_total") == 48_213
    assert value(series, "genrelay_download_duration_seconds_count") == 1
    assert value(series, "genrelay_upload_duration_seconds_sum") == pytest.approx(0.05)


async def test_gauges_read_the_live_state_at_each_scrape(
    metrics: RelayMetrics, state: LiveState
) -> None:
    series = await scrape(metrics)
    assert value(series, "genrelay_jobs", phase="SUBMITTED") == 7
    assert value(series, "genrelay_jobs", phase="UNKNOWN") == 1
    assert value(series, "genrelay_in_flight") == 8
    assert value(series, "genrelay_in_flight_per_endpoint", endpoint="fal-ai/veo3") == 2
    assert value(series, "genrelay_in_flight_per_tenant", tenant="bulk") == 3
    assert value(series, "genrelay_waiting_per_tenant", tenant="bulk") == 4_997
    assert value(series, "genrelay_share_per_tenant", tenant="shop") == 0.75
    requests_0 = {"topic": "genrelay.requests", "partition": "0"}
    assert value(series, "genrelay_uncommitted_offsets", **requests_0) == 12
    assert value(series, "genrelay_oldest_in_flight_age_seconds", **requests_0) == 95.5
    assert value(series, "genrelay_transactions_total") == 40
    assert value(series, "genrelay_transaction_records_total") == 130

    state.phases = {"SUBMITTED": 2}
    state.in_flight = 2
    state.ages = {}
    series = await scrape(metrics)
    assert value(series, "genrelay_jobs", phase="SUBMITTED") == 2
    # A phase no key is in any more reads 0 (every open phase is always reported).
    assert value(series, "genrelay_jobs", phase="UNKNOWN") == 0
    assert value(series, "genrelay_in_flight") == 2
    # A partition given away stops being reported instead of keeping its last value.
    assert not [name for name, _ in series if name == "genrelay_oldest_in_flight_age_seconds"]


async def test_a_cold_start_stands_apart_from_a_quick_run_in_the_histograms(
    metrics: RelayMetrics,
) -> None:
    metrics.job_timings(ENDPOINT, queued_seconds=0.3, run_seconds=1.5)
    metrics.job_timings(ENDPOINT, queued_seconds=42.0, run_seconds=1.8)
    metrics.ledger_restored(0.8)

    series = await scrape(metrics)

    def queued(le: str) -> float:
        return value(series, "genrelay_queue_duration_seconds_bucket", endpoint=ENDPOINT, le=le)

    assert queued("0.1") == 0
    assert queued("0.5") == 1
    assert queued("30.0") == 1
    assert queued("45.0") == 2
    assert queued("600.0") == 2
    assert value(series, "genrelay_run_duration_seconds_count", endpoint=ENDPOINT) == 2
    assert value(series, "genrelay_run_duration_seconds_sum", endpoint=ENDPOINT) == 3.3
    assert value(series, "genrelay_ledger_restore_duration_seconds_bucket", le="1.0") == 1
    assert value(series, "genrelay_ledger_restore_duration_seconds_bucket", le="0.5") == 0


async def test_sources_left_out_are_not_exported_and_instances_do_not_share_series() -> None:
    first = RelayMetrics()
    second = RelayMetrics()
    try:
        first.submitted(ENDPOINT)
        names = {name for name, _ in await scrape(first)}
        assert value(await scrape(first), "genrelay_submissions_total", endpoint=ENDPOINT) == 1
        assert not {n for n in names if n.startswith(("genrelay_jobs", "genrelay_in_flight"))}
        others = await scrape(second)
        assert ("genrelay_submissions_total", frozenset({("endpoint", ENDPOINT)})) not in others
    finally:
        first.shutdown()
        second.shutdown()
        second.shutdown()  # safe twice


async def test_the_exposition_names_the_service(metrics: RelayMetrics) -> None:
    series = await scrape(metrics)
    (labels,) = [dict(labels) for name, labels in series if name == "target_info"]
    assert labels["service_name"] == "genrelay"


async def test_every_counter_an_alert_may_name_exists_from_the_start() -> None:
    fresh = RelayMetrics()
    try:
        series = await scrape(fresh)
    finally:
        fresh.shutdown()
    for name in (
        "genrelay_ambiguous_submits_total",
        "genrelay_submissions_total",
        "genrelay_duplicates_suppressed_total",
        "genrelay_foreign_webhooks_total",
    ):
        assert value(series, name) == 0, name
    assert value(series, "genrelay_dead_letters_total", reason="idempotency_conflict") == 0
    assert value(series, "genrelay_outcomes_total", status="failed") == 0
    assert value(series, "genrelay_reconciled_submits_total", outcome="reposted") == 0
    assert value(series, "genrelay_step_failures_total", step="store", outcome="exhausted") == 0
