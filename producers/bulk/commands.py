"""The bulk commands: submit a file, show a run's status, collect its outcomes, cancel it.

Each takes typed options and a `Connector` that makes its Kafka clients, so tests run the
same commands against in-memory fakes (`genrelay.producers.testing`) and a real broker.
"""

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol, TextIO

from genrelay.producers.bulk._files import write_jsonl
from genrelay.producers.bulk.download import DownloadReport, S3Config, download_artifacts
from genrelay.producers.bulk.errors import BadInputError, RunCancelledError
from genrelay.producers.bulk.keys import check_bulk_id, default_bulk_id
from genrelay.producers.bulk.manifest import rejected_rows, write_reports
from genrelay.producers.bulk.plan import Defaults, Plan, PlannedRequest, plan_run
from genrelay.producers.bulk.progress import BarProgress, SilentProgress
from genrelay.producers.bulk.rate import RateLimiter
from genrelay.producers.bulk.reader import SourceFormat, read_rows
from genrelay.producers.bulk.runner import collect_outcomes, run_together, send_all
from genrelay.producers.bulk.state import (
    DEFAULT_STATE_ROOT,
    Counts,
    PlanEntry,
    RunInfo,
    RunSnapshot,
    RunState,
    utc_now,
)
from genrelay.producers.client import GenrelayProducer
from genrelay.producers.completions import CompletionWatcher
from genrelay.schemas.completions import Artifact
from genrelay.schemas.topics import DEFAULT_TOPICS, Topics

DEFAULT_RATE = 100.0
DEFAULT_WAIT_TIMEOUT_S = 24 * 3600.0
DEFAULT_COLLECT_TIMEOUT_S = 60.0

# Cancel records stop spending, so they go out as fast as the broker takes them.
_CANCEL_RATE = 10_000.0
# How many refused lines are printed; the error file lists them all.
_ERRORS_SHOWN = 10


class OnError(StrEnum):
    """What a submit does when lines of the file cannot be sent."""

    SKIP = "skip"  # report them and send the rest
    ABORT = "abort"  # report them and send nothing


@dataclass(frozen=True, slots=True)
class KafkaTarget:
    """The cluster and the two topics a run uses."""

    bootstrap: str
    requests_topic: str = DEFAULT_TOPICS.requests
    completions_topic: str = DEFAULT_TOPICS.completions


class Connector(Protocol):
    """Makes the Kafka clients (not yet started) of a command."""

    def producer(self, target: KafkaTarget) -> GenrelayProducer: ...

    def watcher(self, target: KafkaTarget) -> CompletionWatcher: ...


class KafkaConnector:
    """Connects to the cluster a `KafkaTarget` names."""

    def producer(self, target: KafkaTarget) -> GenrelayProducer:
        """A producer for the target's requests topic."""
        topics = Topics(requests=target.requests_topic, completions=target.completions_topic)
        return GenrelayProducer.connect(target.bootstrap, topics=topics)

    def watcher(self, target: KafkaTarget) -> CompletionWatcher:
        """A watcher of the target's completion topic, from its beginning."""
        return CompletionWatcher.connect(target.bootstrap, topic=target.completions_topic)


@dataclass(frozen=True, slots=True)
class SubmitOptions:
    """What `bulk submit` is told."""

    source: Path
    kafka: KafkaTarget
    defaults: Defaults = field(default_factory=Defaults)
    rate: float = DEFAULT_RATE
    on_error: OnError = OnError.SKIP
    wait: bool = True
    timeout: float = DEFAULT_WAIT_TIMEOUT_S
    manifest: Path | None = None
    errors: Path | None = None
    download: Path | None = None
    bulk_id: str | None = None
    state_root: Path = DEFAULT_STATE_ROOT
    s3: S3Config | None = None


