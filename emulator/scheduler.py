"""The queue runtime: dispatch to a bounded number of runners per endpoint, latency and cold
starts, injected failures, fal's internal retries, cancellation and start timeouts.

A request's life (fal-api.md §2, §4, §7.2):

    IN_QUEUE ──runner acquired (queue latency, cold start)──► IN_PROGRESS ──run latency──►
    COMPLETED (output, or error)      ▲                               │ 503/504-class failure
                                      └────── re-queued, new gateway_request_id ◄──┘

Dispatching is event driven: a submit, a finished job or a config change "pumps" an endpoint,
which starts jobs while that endpoint has free runners. Each running job is one supervised
task, so the number of tasks follows the configured concurrency, not the backlog.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from genrelay.emulator.accounting import Accounting
from genrelay.emulator.faults import Faults
from genrelay.emulator.files import FileStore
from genrelay.emulator.jobs import EndpointQueue, Job, JobStore, Phase
from genrelay.emulator.models import Invalid, Plan, StoredFile
from genrelay.emulator.outcomes import (
    Outcome,
    failure,
    infra_error,
    success,
    validation_error,
)
from genrelay.emulator.records import Records
from genrelay.emulator.settings import EmulatorSettings
from genrelay.emulator.supervisor import Supervisor
from genrelay.emulator.webhooks import WebhookSender, webhook_body


class ChangeFeed:
    """Wakes status streams when their job changes; costs nothing for unwatched jobs."""

    def __init__(self) -> None:
        self._watchers: dict[str, set[asyncio.Event]] = {}

    def watch(self, request_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._watchers.setdefault(request_id, set()).add(event)
        return event

    def unwatch(self, request_id: str, event: asyncio.Event) -> None:
        watchers = self._watchers.get(request_id)
        if watchers is not None:
            watchers.discard(event)
            if not watchers:
                del self._watchers[request_id]

    def wake_all(self) -> None:
        """Wake every stream, e.g. on shutdown or reset, so it re-checks its request."""
        for watchers in self._watchers.values():
            for event in watchers:
                event.set()

    def publish(self, job: Job) -> None:
        job.version += 1
        for event in self._watchers.get(job.request_id, ()):
            event.set()


@dataclass(frozen=True, slots=True)
class SchedulerDeps:
    """What the scheduler works with; owned by the emulator."""

    store: JobStore
    files: FileStore
    faults: Faults
    accounting: Accounting
    webhooks: WebhookSender
    tasks: Supervisor
    feed: ChangeFeed
    settings: Callable[[], EmulatorSettings]
    base_url: Callable[[], str]
    records: Records


class Scheduler:
    """Runs jobs through their phases."""

    def __init__(self, deps: SchedulerDeps) -> None:
        self._deps = deps
        self._queues: dict[str, EndpointQueue] = {}
        # Sleeps of jobs between dispatch and completion, so cancel and timeouts can cut them.
        self._wakeups: dict[str, asyncio.Future[None]] = {}
        # Supervised sleepers that enforce `X-Fal-Request-Timeout` while a job waits.
        self._start_timers: dict[str, asyncio.Task[None]] = {}
        self._paused = False

    # -- submission and dispatch -------------------------------------------------------------

    def waiting(self, endpoint_id: str) -> int:
        queue = self._queues.get(endpoint_id)
        return 0 if queue is None else queue.waiting

    def enqueue(self, job: Job) -> None:
        """Put a new or retried job at the back of its endpoint's queue."""
        job.phase = Phase.QUEUED
        if not job.gateway_request_id:
            job.gateway_request_id = job.request_id
        queue = self._queue(str(job.endpoint))
        queue.push(job)
        self._deps.feed.publish(job)
        if job.start_deadline is not None:
            self._arm_start_timer(job)
        self._pump(queue)

    def position(self, job: Job) -> int:
        if job.phase is not Phase.QUEUED:
            return 0
        return self._queue(str(job.endpoint)).position(job)

    def repump(self) -> None:
        """Re-check every endpoint, e.g. after the concurrency changed."""
        for queue in list(self._queues.values()):
            self._pump(queue)

    def _queue(self, endpoint_id: str) -> EndpointQueue:
        queue = self._queues.get(endpoint_id)
        if queue is None:
            queue = self._queues[endpoint_id] = EndpointQueue()
        return queue

    def _pump(self, queue: EndpointQueue) -> None:
        if self._paused:
            return
        limit = self._deps.settings().concurrency
        while queue.running < limit:
            job = queue.pop()
            if job is None:
                return
            queue.running += 1
            self._deps.tasks.spawn(self._run(job, queue), name=f"job:{job.request_id}")

    async def _run(self, job: Job, queue: EndpointQueue) -> None:
        try:
            await self._attempt(job, queue)
        finally:
            queue.running -= 1
            queue.warm_until = time.monotonic() + self._deps.settings().cold_after_idle_s
            self._pump(queue)

    # -- one attempt ---------------------------------------------------------------------------

    async def _attempt(self, job: Job, queue: EndpointQueue) -> None:
        if not await self._acquire_runner(job, queue):
            return
        queue.active += 1
        try:
            await self._execute(job)
        finally:
            queue.active -= 1

    async def _acquire_runner(self, job: Job, queue: EndpointQueue) -> bool:
        """Still IN_QUEUE (position 0) while a runner is acquired and, when cold, booted.
        False if the job completed meanwhile (cancelled or past its start timeout)."""
        settings = self._deps.settings()
        dice = self._deps.faults.dice
        wait_s = dice.latency_ms(settings.queue_latency, "queue", job.seq, job.attempt) / 1000
        await self._sleep(job, wait_s + self._boot_wait_s(job, queue, settings))
        if job.cancel_requested:
            self._complete(job, infra_error("client_cancelled"))
            return False
        if job.start_deadline is not None and time.monotonic() >= job.start_deadline:
            self._complete(job, infra_error("request_timeout", user_timeout=True))
            return False
        self._start(job)
        return True

    async def _execute(self, job: Job) -> None:
        deps = self._deps
        settings = deps.settings()
        run_s = (
            deps.faults.dice.latency_ms(settings.run_latency, "run", job.seq, job.attempt) / 1000
        )
        failure_type = deps.faults.attempt_failure(job.seq, job.attempt)
        await self._sleep(job, run_s)
        if job.cancel_requested and settings.runner_honours_cancel:
            self._complete(job, infra_error("client_cancelled"))
            return
        outcome = await self._outcome(job, failure_type, run_s)
        if self._should_retry(job, outcome, settings):
            self._retry(job, outcome)
        else:
            self._complete(job, outcome)

    def _boot_wait_s(self, job: Job, queue: EndpointQueue, settings: EmulatorSettings) -> float:
        """Wait for a booting runner, or boot one if the endpoint has been idle too long."""
        now = time.monotonic()
        if queue.ready_at > now:
            return queue.ready_at - now
        # A runner of this endpoint is busy, or one finished recently: warm.
        if queue.active > 0 or now < queue.warm_until or settings.cold_start_ms <= 0:
            return 0.0
        job.cold_start = True
        job.log(f"Cold start: booting a runner ({settings.cold_start_ms:.0f} ms)")
        self._deps.accounting.count("cold_starts")
        queue.ready_at = now + settings.cold_start_ms / 1000
        return settings.cold_start_ms / 1000

    def _start(self, job: Job) -> None:
        self._disarm_start_timer(job)
        job.phase = Phase.RUNNING
        job.started_at = time.time()
        self._deps.records.started(job.request_id)
        job.log(f"Running (attempt {job.attempt}, gateway request {job.gateway_request_id})")
        self._deps.feed.publish(job)

    async def _outcome(self, job: Job, failure_type: str | None, run_s: float) -> Outcome:
        if failure_type is not None:
            job.log(f"Runner failed: {failure_type}", "ERROR")
            return failure(failure_type)
        if isinstance(job.plan, Invalid):
            return validation_error(job.plan.detail)
        return await self._generate(job, job.plan, run_s)

    async def _generate(self, job: Job, plan: Plan, run_s: float) -> Outcome:
        deps = self._deps
        lifetime = job.file_lifetime_s
        base = deps.base_url()
        stored: list[StoredFile] = []
        for index, spec in enumerate(plan.files):
            name = f"{'video' if spec.extension == 'mp4' else 'image'}_{index}.{spec.extension}"
            if plan.inline:
                data = await deps.files.cache.get(spec)
                url = f"data:{spec.content_type};base64,{base64.b64encode(data).decode()}"
                stored.append(StoredFile(url, name, len(data), spec.content_type))
                continue
            entry = await deps.files.add(spec, name, lifetime)
            url = f"{base}/files/{entry.token}/{entry.name}"
            stored.append(StoredFile(url, entry.name, entry.size, entry.content_type))
        job.log(f"Generated {len(stored)} file(s)")
        return success(plan.shape.payload(stored, run_s), run_s)

    # -- retries, completion ----------------------------------------------------------------

    def _should_retry(self, job: Job, outcome: Outcome, settings: EmulatorSettings) -> bool:
        return (
            outcome.retried_by_queue
            and not job.no_retry
            and not job.cancel_requested
            and job.attempt <= settings.internal_retries
        )

    def _retry(self, job: Job, outcome: Outcome) -> None:
        """fal's queue retry: same request_id, new gateway_request_id, back to IN_QUEUE."""
        job.attempt += 1
        job.gateway_request_id = str(uuid.uuid4())
        job.log(f"Attempt failed with {outcome.error_type}; retrying", "WARN")
        self._deps.accounting.count("internal_retries")
        if job.start_deadline is not None and time.monotonic() >= job.start_deadline:
            self._complete(job, infra_error("request_timeout", user_timeout=True))
            return
        self.enqueue(job)

    def _complete(self, job: Job, outcome: Outcome) -> None:
        deps, settings = self._deps, self._deps.settings()
        self._disarm_start_timer(job)
        job.phase = Phase.COMPLETED
        job.outcome = outcome
        job.completed_at = time.time()
        job.log("Completed" if outcome.ok else f"Failed: {outcome.error_type}")
        self._count_completion(outcome)
        self._bill(job, outcome)
        large = len(outcome.body) >= settings.large_result_bytes
        retention = settings.large_result_retention_s if large else settings.result_retention_s
        deps.store.retain_until(job, time.monotonic() + retention)
        deps.feed.publish(job)
        if job.webhook_url is not None:
            plan = deps.faults.webhook_plan(job.seq)
            body = webhook_body(
                job.request_id, job.gateway_request_id, outcome, payload_error=plan.payload_error
            )
            deps.webhooks.send(job.webhook_url, job.request_id, body, plan, job.owner)

    def _bill(self, job: Job, outcome: Outcome) -> None:
        # One unit per output file; fal bills a request that succeeded, never a server error.
        units = float(len(job.plan.files)) if isinstance(job.plan, Plan) else 1.0
        billed = self._deps.records.ended(
            job.request_id, outcome.status_code, outcome.payload, units
        )
        if billed is not None:
            job.billed_units = billed
            self._deps.accounting.count("billed")
            self._deps.accounting.count("billed_units", int(billed))

    def _count_completion(self, outcome: Outcome) -> None:
        counts = self._deps.accounting
        counts.count("completed")
        if outcome.ok:
            counts.count("succeeded")
        elif outcome.error_type == "client_cancelled":
            counts.count("cancelled")
        else:
            counts.count("failed")

    # -- cancel, start timeouts, sleeping ----------------------------------------------------

    def cancel(self, job: Job) -> bool:
        """Ask for cancellation; False if the job had already completed."""
        if job.phase is Phase.COMPLETED:
            return False
        self._deps.accounting.count("cancel_requests")
        job.cancel_requested = True
        job.log("Cancellation requested")
        if job.ticket >= 0:
            # Still waiting in its lane: fal removes it and it never runs.
            self._queue(str(job.endpoint)).remove(job)
            self._complete(job, infra_error("client_cancelled"))
        elif job.phase is Phase.QUEUED or self._deps.settings().runner_honours_cancel:
            self._wake(job)
        return True

    def _arm_start_timer(self, job: Job) -> None:
        self._disarm_start_timer(job)
        timer = self._deps.tasks.spawn(self._start_deadline(job), name=f"deadline:{job.request_id}")
        self._start_timers[job.request_id] = timer

    def _disarm_start_timer(self, job: Job) -> None:
        timer = self._start_timers.pop(job.request_id, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()

    async def _start_deadline(self, job: Job) -> None:
        assert job.start_deadline is not None
        await asyncio.sleep(max(job.start_deadline - time.monotonic(), 0.0))
        self._start_timers.pop(job.request_id, None)
        if job.phase is not Phase.QUEUED:
            return
        if job.ticket >= 0:
            self._queue(str(job.endpoint)).remove(job)
            self._complete(job, infra_error("request_timeout", user_timeout=True))
        else:
            # Acquiring a runner: its attempt sees the deadline as soon as it wakes.
            self._wake(job)

    async def _sleep(self, job: Job, seconds: float) -> None:
        """Sleep, unless cancel or a start timeout wakes the job early."""
        if seconds <= 0:
            return
        loop = asyncio.get_running_loop()
        wakeup: asyncio.Future[None] = loop.create_future()
        handle = loop.call_later(seconds, _resolve, wakeup)
        self._wakeups[job.request_id] = wakeup
        try:
            await wakeup
        finally:
            handle.cancel()
            self._wakeups.pop(job.request_id, None)

    def _wake(self, job: Job) -> None:
        wakeup = self._wakeups.get(job.request_id)
        if wakeup is not None:
            _resolve(wakeup)

    # -- lifecycle -------------------------------------------------------------------------------

    async def clear(self) -> None:
        """Drop every queued and running job (reset)."""
        self._paused = True
        try:
            self._start_timers.clear()
            for queue in self._queues.values():
                queue.normal.clear()
                queue.low.clear()
            await self._deps.tasks.cancel_all()
            self._queues.clear()
            self._wakeups.clear()
        finally:
            self._paused = False

    def stop(self) -> None:
        """Stop dispatching; the owner cancels the running tasks."""
        self._paused = True
        self._start_timers.clear()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
