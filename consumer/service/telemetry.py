"""Tracing: one trace per job, carried through Kafka headers and the ledger.

A producer sends a record with a W3C `traceparent` header. The relay starts a
`process {topic}` span for the job that *links* to the producer's span, and stores the job
span's own `traceparent` in the ledger. Every later step (submit, webhook, poll, fetch,
download, upload, publish, cancel) starts a child of that stored context, so the steps of a
job that outlives the consumer callback, or the process itself, land in one trace:

    producer span  <--link--  process genrelay.requests   (parent of every step)
                                 |-- submit
                                 |-- poll / webhook / fetch
                                 |-- download, upload
                                 '-- publish                (its headers carry this context on)

With no exporter configured the provider samples nothing: job spans still get valid ids (so
trace ids reach the ledger and the logs) but nothing is recorded or exported, and a step
runs in its job's context without a span of its own (it would be dropped unseen anyway).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from enum import StrEnum

from opentelemetry.context import Context, attach, detach
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import (
    Link,
    Span,
    SpanKind,
    Tracer,
    get_current_span,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

TRACES_PATH = "/v1/traces"
TRACEPARENT = "traceparent"

# W3C trace context explicitly, not the global propagator: the header format is part of the
# record contract, so a process-wide setting must not change what we read or write.
_W3C = TraceContextTextMapPropagator()

KafkaHeaders = Sequence[tuple[str, bytes | None]]


class Step(StrEnum):
    """The steps of a job that get their own span, named by what they do."""

    SUBMIT = "submit"
    WEBHOOK = "webhook"
    POLL = "poll"
    FETCH = "fetch"
    DOWNLOAD = "download"
    UPLOAD = "upload"
    PUBLISH = "publish"
    CANCEL = "cancel"
    SEARCH = "search"


_STEP_KIND = {
    Step.SUBMIT: SpanKind.CLIENT,
    Step.WEBHOOK: SpanKind.CONSUMER,
    Step.POLL: SpanKind.CLIENT,
    Step.FETCH: SpanKind.CLIENT,
    Step.DOWNLOAD: SpanKind.CLIENT,
    Step.UPLOAD: SpanKind.CLIENT,
    Step.PUBLISH: SpanKind.PRODUCER,
    Step.CANCEL: SpanKind.CLIENT,
    Step.SEARCH: SpanKind.CLIENT,
}


def setup_tracing(
    service_name: str,
    otlp_endpoint: str | None,
    exporter: SpanExporter | None = None,
) -> TracerProvider:
    """A tracer provider for the service; call `shutdown()` on it at exit to flush spans.

    `otlp_endpoint` is the collector's OTLP/HTTP base URL (`http://127.0.0.1:4318`;
    `/v1/traces` is appended unless present); spans go there in batches. `exporter` receives
    every span synchronously as it ends (tests, in-process collectors). With neither, nothing
    is sampled. The provider is returned, not installed globally, so a process (or a test)
    can hold several.
    """
    # Off means off even under a sampled parent: a stored traceparent must not switch it on.
    sampler = ALWAYS_OFF if otlp_endpoint is None and exporter is None else None
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}), sampler=sampler
    )
    if otlp_endpoint is not None:
        url = otlp_endpoint.rstrip("/")
        if not url.endswith(TRACES_PATH):
            url += TRACES_PATH
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


class _HeaderGetter(Getter[KafkaHeaders]):
    """Reads W3C fields from Kafka headers (a list of name/bytes pairs; names may repeat)."""

    def get(self, carrier: KafkaHeaders, key: str) -> list[str] | None:
        values = [
            value.decode("utf-8", errors="replace")
            for name, value in carrier
            if name.lower() == key and value is not None
        ]
        return values or None

    def keys(self, carrier: KafkaHeaders) -> list[str]:
        return [name for name, _ in carrier]


_HEADERS = _HeaderGetter()


def extract_context(headers: KafkaHeaders) -> Context:
    """The trace context a producer put in a record's headers (empty if it put none)."""
    return _W3C.extract(headers, context=Context(), getter=_HEADERS)


def inject_headers(context: Context | None = None) -> list[tuple[str, bytes]]:
    """Kafka headers carrying `context` (default: the current one); empty without a span."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=context)
    return [(name, value.encode()) for name, value in carrier.items()]


def traceparent_of(span: Span) -> str | None:
    """The span's context as a `traceparent` string, for the ledger; None for a no-op span."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=set_span_in_context(span))
    return carrier.get(TRACEPARENT)


@functools.lru_cache(maxsize=4096)
def context_from_traceparent(traceparent: str | None) -> Context:
    """A context whose parent is the span a stored `traceparent` names (empty if unreadable).

    Cached: every step of a job parses the same string, and a `Context` is immutable."""
    if not traceparent:
        return Context()
    return _W3C.extract({TRACEPARENT: traceparent}, context=Context())


def _recording(tracer: Tracer) -> bool:
    """Whether `tracer` may record spans: not an SDK tracer whose sampler is off."""
    return getattr(tracer, "sampler", None) is not ALWAYS_OFF


def trace_id_of(traceparent: str | None) -> str | None:
    """The 32-hex-digit trace id in a `traceparent` (for log lines), or None if unreadable."""
    span_context = get_current_span(context_from_traceparent(traceparent)).get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


@contextmanager
def job_span(
    tracer: Tracer,
    key: str,
    *,
    producer_traceparent: str | None,
    job_traceparent: str | None,
    topic: str,
    partition: int,
    offset: int,
    consumer_group: str,
) -> Iterator[Span]:
    """The current span while a request record is processed; store `traceparent_of(span)`.

    Each record is processed on its own, so, as the messaging conventions recommend for
    single-message processing, the span is a child of the producer's context (and links to it):
    the producer's trace runs through submit, webhook or poll, download, upload and publish. A
    record for a key whose context the ledger already holds (`job_traceparent`) continues that.
    """
    producer = get_current_span(context_from_traceparent(producer_traceparent))
    links = [Link(producer.get_span_context())] if producer.get_span_context().is_valid else []
    attributes: dict[str, AttributeValue] = {
        "messaging.system": "kafka",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": topic,
        "messaging.consumer.group.name": consumer_group,
        "messaging.destination.partition.id": str(partition),
        "messaging.kafka.offset": offset,
        "messaging.kafka.message.key": key,
    }
    with tracer.start_as_current_span(
        f"process {topic}",
        context=context_from_traceparent(job_traceparent or producer_traceparent),
        kind=SpanKind.CONSUMER,
        links=links,
        attributes=attributes,
    ) as span:
        yield span


@contextmanager
def step_span(
    tracer: Tracer,
    step: Step,
    parent_traceparent: str | None,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> Iterator[Span]:
    """The current span while one step of a job runs, a child of the job's stored context.

    The parent is always the stored `traceparent`, never whatever span happens to be current:
    an actor task inherits the context it was created in, which may belong to another job. A
    job with no stored context gets a root span. An exception escaping the block is recorded
    on the span and marks it as an error. When nothing is sampled the step runs in the job's
    context itself, which is all a span that is never recorded would give it.
    """
    if not _recording(tracer):
        token = attach(context_from_traceparent(parent_traceparent))
        try:
            yield get_current_span()
        finally:
            detach(token)
        return
    with tracer.start_as_current_span(
        step.value,
        context=context_from_traceparent(parent_traceparent),
        kind=_STEP_KIND[step],
        attributes=attributes,
    ) as span:
        yield span
