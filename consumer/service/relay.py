"""The relay service: one Kafka consumer-group member that owns some partitions' keys.

It wires the parts (intake, ledger, jobs, webhook receiver, results, events) and runs three
supervised loops: the poll loop (never blocks on jobs), the offset committer, and the HTTP
server. Shutdown runs in a fixed order: stop fetching, let running steps finish within the
grace period, commit, flush the producer, close clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import CommitFailedError, KafkaError
from opentelemetry.sdk.trace.export import SpanExporter
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from genrelay.consumer import lifecycle as lc
from genrelay.consumer.artifacts.files import Downloader, DownloadPolicy
from genrelay.consumer.artifacts.object_store import MinioStore
from genrelay.consumer.artifacts.results import ResultFiles
from genrelay.consumer.dispatch.budgets import Budgets
from genrelay.consumer.dispatch.jobs import Jobs, Timing
from genrelay.consumer.dispatch.partitions import Ownership, OwnershipConfig
from genrelay.consumer.dispatch.slots import Slots
from genrelay.consumer.errors import Fenced
from genrelay.consumer.events.publisher import KafkaPublisher
from genrelay.consumer.events.recent_outcomes import RecentOutcomes
from genrelay.consumer.intake.intake import Command, Refuse, Rekey, SourceRecord, classify
from genrelay.consumer.intake.offsets import PartitionOffsets
from genrelay.consumer.ledger.ledger import Ledger, RestoreStats
from genrelay.consumer.ledger.partition_writer import Outgoing, Writers
from genrelay.consumer.ledger.spend import SpendBook
from genrelay.consumer.provider.fal import FalProvider
from genrelay.consumer.provider.fal_platform import FalPlatform
from genrelay.consumer.provider.http_transport import pooled_client
from genrelay.consumer.provider.prices import Prices
from genrelay.consumer.provider.webhook_receiver import WEBHOOK_PATH, WebhookReceiver, app
from genrelay.consumer.provider.webhook_signature import JwksCache, WebhookToken
from genrelay.consumer.service.admin_pages import admin_page_routes
from genrelay.consumer.service.config import RECORD_HEADROOM, Settings
from genrelay.consumer.service.health import Readiness, address_of
from genrelay.consumer.service.listeners import Listener, admin_app
from genrelay.consumer.service.metrics import GaugeSources, RelayMetrics, Resolution
from genrelay.consumer.service.openapi import openapi_route
from genrelay.consumer.service.status_page import StatusSnapshot, TenantShare, status_routes
from genrelay.consumer.service.telemetry import setup_tracing
from genrelay.consumer.service.topics import ensure_topics
from genrelay.consumer.steps import Observers, Steps, to_job
from genrelay.schemas.base import to_json_bytes
from genrelay.schemas.dead_letter import DeadLetterReason
from genrelay.schemas.ledger import ProviderJob
from genrelay.schemas.topics import partition_for
from genrelay.schemas.webhooks import WebhookDelivery

log = logging.getLogger(__name__)
# How often keys waiting for budget ask again when nothing told them to.
BUDGET_TICK_SECONDS = 5.0


@dataclass(frozen=True)
class _StateDir:
    path: Path
    temporary: bool

    def cleanup(self) -> None:
        if self.temporary:
            shutil.rmtree(self.path, ignore_errors=True)


def _state_dir(settings: Settings) -> _StateDir:
    # A static member (GENRELAY_INSTANCE_ID) finds its stores again after a restart; any
    # other replica's identity ends with its process, so its stores go with it.
    base = settings.state_dir / settings.group_id
    if settings.instance_id:
        return _StateDir(base / settings.instance_id, temporary=False)
    base.mkdir(parents=True, exist_ok=True)
    return _StateDir(Path(tempfile.mkdtemp(prefix="replica-", dir=base)), temporary=True)


@dataclass
class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    # Bookkeeping only: the group waits for these, and heartbeats stop while it does.
    ownership: Ownership

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.ownership.revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.ownership.assigned(assigned)


class Relay:
    """`async with Relay(settings) as relay: await relay.run()` — one replica of genrelay."""

    def __init__(self, settings: Settings, *, span_exporter: SpanExporter | None = None) -> None:
        self.settings = settings
        self.topics = settings.topics
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            enable_idempotence=True,
            acks="all",
            linger_ms=2,
            max_request_size=settings.kafka_max_request_bytes,
        )
        self._http = pooled_client(timeout=httpx.Timeout(30.0, connect=5.0))
        self.provider = FalProvider(
            settings.fal_key.get_secret_value(),
            base_url=settings.fal_queue_url,
            client=self._http,
            output_lifetime=settings.output_lifetime_seconds,
            disable_fallbacks=settings.disable_fallbacks,
        )
        self.platform = FalPlatform(
            settings.fal_key.get_secret_value(),
            base_url=settings.fal_platform_url,
            client=self._http,
        )
        self.writers = Writers()
        self._state_dir = _state_dir(settings)
        # Spend per tenant and period moves with the ledger's states (see ledger/spend.py).
        self.spend = SpendBook(settings.kafka_bootstrap, self.topics.spend)
        self.ledger = Ledger(
            self.writers,
            settings.kafka_bootstrap,
            self.topics.ledger,
            self._state_dir.path,
            spend=self.spend,
        )
        self.tracer_provider = setup_tracing(
            settings.service_name, settings.otlp_endpoint, exporter=span_exporter
        )
        tracer = self.tracer_provider.get_tracer("genrelay")
        self.metrics = RelayMetrics(self._gauges(), service_name=settings.service_name)
        self.recent = RecentOutcomes(in_flight=lambda: self.slots.used)
        self._http.event_hooks["request"].append(self._provider_called)
        observers = Observers(tracer=tracer, metrics=self.metrics, recent=self.recent)
        self.publisher = KafkaPublisher(
            self._producer,
            self.writers,
            self.topics,
            self.metrics,
            max_record_bytes=settings.kafka_max_request_bytes,
            recent=self.recent,
        )
        self.slots = Slots(
            settings.max_in_flight,
            settings.max_in_flight_per_endpoint,
            settings.max_in_flight_per_tenant,
            settings.tenant_weights,
        )
        self._download_http = pooled_client(timeout=httpx.Timeout(60.0, connect=10.0))
        self._downloader = Downloader(self._download_http, policy=self._download_policy())
        self.store = MinioStore(
            settings.s3_endpoint,
            access_key=settings.s3_access_key.get_secret_value(),
            secret_key=settings.s3_secret_key.get_secret_value(),
            secure=settings.s3_secure,
            region=settings.s3_region,
            max_workers=settings.upload_threads,
        )
        files = ResultFiles(
            self._downloader,
            self.store,
            bucket=settings.bucket,
            prefix=settings.prefix,
            tracer=tracer,
            metrics=self.metrics,
            concurrency=settings.max_concurrent_stores,
        )
        secret = settings.webhook_secret.get_secret_value().encode()
        self._tokens = WebhookToken(secret) if secret else None
        # Our fal account's user id: configured, or learnt from a webhook of our own request.
        self._account: str | None = settings.fal_user_id
        timing = Timing(
            poll_grace=settings.poll_grace_seconds,
            poll_max_interval=settings.poll_max_interval_seconds,
            poll_rate=settings.poll_rate_per_second,
            # A few searches per lag: an arrived request is adopted soon after it is listed.
            history_search_interval=min(30.0, max(1.0, settings.history_lag_seconds / 4)),
        )
        prices = Prices(self.platform, settings.prices)
        steps = Steps(
            provider=self.provider,
            files=files,
            publisher=self.publisher,
            webhook_url=self._webhook_url,
            observers=observers,
            backoff=lambda attempt: self.jobs.backoff(attempt),
            history=self.platform if settings.reconcile_from_history else None,
            prices=prices,
        )
        self.budgets = Budgets(settings.kafka_bootstrap, self.topics.budgets, self.spend, prices)
        self.jobs = Jobs(
            ledger=self.ledger,
            steps=steps,
            slots=self.slots,
            observers=observers,
            group_id=settings.group_id,
            policy=settings.policy,
            timing=timing,
            on_crash=self._crashed,
            budgets=self.budgets,
        )
        # A raised budget frees its tenant's waiting keys at once; spend that fell (read from
        # other replicas, or a new period) frees everyone's at the next budget tick.
        self.budgets.on_change = self.jobs.budget_changed
        self.receiver = (
            WebhookReceiver(
                tokens=self._tokens,
                jwks=JwksCache(self._http, url=settings.fal_jwks_url),
                handoff=self._hand_over,
                max_body_bytes=settings.max_webhook_bytes,
                fal_user_id=settings.fal_user_id,
            )
            if self._tokens
            else None
        )
        self.ownership = Ownership(
            OwnershipConfig(
                bootstrap=settings.kafka_bootstrap,
                group_id=settings.group_id,
                release_grace=2.0,
                lost_wait=settings.session_timeout_ms / 1000 * 1.5,
                max_record_bytes=settings.kafka_max_request_bytes,
            ),
            self.topics,
            ledger=self.ledger,
            jobs=self.jobs,
            writers=self.writers,
            metrics=self.metrics,
            on_change=self._ownership_changed,
            on_crash=self._crashed,
        )
        self._consumer: AIOKafkaConsumer | None = None
        self._offsets = self.ownership.offsets
        self._partitions = 0
        self._paused = False
        self._stopping = asyncio.Event()
        self._fatal: BaseException | None = None
        self._listeners: list[Listener] = []
        self.http_app: Starlette | None = None  # the public listener's
        self.admin_http_app: Starlette | None = None  # the admin listener's (inside the token)
        self._tasks: set[asyncio.Task[None]] = set()
        # Set while this replica is a stable group member with every partition restored.
        self.ready = asyncio.Event()
        self._reported_restore: RestoreStats | None = None
        self._readiness = Readiness(
            {
                "kafka": address_of(settings.kafka_bootstrap, 9092),
                "object_store": address_of(settings.s3_endpoint, 443 if settings.s3_secure else 80),
                "provider": address_of(settings.fal_queue_url, 443),
            }
        )
        self.http_port: int | None = None
        self.admin_port: int | None = None

    def _gauges(self) -> GaugeSources:
        # Read at scrape time, on the event loop's thread.
        return GaugeSources(
            jobs_by_phase=lambda: self.jobs.phases(),
            in_flight=lambda: self.slots.used,
            in_flight_by_endpoint=lambda: self.slots.by_endpoint(),
            in_flight_by_tenant=lambda: self.slots.by_tenant(),
            waiting_by_tenant=lambda: self.slots.waiting_by_tenant(),
            share_by_tenant=lambda: self.slots.shares(),
            budget_waiting_by_tenant=lambda: self.jobs.waiting_for_budget(),
            period_spend_by_tenant=lambda: {
                t: spent for t, (spent, _) in self.budgets.period_spend().items()
            },
            budget_by_tenant=lambda: {t: b.usd for t, b in self.budgets.all().items()},
            uncommitted_offsets=lambda: {
                (tp.topic, tp.partition): t.span for tp, t in self._offsets.items()
            },
            oldest_in_flight_age=lambda: {
                (tp.topic, tp.partition): t.oldest_age() for tp, t in self._offsets.items()
            },
            committed=self.writers.committed,
        )

    def snapshot(self) -> StatusSnapshot:
        """What the status page shows."""
        return StatusSnapshot(
            ready=self.ownership.all_ready() and not self._stopping.is_set(),
            partitions=self.ownership.owned(),
            in_flight=self.slots.used,
            by_phase=self.jobs.phases(),
            by_endpoint=self.slots.by_endpoint(),
            by_tenant=self._tenant_shares(),
            rates=self.recent.rates(),
            completions=self.recent.completions(),
            failures=self.recent.failures(),
            trends=self.recent.trends(),
            instance=self.settings.instance_id or "",
        )

    async def _provider_called(self, request: httpx.Request) -> None:
        self.recent.provider_called()

    def _tenant_shares(self) -> dict[str, TenantShare]:
        held, waiting = self.slots.by_tenant(), self.slots.waiting_by_tenant()
        shares = self.slots.shares()
        parked = self.jobs.waiting_for_budget()
        budgets = self.budgets.period_spend()
        return {
            tenant: TenantShare(
                held.get(tenant, 0),
                waiting.get(tenant, 0),
                shares.get(tenant, 0.0),
                parked.get(tenant, 0),
                *budgets.get(tenant, (None, None)),
            )
            for tenant in sorted({*shares, *parked, *budgets})
        }

    def _download_policy(self) -> DownloadPolicy:
        s = self.settings
        schemes = (
            frozenset({"https", "http"}) if s.allow_private_downloads else frozenset({"https"})
        )
        return DownloadPolicy(
            allowed_hosts=tuple(s.download_hosts),
            allowed_schemes=schemes,
            allow_private_addresses=s.allow_private_downloads,
            max_bytes=s.max_download_bytes,
        )

    def _webhook_url(self, key: str, attempt: int) -> str | None:
        base = self.settings.public_webhook_url
        if base is None or self._tokens is None:
            return None  # polling only
        return self._tokens.build_webhook_url(f"{base}{WEBHOOK_PATH}", key, attempt)

    # --- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Relay:
        self._partitions = await ensure_topics(self.settings)
        self.ownership.partition_count = self._partitions
        await self._producer.start()
        await self._start_http()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def run(self) -> None:
        """Consume until `stop()` is called or a part crashes (then re-raise its error)."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=self.settings.group_id,
            group_instance_id=self.settings.instance_id,
            session_timeout_ms=self.settings.session_timeout_ms,
            heartbeat_interval_ms=max(1000, self.settings.session_timeout_ms // 5),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Re-keyed records and everything else genrelay writes are transactional.
            isolation_level="read_committed",
            # Range keeps partition p of requests and webhooks on the same member.
            partition_assignment_strategy=(RangePartitionAssignor,),
            max_partition_fetch_bytes=1024 * 1024,
            metadata_max_age_ms=self.settings.kafka_metadata_max_age_ms,
        )
        self._consumer = consumer
        self.ownership.attach(consumer)
        consumer.subscribe(
            [self.topics.requests, self.topics.webhooks, *self.settings.extra_input_topics],
            listener=_Listener(self.ownership),
        )
        await consumer.start()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._poll_loop(consumer))
                group.create_task(self._commit_loop(consumer))
                group.create_task(self._sweep_loop())
                group.create_task(self._budget_loop())
        finally:
            await self._drain(consumer)
        if self._fatal is not None:
            raise self._fatal

    def stop(self) -> None:
        self._stopping.set()

    def _crashed(self, exc: BaseException) -> None:
        log.error("a job crashed; stopping the relay", exc_info=exc)
        self._fatal = self._fatal or exc
        self.stop()

    async def _drain(self, consumer: AIOKafkaConsumer) -> None:
        await self.ownership.close(self.settings.shutdown_grace_seconds)
        with contextlib.suppress(KafkaError, CommitFailedError):
            await self._commit(consumer)
        await consumer.stop()
        self._consumer = None

    async def close(self) -> None:
        """Flush the producer, stop the HTTP server, close clients; safe to call twice."""
        # A port is free again only once its server has stopped (a restart may bind it next).
        for listener in self._listeners:
            await listener.stop()
        await self._producer.stop()
        await self._downloader.aclose()
        await self._download_http.aclose()
        await self.provider.aclose()
        await self._http.aclose()
        await self.store.aclose()
        self._state_dir.cleanup()
        self.tracer_provider.shutdown()
        self.metrics.shutdown()

    # --- HTTP -----------------------------------------------------------------------------

    async def _start_http(self) -> None:
        probes = [Route("/healthz", self._live), Route("/readyz", self._ready)]
        # The public listener serves fal's webhooks and the probes, nothing that tells about
        # keys; everything else is on the admin listener (loopback, or behind a token).
        public = app(self.receiver, probes)
        self.http_app = public
        admin_routes: list[BaseRoute] = [
            *probes,
            self.metrics.metrics_route(),
            *status_routes(self.snapshot),
            *admin_page_routes(self.settings.kafka_bootstrap, self.topics),
            openapi_route(webhooks=self.receiver is not None),
        ]
        token = self.settings.admin_token.get_secret_value() or None
        settings = self.settings
        self.admin_http_app = Starlette(routes=admin_routes)
        public_listener = Listener(public, settings.http_host, settings.http_port)
        admin_listener = Listener(
            admin_app(self.admin_http_app, token), settings.admin_host, settings.admin_port
        )
        self.http_port = await public_listener.start()
        self._listeners.append(public_listener)
        self.admin_port = await admin_listener.start()
        self._listeners.append(admin_listener)

    async def _live(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def _ready(self, request: Request) -> Response:
        dependencies = await self._readiness.dependencies()
        restored = self.ownership.all_ready() and not self._stopping.is_set()
        ready = restored and all(dependencies.values())
        body: dict[str, Any] = {
            "ready": ready,
            "ledger_restored": restored,
            "dependencies": dependencies,
            "partitions": list(self.ownership.owned()),
            "restoring": list(self.ownership.restoring()),
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    async def _hand_over(self, delivery: WebhookDelivery) -> None:
        value = to_json_bytes(delivery)
        if len(value) > self.settings.kafka_max_request_bytes - RECORD_HEADROOM:
            # Too large for the topic: hand over the news alone; the owner fetches the result.
            reason = f"payload of {len(value)} bytes left out: larger than a record may be"
            delivery = delivery.model_copy(update={"payload": None, "payload_error": reason})
            value = to_json_bytes(delivery)
        await self._producer.send_and_wait(
            self.topics.webhooks, value, key=delivery.idempotency_key.encode()
        )

    # --- partitions -----------------------------------------------------------------------

    def _ownership_changed(self) -> None:
        self._paused = False  # a new assignment starts unpaused; back-pressure looks again
        if self.ownership.all_ready():
            self.ready.set()
        else:
            self.ready.clear()
        restore = self.ownership.last_restore
        if restore is not None and restore is not self._reported_restore:
            self._reported_restore = restore
            self.metrics.ledger_restored(restore.seconds)

    # --- loops ----------------------------------------------------------------------------

    async def _poll_loop(self, consumer: AIOKafkaConsumer) -> None:
        while not self._stopping.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=1000)
            for tp, messages in batch.items():
                if self._is_keyed(tp) and not self.ownership.ready(tp.partition):
                    # Fetched before the partition was paused for its restore: it is read
                    # again from the offsets committed with the state it restores.
                    continue
                tracker = self.ownership.tracker(tp)
                for message in messages:
                    tracker.taken(message.offset, len(message.value or b""))
                    self._handle(tp, message, tracker)
            self._backpressure(consumer)

    def _is_keyed(self, tp: TopicPartition) -> bool:
        return tp.topic in (self.topics.requests, self.topics.webhooks)

    def _handle(self, tp: TopicPartition, message: Any, tracker: PartitionOffsets) -> None:
        source = SourceRecord(
            tp.topic,
            tp.partition,
            message.offset,
            message.key,
            message.value,
            tuple(message.headers or ()),
        )

        def finished() -> None:
            tracker.finished(source.offset)

        if tp.topic == self.topics.webhooks:
            self._handle_webhook(source, finished)
            return
        try:
            verdict = classify(
                source,
                requests_topic=self.topics.requests,
                max_bytes=self.settings.max_record_bytes,
                default_prefix=self.settings.prefix,
                partition_for=self._partition_for(source),
            )
        except Exception as exc:  # a poison record must never stop the partition
            log.exception("record at %s/%d/%d refused", tp.topic, tp.partition, message.offset)
            verdict = Refuse(DeadLetterReason.SCHEMA_VIOLATION.value, f"unreadable record: {exc}")
        match verdict:
            case Command(key=key, event=event):
                self.jobs.deliver(key, tp.partition, event, on_done=finished, source=source)
            case Rekey(key=key):
                self._forward(source, self.publisher.rekey_record(source, key), finished)
            case Refuse(reason=reason, error=error):
                record = self.publisher.dead_letter_record(source, reason, error)
                self._forward(source, record, finished)

    def _forward(
        self, source: SourceRecord, record: Outgoing, finished: Callable[[], None]
    ) -> None:
        if self._is_keyed(TopicPartition(source.topic, source.partition)):
            # The record and the input offset it finishes commit in one transaction, so not
            # even a crash can write it twice. Fenced: the partition's next owner reads it.
            with contextlib.suppress(Fenced):
                self.writers.get(source.partition).submit((record,), finishes=finished)
            return
        self._background(self.publisher.forward_plain(record), finished)

    def _partition_for(self, source: SourceRecord) -> int | None:
        if source.topic != self.topics.requests or not self._partitions:
            return None
        if source.key is None:
            return None
        return partition_for(source.key, self._partitions)

    def _handle_webhook(self, source: SourceRecord, finished: Callable[[], None]) -> None:
        try:
            delivery = WebhookDelivery.model_validate_json(source.value or b"")
        except ValidationError:
            log.warning("unreadable record on %s at %d", source.topic, source.offset)
            finished()
            return
        key = delivery.idempotency_key
        record = self.jobs.state(key, source.partition)  # webhooks are co-partitioned
        job = None
        if record is not None and record.endpoint:
            job = to_job(self.provider.submission_for(record.endpoint, delivery.request_id))
        if record is not None and record.job is not None:
            self._learn_account(record.job, delivery)
        news = lc.webhook_news(
            delivery, job, self._account, fetch_result=self.settings.fetch_result_on_webhook
        )
        if record is not None and record.phase in lc.OPEN_PHASES:
            self.metrics.resolved(Resolution.WEBHOOK)
        self.jobs.deliver(key, source.partition, news, on_done=finished)

    def _learn_account(self, job: ProviderJob, delivery: WebhookDelivery) -> None:
        """fal signed a webhook for a request our own submit created: its signer is our
        account, so that account's later webhooks need no confirmation round trip."""
        if self._account is None and delivery.user_id and job.request_id == delivery.request_id:
            self._account = delivery.user_id
            log.info("fal account learnt from a webhook of one of our own requests")

    def _background(self, work: Coroutine[Any, Any, None], finished: Callable[[], None]) -> None:
        async def run() -> None:
            await work
            finished()

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._crashed(exc)

    def _backpressure(self, consumer: AIOKafkaConsumer) -> None:
        # Input partitions pause while too many records (or bytes) are read but not yet
        # durable, and resume at half; the poll loop keeps running either way (heartbeats,
        # webhooks). Webhook records are small and settle jobs, so they are never paused.
        inputs = [
            tp
            for tp in consumer.assignment()
            if tp.topic != self.topics.webhooks
            and (not self._is_keyed(tp) or self.ownership.ready(tp.partition))
        ]
        trackers = [self._offsets[tp] for tp in inputs if tp in self._offsets]
        records = sum(t.in_flight for t in trackers)
        size = sum(t.buffered_bytes for t in trackers)
        full = records >= self.settings.max_buffered_records
        full = full or size >= self.settings.max_buffered_bytes
        drained = records < self.settings.max_buffered_records // 2
        drained = drained and size < self.settings.max_buffered_bytes // 2
        if not self._paused and full:
            consumer.pause(*inputs)
            self._paused = True
        elif self._paused and drained:
            consumer.resume(*inputs)
            self._paused = False

    async def _commit_loop(self, consumer: AIOKafkaConsumer) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._stopping.wait(), timeout=self.settings.commit_interval_seconds
                )
            try:
                await self._commit(consumer)
            except (CommitFailedError, KafkaError) as exc:
                log.info("commit skipped: %s", exc)

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        # Co-partitioned inputs commit their offsets in their partition's transactions; the
        # others (teams' own topics, whose records are only re-keyed) commit here.
        for writer in self.writers.all():
            writer.nudge()
        assigned = consumer.assignment()
        points = {
            tp: point
            for tp, tracker in self._offsets.items()
            if tp in assigned
            and not self._is_keyed(tp)
            and (point := tracker.commit_point()) is not None
        }
        if points:
            await consumer.commit(points)

    async def _budget_loop(self) -> None:
        """Follow the budgets and the other replicas' spend; every few seconds, let keys that
        wait for budget ask again (spend falls when costs settle and when a period begins)."""
        followers = [
            asyncio.get_running_loop().create_task(self.budgets.follow()),
            asyncio.get_running_loop().create_task(self.spend.follow()),
        ]
        try:
            while not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=BUDGET_TICK_SECONDS)
                self.jobs.budget_changed()
        finally:
            for follower in followers:
                follower.cancel()
            await asyncio.gather(*followers, return_exceptions=True)

    async def _sweep_loop(self) -> None:
        window = timedelta(days=self.settings.dedup_window_days)
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=3600)
            for partition in self.ownership.owned():
                with contextlib.suppress(Fenced):
                    await self.ledger.forget_expired(partition, window, datetime.now(UTC))
