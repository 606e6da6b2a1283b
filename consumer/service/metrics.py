"""The relay's metrics: OpenTelemetry instruments, exposed for Prometheus at `/metrics`.

`RelayMetrics` owns a `MeterProvider` whose Prometheus reader renders into its own
`prometheus_client` registry, served on the service's HTTP port (no second server, no
process-wide registry, so several instances can live in one process). Counters and
histograms are recorded through typed methods as things happen; gauges of live state (jobs
by phase, in-flight, uncommitted offsets) are read from callbacks when Prometheus scrapes.

Series, as Prometheus sees them (all `genrelay_`):

    jobs{phase}                         in_flight, in_flight_per_endpoint{endpoint},
    outcomes_total{status,endpoint}       in_flight_per_tenant{tenant}
    waiting_per_tenant{tenant}          share_per_tenant{tenant}
    budget_usd{tenant}                  period_spend_usd{tenant}
    budget_waiting{tenant}              budget_refusals_total{tenant,outcome}
    submissions_total{endpoint}         submit_retries_total{endpoint}
    ambiguous_submits_total{endpoint}   duplicates_suppressed_total, replays_total
    resolutions_total{source}           dead_letters_total{reason}
    states_too_large_total              fenced_partitions_total
    queue_duration_seconds{endpoint}    run_duration_seconds{endpoint}      (histograms)
    downloaded_bytes_total, download_duration_seconds, uploaded_bytes_total,
    upload_duration_seconds             ledger_restore_duration_seconds    (histogram)
    rebalance_callback_duration_seconds (histogram: how long the group waited for this member)
    uncommitted_offsets{topic,partition}, oldest_in_flight_age_seconds{topic,partition}
    transactions_total, transaction_records_total (records per transaction: their ratio)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from genrelay.schemas.dead_letter import DeadLetterReason
from genrelay.schemas.ledger import TERMINAL_PHASES, Phase

# The phases a key can be in while a replica owns it unfinished.
OPEN_PHASE_NAMES = tuple(phase.value for phase in Phase if phase not in TERMINAL_PHASES)

METRICS_PATH = "/metrics"


def _seconds(*bounds: float) -> tuple[float, ...]:
    # As floats, so bucket labels read le="30.0", the way prometheus_client writes its own.
    return tuple(float(bound) for bound in bounds)


# Jobs wait seconds in a queue and minutes on a cold start: fine buckets below a second, and
# enough between 10 s and 10 min that a cold start stands apart from a slow run.
JOB_SECONDS = _seconds(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 450, 600)
TRANSFER_SECONDS = _seconds(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
RESTORE_SECONDS = _seconds(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

TopicPartitionKey = tuple[str, int]
_Callback = Callable[[CallbackOptions], Iterable[Observation]]


class Resolution(StrEnum):
    """How the relay learnt that a job finished."""

    WEBHOOK = "webhook"
    POLL = "poll"


@dataclass(frozen=True)
class GaugeSources:
    """Callbacks read at every scrape, on the event loop; a source left out is not exported.

    They must be quick and must not block: they run inside the `/metrics` request.
    """

    jobs_by_phase: Callable[[], Mapping[str, int]] | None = None
    in_flight: Callable[[], int] | None = None
    in_flight_by_endpoint: Callable[[], Mapping[str, int]] | None = None
    in_flight_by_tenant: Callable[[], Mapping[str, int]] | None = None
    waiting_by_tenant: Callable[[], Mapping[str, int]] | None = None
    share_by_tenant: Callable[[], Mapping[str, float]] | None = None
    budget_waiting_by_tenant: Callable[[], Mapping[str, int]] | None = None
    period_spend_by_tenant: Callable[[], Mapping[str, float]] | None = None
    budget_by_tenant: Callable[[], Mapping[str, float]] | None = None
    uncommitted_offsets: Callable[[], Mapping[TopicPartitionKey, int]] | None = None
    oldest_in_flight_age: Callable[[], Mapping[TopicPartitionKey, float]] | None = None
    # Transactions committed so far, and the records in them (monotonic).
    committed: Callable[[], tuple[int, int]] | None = None


def _by(label: str, read: Callable[[], Mapping[str, float]]) -> _Callback:
    def observe(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, {label: name}) for name, value in read().items()]

    return observe


def _per_partition(read: Callable[[], Mapping[TopicPartitionKey, float]]) -> _Callback:
    def observe(options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(value, {"topic": topic, "partition": str(partition)})
            for (topic, partition), value in read().items()
        ]

    return observe


def _single(read: Callable[[], int]) -> _Callback:
    def observe(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(read())]

    return observe


class RelayMetrics:
    """Every metric of one relay, and the `/metrics` route that exposes them."""

    def __init__(
        self, sources: GaugeSources | None = None, *, service_name: str = "genrelay"
    ) -> None:
        self.registry = CollectorRegistry()
        # Scope labels would repeat `otel_scope_name="genrelay"` on every series.
        reader = PrometheusMetricReader(registry=self.registry, scope_info_enabled=False)
        self._provider = MeterProvider(
            resource=Resource.create({"service.name": service_name}), metric_readers=[reader]
        )
        self._closed = False
        meter = self._provider.get_meter("genrelay")

        self._outcomes = meter.create_counter(
            "genrelay.outcomes", description="terminal outcomes published, by status"
        )
        self._submissions = meter.create_counter(
            "genrelay.submissions", description="paid submissions posted to the provider"
        )
        self._submit_retries = meter.create_counter(
            "genrelay.submit_retries", description="submits that provably never arrived, retried"
        )
        self._ambiguous = meter.create_counter(
            "genrelay.ambiguous_submits", description="submits whose outcome became UNKNOWN"
        )
        self._history_searches = meter.create_counter(
            "genrelay.history_searches",
            description="searches of the provider's request history for an ambiguous submit",
        )
        self._spend = meter.create_counter(
            "genrelay.spend_usd",
            description="estimated cost of finished keys (billed units times the unit price)",
        )
        self._reconciled = meter.create_counter(
            "genrelay.reconciled_submits",
            description="ambiguous submits settled from the provider's request history",
        )
        self._duplicates = meter.create_counter(
            "genrelay.duplicates_suppressed", description="records for a key already in hand"
        )
        self._replays = meter.create_counter(
            "genrelay.replays", description="stored outcomes replayed to a late duplicate"
        )
        self._resolutions = meter.create_counter(
            "genrelay.resolutions", description="jobs whose end was learnt, by source"
        )
        self._dead_letters = meter.create_counter(
            "genrelay.dead_letters", description="records sent to the dead-letter topic"
        )
        self._rebalance = meter.create_histogram(
            "genrelay.rebalance.callback.duration",
            unit="s",
            description="time the assignment callback took (heartbeats wait for it)",
            explicit_bucket_boundaries_advisory=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0),
        )
        self._too_large = meter.create_counter(
            "genrelay.states_too_large",
            description="keys ended result_too_large: their state exceeded the record limit",
        )
        self._step_failures = meter.create_counter(
            "genrelay.step_failures",
            description="transient failures of a poll, fetch or store; outcome=exhausted ended"
            " the key (its retry budget or deadline was spent)",
        )
        self._foreign_webhooks = meter.create_counter(
            "genrelay.foreign_webhooks",
            description="webhooks naming a request our fal account does not know (not adopted)",
        )
        self._fenced = meter.create_counter(
            "genrelay.fenced_partitions",
            description="partitions this replica lost because a newer owner fenced it",
        )
        self._budget_refusals = meter.create_counter(
            "genrelay.budget_refusals",
            description="keys whose estimate did not fit their tenant's budget, by outcome"
            " (wait: waiting unposted; fail: ended budget_exceeded unpaid)",
        )
        self._queue_time = meter.create_histogram(
            "genrelay.queue.duration",
            unit="s",
            description="time from acceptance until the provider started the job",
            explicit_bucket_boundaries_advisory=JOB_SECONDS,
        )
        self._run_time = meter.create_histogram(
            "genrelay.run.duration",
            unit="s",
            description="time the provider spent running the job",
            explicit_bucket_boundaries_advisory=JOB_SECONDS,
        )
        self._download_bytes = meter.create_counter(
            "genrelay.downloaded", unit="By", description="output bytes downloaded"
        )
        self._download_time = meter.create_histogram(
            "genrelay.download.duration",
            unit="s",
            description="time to download one output file",
            explicit_bucket_boundaries_advisory=TRANSFER_SECONDS,
        )
        self._upload_bytes = meter.create_counter(
            "genrelay.uploaded", unit="By", description="output bytes written to the object store"
        )
        self._upload_time = meter.create_histogram(
            "genrelay.upload.duration",
            unit="s",
            description="time to upload one output file",
            explicit_bucket_boundaries_advisory=TRANSFER_SECONDS,
        )
        self._restore_time = meter.create_histogram(
            "genrelay.ledger_restore.duration",
            unit="s",
            description="time to restore the ledger of newly assigned partitions",
            explicit_bucket_boundaries_advisory=RESTORE_SECONDS,
        )
        self._observe(meter, sources or GaugeSources())
        self._prime()

    def _prime(self) -> None:
        """Every counter exists from the start, at zero for each label value known in
        advance, so an alert on it can be written before anything happened."""
        for counter in (
            self._submissions,
            self._submit_retries,
            self._ambiguous,
            self._duplicates,
            self._replays,
            self._too_large,
            self._foreign_webhooks,
            self._fenced,
        ):
            counter.add(0)
        for status in ("succeeded", "failed", "cancelled", "expired"):
            self._outcomes.add(0, {"status": status})
        for reason in DeadLetterReason:
            self._dead_letters.add(0, {"reason": reason.value})
        for source in Resolution:
            self._resolutions.add(0, {"source": source.value})
        for outcome in ("found", "none", "unavailable"):
            self._history_searches.add(0, {"outcome": outcome})
        for outcome in ("adopted", "reposted"):
            self._reconciled.add(0, {"outcome": outcome})
        for step in ("poll", "fetch", "store"):
            for outcome in ("retry", "exhausted"):
                self._step_failures.add(0, {"step": step, "outcome": outcome})

    @staticmethod
    def _observe(meter: Meter, sources: GaugeSources) -> None:
        def gauge(name: str, description: str, callback: _Callback, unit: str = "") -> None:
            meter.create_observable_gauge(
                name, callbacks=[callback], unit=unit, description=description
            )

        if sources.jobs_by_phase is not None:
            by_phase = sources.jobs_by_phase

            def every_phase() -> Mapping[str, int]:
                # Each open phase is reported, at 0 when no key is in it.
                return {**dict.fromkeys(OPEN_PHASE_NAMES, 0), **by_phase()}

            gauge("genrelay.jobs", "owned keys by phase", _by("phase", every_phase))
        if sources.in_flight is not None:
            gauge("genrelay.in_flight", "jobs holding a slot", _single(sources.in_flight))
        if sources.in_flight_by_endpoint is not None:
            read = _by("endpoint", sources.in_flight_by_endpoint)
            gauge("genrelay.in_flight_per_endpoint", "jobs holding a slot, by endpoint", read)
        if sources.in_flight_by_tenant is not None:
            read = _by("tenant", sources.in_flight_by_tenant)
            gauge("genrelay.in_flight_per_tenant", "jobs holding a slot, by tenant", read)
        if sources.waiting_by_tenant is not None:
            read = _by("tenant", sources.waiting_by_tenant)
            gauge("genrelay.waiting_per_tenant", "keys waiting for a slot, by tenant", read)
        if sources.share_by_tenant is not None:
            read = _by("tenant", sources.share_by_tenant)
            help_ = "each active tenant's share of the slots (its weight over the active ones')"
            gauge("genrelay.share_per_tenant", help_, read)
        if sources.budget_waiting_by_tenant is not None:
            read = _by("tenant", sources.budget_waiting_by_tenant)
            gauge("genrelay.budget_waiting", "keys waiting, unposted, for their budget", read)
        if sources.period_spend_by_tenant is not None:
            read = _by("tenant", sources.period_spend_by_tenant)
            help_ = "spend of budgeted tenants in the current period (every replica's), USD"
            gauge("genrelay.period_spend_usd", help_, read)
        if sources.budget_by_tenant is not None:
            read = _by("tenant", sources.budget_by_tenant)
            gauge("genrelay.budget_usd", "each budgeted tenant's budget for the period", read)
        if sources.uncommitted_offsets is not None:
            read = _per_partition(sources.uncommitted_offsets)
            help_ = "offsets between the commit point and the newest record taken"
            gauge("genrelay.uncommitted_offsets", help_, read)
        if sources.oldest_in_flight_age is not None:
            read = _per_partition(sources.oldest_in_flight_age)
            gauge("genrelay.oldest_in_flight_age", "age of the oldest unfinished record", read, "s")
        if sources.committed is not None:
            committed = sources.committed
            meter.create_observable_counter(
                "genrelay.transactions",
                callbacks=[_single(lambda: committed()[0])],
                description="transactions committed by this replica's partition writers",
            )
            meter.create_observable_counter(
                "genrelay.transaction_records",
                callbacks=[_single(lambda: committed()[1])],
                description="records committed in those transactions",
            )

    # --- recording ------------------------------------------------------------------------

    def outcome(self, status: str, endpoint: str) -> None:
        """A terminal outcome was published (`succeeded`, `failed`, `cancelled`, `expired`)."""
        self._outcomes.add(1, {"status": status, "endpoint": endpoint})

    def submitted(self, endpoint: str) -> None:
        """A paid submission is about to be posted."""
        self._submissions.add(1, {"endpoint": endpoint})

    def submit_retried(self, endpoint: str) -> None:
        """A submit that never reached the provider is scheduled again."""
        self._submit_retries.add(1, {"endpoint": endpoint})

    def ambiguous_submit(self, endpoint: str) -> None:
        """A submit may or may not have arrived; the key went UNKNOWN."""
        self._ambiguous.add(1, {"endpoint": endpoint})

    def history_search(self, outcome: str) -> None:
        """A search of the request history: `found`, `none` or `unavailable`."""
        self._history_searches.add(1, {"outcome": outcome})

    def spent(self, usd: float, endpoint: str, tenant: str | None) -> None:
        """A key finished with an estimated cost."""
        self._spend.add(usd, {"endpoint": endpoint, "tenant": tenant or ""})

    def reconciled(self, outcome: str) -> None:
        """An ambiguous submit settled by the history: `adopted`, or `reposted` (proven never
        to have arrived)."""
        self._reconciled.add(1, {"outcome": outcome})

    def duplicate_suppressed(self) -> None:
        """A submit record for a key already known changed nothing."""
        self._duplicates.add(1)

    def replayed(self) -> None:
        """A late duplicate got the stored completion event again."""
        self._replays.add(1)

    def resolved(self, source: Resolution) -> None:
        """The end of a job was learnt from a webhook or a poll."""
        self._resolutions.add(1, {"source": source.value})

    def dead_lettered(self, reason: str) -> None:
        """A record went to the dead-letter topic with this reason code."""
        self._dead_letters.add(1, {"reason": reason})

    def rebalanced(self, callback_seconds: float) -> None:
        """The group assigned partitions; the callback took this long."""
        self._rebalance.record(callback_seconds)

    def too_large(self) -> None:
        """A key's state could not be stored whole: it ended `result_too_large`."""
        self._too_large.add(1)

    def step_failed(self, step: str, *, exhausted: bool) -> None:
        """A step failed transiently; `exhausted`: its budget is spent and the key ended."""
        self._step_failures.add(1, {"step": step, "outcome": "exhausted" if exhausted else "retry"})

    def foreign_webhook(self) -> None:
        """A webhook through our URL named another account's request; it was not adopted."""
        self._foreign_webhooks.add(1)

    def budget_refused(self, tenant: str, *, waits: bool) -> None:
        """A key's estimate did not fit its tenant's budget: it waits, or it failed unpaid."""
        self._budget_refusals.add(1, {"tenant": tenant, "outcome": "wait" if waits else "fail"})

    def fenced(self) -> None:
        """A newer owner fenced one of this replica's partitions."""
        self._fenced.add(1)

    def job_timings(self, endpoint: str, *, queued_seconds: float, run_seconds: float) -> None:
        """How long a finished job waited in the provider's queue and how long it ran."""
        self._queue_time.record(queued_seconds, {"endpoint": endpoint})
        self._run_time.record(run_seconds, {"endpoint": endpoint})

    def downloaded(self, size: int, seconds: float) -> None:
        """One output file was downloaded."""
        self._download_bytes.add(size)
        self._download_time.record(seconds)

    def uploaded(self, size: int, seconds: float) -> None:
        """One output file was written to the object store."""
        self._upload_bytes.add(size)
        self._upload_time.record(seconds)

    def ledger_restored(self, seconds: float) -> None:
        """The ledger of newly assigned partitions was read back."""
        self._restore_time.record(seconds)

    # --- exposition -----------------------------------------------------------------------

    def metrics_route(self, path: str = METRICS_PATH) -> Route:
        """The Starlette route that serves the Prometheus exposition."""
        return Route(path, self._render, methods=["GET"])

    async def _render(self, request: Request) -> Response:
        # An async endpoint on purpose: gauge callbacks read the relay's state, which only the
        # event loop's thread may touch; a sync endpoint would run them in a worker thread.
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encode(self.registry), media_type=content_type)

    def shutdown(self) -> None:
        """Stop the provider and detach from the registry; safe to call twice."""
        if not self._closed:
            self._closed = True
            self._provider.shutdown()