@dataclass(frozen=True, slots=True)
class RunOptions:
    """What `bulk status`, `collect` and `cancel` are told; unset values come from the run."""

    bulk_id: str
    state_root: Path = DEFAULT_STATE_ROOT
    kafka: KafkaTarget | None = None
    timeout: float = DEFAULT_COLLECT_TIMEOUT_S
    download: Path | None = None
    s3: S3Config | None = None


@dataclass
class Output:
    """Where a command reports: lines to `out`, and a progress bar on stderr if wanted."""

    out: TextIO = field(default_factory=lambda: sys.stdout)
    show_progress: bool = True

    def say(self, text: str) -> None:
        """Print one line."""
        print(text, file=self.out, flush=True)

    def progress(self, counts: Counts, *, waiting: bool) -> BarProgress | SilentProgress:
        """The progress display for a run with these counts so far."""
        if self.show_progress:
            return BarProgress(counts, waiting=waiting)
        return SilentProgress()


async def submit(options: SubmitOptions, connector: Connector, output: Output) -> int:
    """Plan the file, send what was not acknowledged before, and unless told not to, wait for
    the outcomes; then write the manifest and the error file.

    Returns 0 when every line was valid and every key succeeded (or, without waiting, was
    sent), else 1.

    Raises:
        BadInputError: the file cannot be read, or has refused lines under `OnError.ABORT`.
        RunCancelledError: the run was cancelled before.
        RunInUseError: another process is working on the run.
        BrokerError: Kafka failed; running the command again resumes.
    """
    plan = _plan(options)
    manifest, errors = _report_paths(options.source, options.manifest, options.errors)
    if plan.errors:
        _show_rejected(output, plan, errors)
        if options.on_error is OnError.ABORT:
            write_jsonl(errors, rejected_rows(plan.errors))
            raise BadInputError(f"{len(plan.errors)} line(s) refused; nothing was sent")
    state = RunState(options.state_root, plan.bulk_id)
    with state.locked():
        previous = state.snapshot() if state.exists() else None
        if previous is not None and previous.cancelled_at is not None:
            raise RunCancelledError(f"bulk run {plan.bulk_id} was cancelled; nothing was sent")
        info = RunInfo(
            bulk_id=plan.bulk_id,
            source=str(options.source.resolve()),
            bootstrap=options.kafka.bootstrap,
            requests_topic=options.kafka.requests_topic,
            completions_topic=options.kafka.completions_topic,
            manifest=str(manifest.resolve()),
            errors=str(errors.resolve()),
            download=str(options.download.resolve()) if options.download else None,
            created_at=previous.info.created_at if previous else utc_now(),
            collected_at=previous.info.collected_at if previous else None,
        )
        state.save_plan(info, (PlanEntry(r.line, r.key) for r in plan.requests), plan.errors)
        snapshot = state.snapshot()
        output.say(_opening(snapshot))
        try:
            await _send_and_collect(options, plan, state, snapshot, connector, output)
        finally:
            # Also when interrupted: the manifest then shows how far the run got.
            write_reports(state.snapshot())
        if not options.wait:
            return _summarize(output, state.snapshot(), None, waited=False)
        snapshot, report = await _record_results(state, options.download, options.s3)
    return _summarize(output, snapshot, report, waited=True)


async def collect(options: RunOptions, connector: Connector, output: Output) -> int:
    """Wait up to the timeout for the outcomes of the run's sent keys; then rewrite its
    manifest and error file, downloading its files if a folder was given now or at submit.

    Returns 0 when every line was valid and every key succeeded, else 1.
    """
    state = RunState(options.state_root, check_bulk_id(options.bulk_id))
    with state.locked():
        snapshot = state.snapshot()
        waiting = [
            key for key in snapshot.keys if key in snapshot.acked and key not in snapshot.outcomes
        ]
        target = options.kafka or _target(snapshot.info)
        with (
            state.journal() as journal,
            output.progress(snapshot.counts(), waiting=True) as progress,
        ):
            async with connector.watcher(target) as watcher:
                await collect_outcomes(watcher, waiting, journal, progress, timeout=options.timeout)
        snapshot, report = await _record_results(state, options.download, options.s3)
    return _summarize(output, snapshot, report, waited=True)


