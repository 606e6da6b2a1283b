"""One trace per job: linked to the producer, continued from the ledger, even after a restart."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, get_current_span

from genrelay.consumer.service.telemetry import (
    Step,
    context_from_traceparent,
    extract_context,
    inject_headers,
    job_span,
    setup_tracing,
    step_span,
    trace_id_of,
    traceparent_of,
)

TOPIC = "genrelay.requests"
KEY = "order-42/hero"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = setup_tracing("genrelay-test", None, exporter=exporter)
    yield provider
    provider.shutdown()


def produce(provider: TracerProvider) -> list[tuple[str, bytes]]:
    """What a producer does: send a record inside its span, the context in the headers."""
    tracer = provider.get_tracer("producer")
    with tracer.start_as_current_span("send genrelay.requests", kind=SpanKind.PRODUCER):
        return inject_headers()


def start_job(provider: TracerProvider, headers: list[tuple[str, bytes]]) -> str:
    """What the relay does at intake: the job span, whose traceparent goes to the ledger."""
    producer = extract_context(headers)
    producer_traceparent = traceparent_of(get_current_span(producer))
    with job_span(
        provider.get_tracer("genrelay"),
        KEY,
        producer_traceparent=producer_traceparent,
        job_traceparent=None,
        topic=TOPIC,
        partition=3,
        offset=1207,
        consumer_group="genrelay",
    ) as span:
        stored = traceparent_of(span)
    assert stored is not None
    return stored


def by_name(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    matches = [s for s in exporter.get_finished_spans() if s.name == name]
    assert len(matches) == 1, [s.name for s in exporter.get_finished_spans()]
    return matches[0]


def test_job_span_continues_the_producer_trace_from_kafka_headers(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    headers = produce(provider)
    assert [name for name, _ in headers] == ["traceparent"]

    start_job(provider, headers)

    producer = by_name(exporter, "send genrelay.requests")
    job = by_name(exporter, f"process {TOPIC}")
    assert job.kind is SpanKind.CONSUMER
    assert [link.context.span_id for link in job.links] == [producer.context.span_id]
    assert [link.context.trace_id for link in job.links] == [producer.context.trace_id]
    # Single-message processing: a child of the producer's span, in the producer's trace.
    assert job.parent is not None
    assert job.parent.span_id == producer.context.span_id
    assert job.context.trace_id == producer.context.trace_id
    assert dict(job.attributes or {}) == {
        "messaging.system": "kafka",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": TOPIC,
        "messaging.consumer.group.name": "genrelay",
        "messaging.destination.partition.id": "3",
        "messaging.kafka.offset": 1207,
        "messaging.kafka.message.key": KEY,
    }


def test_a_record_without_trace_headers_starts_an_unlinked_job_trace(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    stored = start_job(provider, [("content-type", b"application/json")])

    job = by_name(exporter, f"process {TOPIC}")
    assert job.links == ()
    assert trace_id_of(stored) == format(job.context.trace_id, "032x")


def test_steps_under_the_stored_traceparent_are_children_of_the_job_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    headers = produce(provider)
    stored = start_job(provider, headers)
    tracer = provider.get_tracer("genrelay")

    for step in (Step.SUBMIT, Step.WEBHOOK, Step.DOWNLOAD, Step.UPLOAD, Step.PUBLISH):
        with step_span(tracer, step, stored):
            pass

    job = by_name(exporter, f"process {TOPIC}")
    for name in ("submit", "webhook", "download", "upload", "publish"):
        step_span_ = by_name(exporter, name)
        assert step_span_.parent is not None
        assert step_span_.parent.span_id == job.context.span_id
        assert step_span_.context.trace_id == job.context.trace_id
    assert by_name(exporter, "submit").kind is SpanKind.CLIENT
    assert by_name(exporter, "publish").kind is SpanKind.PRODUCER


def test_a_step_ignores_an_unrelated_current_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    tracer = provider.get_tracer("genrelay")
    stored = start_job(provider, [])
    with (
        tracer.start_as_current_span("another job's span"),
        step_span(tracer, Step.POLL, stored),
    ):
        pass

    job = by_name(exporter, f"process {TOPIC}")
    poll = by_name(exporter, "poll")
    assert poll.parent is not None
    assert poll.parent.span_id == job.context.span_id


def test_after_a_restart_steps_restored_from_the_ledger_continue_the_same_trace(
    exporter: InMemorySpanExporter,
) -> None:
    before = setup_tracing("genrelay-test", None, exporter=exporter)
    headers = produce(before)
    stored = start_job(before, headers)
    with step_span(before.get_tracer("genrelay"), Step.SUBMIT, stored):
        pass
    # The process dies (kill -9: no shutdown); nothing survives but the ledger's traceparent.
    del before

    after = setup_tracing("genrelay-test", None, exporter=exporter)
    tracer = after.get_tracer("genrelay")
    for step in (Step.POLL, Step.FETCH, Step.DOWNLOAD, Step.UPLOAD, Step.PUBLISH):
        with step_span(tracer, step, stored):
            pass
    after.shutdown()

    job = by_name(exporter, f"process {TOPIC}")
    restored = [s for s in exporter.get_finished_spans() if s.name != "send genrelay.requests"]
    assert len(restored) == 7
    assert {s.context.trace_id for s in restored} == {job.context.trace_id}
    for span in restored:
        if span is not job:
            assert span.parent is not None
            assert span.parent.span_id == job.context.span_id


def test_a_redelivered_record_continues_the_stored_job_trace(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    headers = produce(provider)
    stored = start_job(provider, headers)
    producer_traceparent = traceparent_of(get_current_span(extract_context(headers)))

    with job_span(
        provider.get_tracer("genrelay"),
        KEY,
        producer_traceparent=producer_traceparent,
        job_traceparent=stored,
        topic=TOPIC,
        partition=3,
        offset=1207,
        consumer_group="genrelay",
    ):
        pass

    first, again = [s for s in exporter.get_finished_spans() if s.name == f"process {TOPIC}"]
    assert again.context.trace_id == first.context.trace_id
    assert again.parent is not None
    assert again.parent.span_id == first.context.span_id
    assert len(again.links) == 1


def test_an_error_inside_a_step_is_recorded_on_its_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    stored = start_job(provider, [])
    with (
        pytest.raises(TimeoutError),
        step_span(provider.get_tracer("genrelay"), Step.SUBMIT, stored),
    ):
        raise TimeoutError("read timeout after send")

    submit = by_name(exporter, "submit")
    assert submit.status.status_code is StatusCode.ERROR
    assert [event.name for event in submit.events] == ["exception"]


def test_with_tracing_off_ids_still_flow_but_nothing_is_recorded() -> None:
    provider = setup_tracing("genrelay-test", None)
    tracer = provider.get_tracer("genrelay")
    with job_span(
        tracer,
        KEY,
        producer_traceparent=None,
        job_traceparent=None,
        topic=TOPIC,
        partition=0,
        offset=0,
        consumer_group="genrelay",
    ) as span:
        stored = traceparent_of(span)
        assert not span.is_recording()
    assert stored is not None
    assert int(stored[-2:], 16) & 0x01 == 0  # the sampled flag is off
    with step_span(tracer, Step.SUBMIT, stored) as step:
        assert not step.is_recording()
        assert format(step.get_span_context().trace_id, "032x") == trace_id_of(stored)
        # The step runs in the job's context: what it sends on carries the job's trace.
        assert get_current_span() is step
        assert traceparent_of(step) == stored
    assert not get_current_span().get_span_context().is_valid  # the context is restored
    provider.shutdown()


def test_header_and_traceparent_helpers_round_trip() -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    context = context_from_traceparent(traceparent)
    assert inject_headers(context) == [("traceparent", traceparent.encode())]
    assert traceparent_of(get_current_span(extract_context([("TraceParent", b"x")]))) is None
    assert traceparent_of(get_current_span(context)) == traceparent
    assert trace_id_of(traceparent) == "0af7651916cd43dd8448eb211c80319c"
    assert trace_id_of("garbage") is None
    assert trace_id_of(None) is None
    assert inject_headers(context_from_traceparent(None)) == []


class _Collector(BaseHTTPRequestHandler):
    paths: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        length = int(self.headers["content-length"])
        self.rfile.read(length)
        _Collector.paths.append(self.path)
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_spans_are_posted_to_the_otlp_http_endpoint_on_shutdown() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}/"
        provider = setup_tracing("genrelay-test", endpoint)
        with step_span(provider.get_tracer("genrelay"), Step.SUBMIT, None) as span:
            assert span.is_recording()
        provider.shutdown()  # flushes the batch synchronously
    finally:
        server.shutdown()
        server.server_close()
    assert _Collector.paths == ["/v1/traces"]
