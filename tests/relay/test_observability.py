"""Operators can see what the relay does: metrics move, one trace spans a job, even a restart."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from genrelay.consumer.service.telemetry import inject_headers
from genrelay.deploy.local.stack import StackInfo
from genrelay.emulator.server import EmulatorServer
from genrelay.emulator.settings import EmulatorSettings, FixedLatency
from genrelay.schemas.ledger import Phase
from tests.browser import CHROMIUM, check_screenshot, chromium
from tests.relay.harness import (
    RunningRelay,
    TopicReader,
    completions_by_key,
    metric,
    produce,
    relay_settings,
    running,
    scrape,
    submit_and_finish,
    submit_record,
)
from tests.waiting import eventually

pytestmark = pytest.mark.integration


async def test_prometheus_metrics_move_as_jobs_run(
    stack: StackInfo, emulator: EmulatorServer
) -> None:
    settings = relay_settings(stack, emulator)
    keys = [f"metrics-{n}" for n in range(20)]
    async with running(settings):
        before = await scrape(settings)
        assert metric(before, "genrelay_ledger_restore_duration_seconds_count") >= 1
        records = [(k.encode(), submit_record(k, k)) for k in keys]
        records += [(b"bad", b"not json"), (keys[0].encode(), submit_record(keys[0], keys[0]))]
        await produce(stack.kafka_bootstrap, settings.topic_requests, records)
        async with TopicReader(stack.kafka_bootstrap, settings.topic_completions) as reader:
            await reader.until(lambda rs: len(completions_by_key(rs)) == len(keys))

        async def settled() -> bool:
            return metric(await scrape(settings), "genrelay_in_flight") == 0

        await eventually(settled)
        after = await scrape(settings)

    def moved(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert moved("genrelay_submissions_total") == len(keys)
    assert moved("genrelay_outcomes_total", status="succeeded") == len(keys)
    assert moved("genrelay_duplicates_suppressed_total") == 1
    assert moved("genrelay_dead_letters_total", reason="not_json") == 1
    assert moved("genrelay_downloaded_bytes_total") > 0
    assert moved("genrelay_uploaded_bytes_total") > 0
    assert moved("genrelay_run_duration_seconds_count") == len(keys)
    assert moved("genrelay_resolutions_total") >= len(keys)


async def test_one_trace_runs_from_the_producer_to_the_publish_across_a_restart(
    stack: StackInfo,
) -> None:
    exporter = _SurvivingExporter()
    producer_tracing = TracerProvider()
    producer_tracing.add_span_processor(SimpleSpanProcessor(exporter))
    slow = EmulatorSettings(run_latency=FixedLatency(ms=3000))
    async with EmulatorServer(slow) as emulator:
        settings = relay_settings(stack, emulator, poll_grace_seconds=0.5)
        with producer_tracing.get_tracer("shop").start_as_current_span("checkout") as root:
            headers = inject_headers()
        record = submit_record("traced", "a traced lighthouse")

        # First life: the job is submitted, then the relay stops before it finishes.
        async with running(settings, span_exporter=exporter) as first:
            await _produce_with_headers(stack, settings.topic_requests, record, headers)
            await eventually(lambda: _phase(first, "traced") is Phase.SUBMITTED)
        # Second life: a new relay restores the key from the ledger and finishes it.
        async with (
            running(settings, span_exporter=exporter),
            TopicReader(stack.kafka_bootstrap, settings.topic_completions) as reader,
        ):
            await reader.until(lambda rs: len(rs) == 1, timeout=60)

    assert json.loads(reader.records[0].value)["status"] == "succeeded"
    spans = exporter.get_finished_spans()
    names = {s.name for s in spans}
    assert {"checkout", f"process {settings.topic_requests}", "publish"} <= names
    assert {"submit", "download", "upload"} <= names
    trace_ids = {s.context.trace_id for s in spans}
    assert trace_ids == {root.get_span_context().trace_id}


class _SurvivingExporter(InMemorySpanExporter):
    """Keeps collecting after a relay shuts its tracer provider down: the next life reuses it."""

    def shutdown(self) -> None:
        pass


def _phase(running_relay: RunningRelay, key: str) -> Phase | None:
    record = running_relay.relay.ledger.get(key)
    return None if record is None else record.phase


async def _produce_with_headers(
    stack: StackInfo, topic: str, value: bytes, headers: list[tuple[str, bytes]]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=b"traced", headers=headers)
    finally:
        await producer.stop()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
async def test_the_status_page_charts_a_short_load(
    stack: StackInfo,
    emulator: EmulatorServer,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    settings = relay_settings(stack, emulator)
    keys = [f"charted-{n}" for n in range(20)]
    async with running(settings) as live:
        await submit_and_finish(stack.kafka_bootstrap, settings, keys)
        page = f"http://127.0.0.1:{live.relay.admin_port}/status"
        screenshot = tmp_path / "status-under-load.png"
        record_property("screenshot", str(screenshot))
        await chromium(tmp_path, f"--screenshot={screenshot}", page)
        dom = (await chromium(tmp_path, "--dump-dom", page)).decode()
        trends = live.relay.snapshot().to_json()["trends"]
    check_screenshot(screenshot)
    assert sum(point["completions"] for point in trends) == len(keys)
    # Each of the 20 jobs cost the relay at least its POST and a result GET at fal.
    assert sum(point["provider_calls"] for point in trends) >= 2 * len(keys)
    assert 'data-chart="completions"' in dom
    lines = re.findall(r'<polyline points="([^"]*)"[^>]*data-series="completions"', dom)
    assert lines
    assert len(lines[0].split()) == 60