async def cancel(options: RunOptions, connector: Connector, output: Output) -> int:
    """Send a cancel record for every key of the run that has no outcome, sent or not (a
    cancel ahead of its submit still wins), and mark the run so it is not submitted again.

    It takes no lock, so it can stop a run that another process is submitting.
    """
    state = RunState(options.state_root, check_bulk_id(options.bulk_id))
    snapshot = state.snapshot()
    keys = [key for key in snapshot.keys if key not in snapshot.outcomes]
    state.mark_cancelled(utc_now())
    async with connector.producer(options.kafka or _target(snapshot.info)) as producer:
        await send_all(keys, producer.cancel, limiter=RateLimiter(_CANCEL_RATE, burst=1000))
    bulk_id = snapshot.info.bulk_id
    output.say(
        f"bulk run {bulk_id}: sent {len(keys)} cancel record(s); "
        f"`genrelay bulk collect {bulk_id}` records their outcomes"
    )
    return 0


def status(options: RunOptions, output: Output) -> int:
    """Print the run's counts as of its last submit or collect; always returns 0."""
    snapshot = RunState(options.state_root, check_bulk_id(options.bulk_id)).snapshot()
    info = snapshot.info
    counts = snapshot.counts()
    output.say(f"bulk run {info.bulk_id}  ({info.source})")
    for name, value in (
        ("total", counts.total),
        ("submitted", counts.submitted),
        ("completed", counts.completed),
        ("failed", counts.failed),
        ("cancelled", counts.cancelled),
        ("pending", counts.pending),
        ("rejected", counts.rejected),
    ):
        output.say(f"  {name:<10} {value:>8}")
    spend = snapshot.spend()
    output.say(
        f"  spend      {spend.usd:.4f} USD, estimated"
        f" ({spend.priced} of {spend.finished} finished keys priced; billed: genrelay.costs)"
    )
    if snapshot.cancelled_at is not None:
        output.say(f"  cancelled at {snapshot.cancelled_at.isoformat()}")
    seen = info.collected_at.isoformat() if info.collected_at else "never"
    output.say(f"  manifest   {info.manifest}  (outcomes collected up to {seen})")
    output.say(f"  errors     {info.errors}")
    return 0


async def _send_and_collect(
    options: SubmitOptions,
    plan: Plan,
    state: RunState,
    snapshot: RunSnapshot,
    connector: Connector,
    output: Output,
) -> None:
    known = snapshot.acked | snapshot.outcomes.keys()
    unsent = [planned for planned in plan.requests if planned.key not in known]
    waiting = [key for key in snapshot.keys if key not in snapshot.outcomes]
    # A tenth of a second's worth of burst keeps the pace even despite timer granularity.
    limiter = RateLimiter(options.rate, burst=max(1, round(options.rate / 10)))
    with (
        state.journal() as journal,
        output.progress(snapshot.counts(), waiting=options.wait) as progress,
    ):
        async with connector.producer(options.kafka) as producer:

            async def send(planned: PlannedRequest) -> None:
                request = planned.request
                await producer.submit(
                    request.endpoint,
                    request.input,
                    idempotency_key=request.idempotency_key,
                    priority=request.priority,
                    tenant=request.tenant,
                    metadata=request.metadata,
                    output=request.output,
                    deadline=request.deadline,
                )
                journal.acknowledged(planned.key)
                progress.submitted()

            if not options.wait:
                await send_all(unsent, send, limiter=limiter)
                return
            async with connector.watcher(options.kafka) as watcher:
                await run_together(
                    send_all(unsent, send, limiter=limiter),
                    collect_outcomes(watcher, waiting, journal, progress, timeout=options.timeout),
                )


