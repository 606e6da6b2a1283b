"""The emulator's state and operations, independent of HTTP.

`Emulator` wires the parts (job store, scheduler, files, webhooks, keys, faults, accounting)
and offers what the queue API and the control API need. It is an async context manager: it
owns the webhook HTTP client and three supervised task sets (jobs, webhook deliveries,
housekeeping), and it stops them in that order.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import httpx

from genrelay.emulator.accounting import Accounting, Submission
from genrelay.emulator.endpoints import EndpointId
from genrelay.emulator.faults import ArmRequest, Faults, SubmitFate
from genrelay.emulator.files import FileEntry, FileStore
from genrelay.emulator.jobs import Job, JobStore, Priority
from genrelay.emulator.models import FakeModel, ModelRegistry
from genrelay.emulator.records import Records
from genrelay.emulator.scheduler import ChangeFeed, Scheduler, SchedulerDeps
from genrelay.emulator.settings import EmulatorSettings
from genrelay.emulator.signing import Keyring
from genrelay.emulator.supervisor import Supervisor
from genrelay.emulator.views import describe, status_body, submit_body
from genrelay.emulator.webhooks import WebhookSender

JSON = Any
_SWEEP_INTERVAL_S = 1.0


class State(Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class SubmitRejectedError(Exception):
    """A submit refused with 429 before anything was recorded."""


@dataclass(frozen=True, slots=True)
class SubmitOptions:
    """Everything about a submit besides the endpoint and its input."""

    webhook_url: str | None = None
    priority: Priority = Priority.NORMAL
    max_queue_length: int | None = None
    no_retry: bool = False
    start_timeout_s: float | None = None
    # From `X-Fal-Object-Lifecycle-Preference`; `use_default_lifetime` means "not given".
    file_lifetime_s: float | None = None
    use_default_lifetime: bool = True
    owner: str | None = None  # the submitting account's user id; None: the main account
    tags: dict[str, str] = field(default_factory=dict)  # what X-Fal-Tags kept


class Emulator:
    """A fal-compatible queue in memory."""

    def __init__(
        self,
        settings: EmulatorSettings | None = None,
        *,
        webhook_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._initial = settings or EmulatorSettings()
        self._settings = self._initial
        self._base_url = self._initial.public_base_url or ""
        self._state = State.NEW
        seed = self._initial.signing_seed_hex
        self.keyring = Keyring(bytes.fromhex(seed) if seed else None)
        self.accounting = Accounting(self._initial.submission_log_limit)
        self.faults = Faults(self._initial)
        self.registry = self._registry(self._initial)
        self.store = JobStore()
        self.files = FileStore(self._initial.file_cache_bytes)
        self.feed = ChangeFeed()
        self.records = Records(self._current)
        self._job_tasks = Supervisor("emulator jobs")
        self._webhook_tasks = Supervisor("emulator webhooks")
        self._housekeeping = Supervisor("emulator housekeeping")
        self.webhooks = WebhookSender(
            self.keyring, self.accounting, self._webhook_tasks, self._current, webhook_transport
        )
        self.scheduler = Scheduler(
            SchedulerDeps(
                self.store,
                self.files,
                self.faults,
                self.accounting,
                self.webhooks,
                self._job_tasks,
                self.feed,
                self._current,
                lambda: self._base_url,
                self.records,
            )
        )
        self._seq = 0
        self._submit_attempts = 0
        self.closing = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Emulator:
        if self._state is not State.NEW:
            raise RuntimeError(f"emulator is {self._state.value}; create a new one")
        await self.webhooks.open()
        self._housekeeping.spawn(self._sweep_forever(), name="emulator sweeper")
        self._state = State.OPEN
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop jobs, then webhook deliveries, then housekeeping, then the HTTP client; every
        step runs even if an earlier one raised, and the first error is re-raised. Idempotent."""
        if self._state is State.CLOSED:
            return
        self._state = State.CLOSED
        self.drain()
        self.scheduler.stop()
        errors: list[Exception] = []
        steps = (self._job_tasks, self._webhook_tasks, self._housekeeping, self.webhooks)
        for step in steps:
            try:
                await step.close()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def drain(self) -> None:
        """Tell status streams to finish, ahead of a shutdown."""
        self.closing.set()
        self.feed.wake_all()

    @property
    def crash(self) -> BaseException | None:
        """The first crash of a background task, if any."""
        for tasks in (self._job_tasks, self._webhook_tasks, self._housekeeping):
            if tasks.crash is not None:
                return tasks.crash
        return None

    def bind(self, base_url: str) -> None:
        """Tell the emulator where it is reachable; returned URLs start with this."""
        self._base_url = self._settings.public_base_url or base_url.rstrip("/")

    @property
    def base_url(self) -> str:
        return self._base_url

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_INTERVAL_S)
            now = time.monotonic()
            self.store.sweep(now)
            self.files.sweep(now)

    # -- settings, faults, keys ------------------------------------------------------------------

    @property
    def settings(self) -> EmulatorSettings:
        return self._settings

    def _current(self) -> EmulatorSettings:
        return self._settings

    def configure(self, **changes: Any) -> EmulatorSettings:
        """Change knobs at runtime; validated as a whole, applied at once."""
        self._apply(self._settings.updated(changes))
        return self._settings

    def _apply(self, settings: EmulatorSettings) -> None:
        old, self._settings = self._settings, settings
        self.faults.reconfigure(settings)
        self.webhooks.reconfigure(settings)
        self.files.cache.max_bytes = settings.file_cache_bytes
        self.accounting.resize(settings.submission_log_limit)
        if (old.image_endpoints, old.video_endpoints) != (
            settings.image_endpoints,
            settings.video_endpoints,
        ):
            self.registry = self._registry(settings)
        self.scheduler.repump()

    @staticmethod
    def _registry(settings: EmulatorSettings) -> ModelRegistry:
        return ModelRegistry(
            settings.image_endpoints, settings.video_endpoints, settings.video_url_endpoints
        )

    def arm(self, request: ArmRequest | None = None, **faults: Any) -> dict[str, JSON]:
        """Arm explicit faults (see `ArmRequest`); returns what is armed now."""
        self.faults.arm(request or ArmRequest(**faults))
        return self.faults.armed.as_json()

    def rotate_keys(self, overlap_s: float | None = None) -> dict[str, JSON]:
        """Sign with a new key; old public keys stay in the JWKS for `overlap_s` (0 drops
        them at once; default `key_rotation_overlap_s`)."""
        if overlap_s is None:
            overlap_s = self._settings.key_rotation_overlap_s
        self.keyring.rotate(overlap_s)
        return self.keyring.jwks()

    async def reset(self) -> None:
        """Forget every request, file, count and armed fault; restore the initial settings.
        Signing keys are kept, so receivers' cached JWKS stay valid."""
        await self.scheduler.clear()
        await self._webhook_tasks.cancel_all()
        self.store.clear()
        self.files.clear()
        self.records.clear()
        self.faults.disarm()
        self.accounting.clear()
        self._seq = 0
        self._submit_attempts = 0
        self._apply(self._initial)
        self.feed.wake_all()

    # -- the queue API ---------------------------------------------------------------------------

    def account(self, authorization: str | None) -> str | None:
        """The user id `Authorization: Key <key>` names, or None when it names no account."""
        if authorization is None:
            return None
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "key":
            return None
        key = key.strip()
        if key in self._settings.api_keys:
            return self._settings.user_id
        return self._settings.accounts.get(key)

    def model(self, endpoint: EndpointId) -> FakeModel | None:
        return self.registry.resolve(str(endpoint))

    def submit(
        self, endpoint: EndpointId, model: FakeModel, arguments: JSON, options: SubmitOptions
    ) -> Job:
        """Accept a request (or raise SubmitRejectedError for a 429); it is counted as paid."""
        self._submit_attempts += 1
        if self.faults.reject_submit(self._submit_attempts):
            self.accounting.count("rejected_submits")
            raise SubmitRejectedError("Too many requests, please retry later")
        limit = options.max_queue_length
        if limit is not None and self.scheduler.waiting(str(endpoint)) > limit:
            self.accounting.count("rejected_submits")
            raise SubmitRejectedError(f"Queue is full: more than {limit} requests are waiting")
        self._seq += 1
        job = self._new_job(endpoint, model, arguments, options)
        self.store.add(job)
        self.accounting.record_submission(
            Submission(
                job.seq,
                job.request_id,
                str(endpoint),
                arguments,
                options.webhook_url,
                options.priority.value,
                job.received_at,
            )
        )
        self.records.arrived(job.request_id, str(endpoint), job.owner, arguments, options.tags)
        self.scheduler.enqueue(job)
        return job

    def _new_job(
        self, endpoint: EndpointId, model: FakeModel, arguments: JSON, options: SubmitOptions
    ) -> Job:
        seq = self._seq
        default_seed = self.faults.dice.integer("seed", seq)
        lifetime = (
            self._settings.file_url_lifetime_s
            if options.use_default_lifetime
            else options.file_lifetime_s
        )
        deadline = None
        if options.start_timeout_s is not None:
            deadline = time.monotonic() + options.start_timeout_s
        job = Job(
            request_id=str(uuid.uuid4()),
            seq=seq,
            endpoint=endpoint,
            plan=model.plan(arguments, default_seed),
            webhook_url=options.webhook_url,
            priority=options.priority,
            received_at=time.time(),
            no_retry=options.no_retry,
            start_deadline=deadline,
            file_lifetime_s=lifetime,
            owner=options.owner or self._settings.user_id,
        )
        job.log("Request queued")
        return job

    def submit_fate(self, job: Job) -> SubmitFate:
        return self.faults.submit_fate(job.seq)

    def submit_response(self, job: Job) -> dict[str, JSON]:
        return submit_body(self._base_url, job, self.scheduler.position(job))

    def find(self, app_path: str, request_id: str, owner: str) -> Job | None:
        """A live request of `owner`'s, if it exists under this `[namespace/]owner/app`."""
        job = self.store.get(request_id)
        if job is None or job.endpoint.app_path != app_path or job.owner != owner:
            return None
        return job

    def status(self, job: Job, with_logs: bool) -> dict[str, JSON]:
        return status_body(self._base_url, job, self.scheduler.position(job), with_logs)

    def cancel(self, job: Job) -> bool:
        return self.scheduler.cancel(job)

    def find_file(self, token: str, name: str) -> FileEntry | None:
        return self.files.find(token, name)

    async def read_file(self, entry: FileEntry) -> bytes:
        self.accounting.count("file_downloads")
        return await self.files.read(entry)

    # -- the control API -------------------------------------------------------------------------

    def describe(self, request_id: str) -> dict[str, JSON] | None:
        job = self.store.get(request_id)
        if job is None:
            return None
        return describe(job, self.scheduler.position(job))

    def stats(self) -> dict[str, JSON]:
        return {
            **self.accounting.snapshot(),
            "jobs_in_memory": len(self.store),
            "files_in_memory": len(self.files),
        }