async def _record_results(
    state: RunState, download: Path | None, s3: S3Config | None
) -> tuple[RunSnapshot, DownloadReport | None]:
    """After collecting: note when, download the stored files if a folder is known (given now
    or at submit), and rewrite the manifest and error file."""
    info = state.snapshot().info
    state.save_info(info.model_copy(update={"collected_at": utc_now()}))
    snapshot = state.snapshot()
    folder = download or (Path(info.download) if info.download else None)
    report = await _download(snapshot, folder, s3)
    if report is None:
        write_reports(snapshot)
    else:
        write_reports(snapshot, downloaded=report.downloaded, download_failures=report.failures)
    return snapshot, report


def _plan(options: SubmitOptions) -> Plan:
    try:
        content = options.source.read_bytes()
    except OSError as exc:
        raise BadInputError(f"cannot read {options.source}: {exc.strerror}") from exc
    try:
        bulk_id = check_bulk_id(options.bulk_id) if options.bulk_id else default_bulk_id(content)
    except ValueError as exc:
        raise BadInputError(str(exc)) from exc
    rows = read_rows(content, SourceFormat.of(options.source))
    return plan_run(rows, bulk_id, options.defaults)


def _report_paths(source: Path, manifest: Path | None, errors: Path | None) -> tuple[Path, Path]:
    # Beside the input by default: prompts.jsonl -> prompts.manifest.jsonl, prompts.errors.jsonl
    return (
        manifest or source.with_name(f"{source.stem}.manifest.jsonl"),
        errors or source.with_name(f"{source.stem}.errors.jsonl"),
    )


def _target(info: RunInfo) -> KafkaTarget:
    return KafkaTarget(info.bootstrap, info.requests_topic, info.completions_topic)


async def _download(
    snapshot: RunSnapshot, folder: Path | None, s3: S3Config | None
) -> DownloadReport | None:
    if folder is None:
        return None
    if s3 is None:
        raise BadInputError("downloading needs the object store's address (GENRELAY_S3_ENDPOINT)")
    return await download_artifacts(s3.client(), folder, _stored_files(snapshot))


def _stored_files(snapshot: RunSnapshot) -> Iterator[tuple[str, Artifact]]:
    for key in snapshot.keys:
        event = snapshot.outcomes.get(key)
        if event is not None and event.status == "succeeded":
            for artifact in event.artifacts:
                yield key, artifact


def _show_rejected(output: Output, plan: Plan, errors: Path) -> None:
    for error in plan.errors[:_ERRORS_SHOWN]:
        output.say(f"line {error.line}: {error.type}: {error.message}")
    hidden = len(plan.errors) - _ERRORS_SHOWN
    if hidden > 0:
        output.say(f"... and {hidden} more line(s) refused (all are listed in {errors})")


def _opening(snapshot: RunSnapshot) -> str:
    counts = snapshot.counts()
    resumed = f", {counts.submitted} sent before" if counts.submitted else ""
    return f"bulk run {snapshot.info.bulk_id}: {counts.total} request(s){resumed}"


def _summarize(
    output: Output, snapshot: RunSnapshot, report: DownloadReport | None, *, waited: bool
) -> int:
    info = snapshot.info
    counts = snapshot.counts()
    output.say(
        f"bulk run {info.bulk_id}: {counts.total} total, {counts.submitted} submitted, "
        f"{counts.completed} completed, {counts.failed} failed, {counts.cancelled} cancelled, "
        f"{counts.pending} pending, {counts.rejected} line(s) refused"
    )
    output.say(f"manifest: {info.manifest}")
    output.say(f"errors:   {info.errors}")
    if report is not None:
        output.say(f"downloaded {len(report.downloaded)} file(s), {len(report.failures)} failed")
    if counts.pending:
        output.say(f"outcomes still to come: `genrelay bulk collect {info.bulk_id}`")
    finished = counts.completed if waited else counts.submitted
    ok = counts.rejected == 0 and finished == counts.total and not (report and report.failures)
    return 0 if ok else 1
