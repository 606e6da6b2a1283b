"""A bulk run's local state: one directory per run under the state root.

    {root}/{bulk_id}/
        run.json        where the run reads from and writes to (RunInfo)
        plan.jsonl      {"line", "key"} of every valid line of the latest submit
        rejected.jsonl  {"line", "type", "message"} of every refused line
        acked.log       one key per line, appended once the broker acknowledged its record
        outcomes.jsonl  the completion event of each key, appended as it arrives
        cancelled       present once the run was cancelled
        lock            held by the one process that submits or collects

The two logs are append-only and flushed after every line, so an interrupted or killed run
loses at most a record whose acknowledgement had not yet been written down; sending it again
is harmless because the relay pays once per key. Files that are replaced are written to a
temporary name first and renamed, so a reader never sees half of one.
"""

import fcntl
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from genrelay.producers.bulk._files import (
    append_line,
    complete_lines,
    open_log,
    write_atomically,
    write_jsonl,
)
from genrelay.producers.bulk.errors import RunInUseError, RunNotFoundError
from genrelay.producers.bulk.reader import LineError
from genrelay.schemas.completions import CompletionEvent

DEFAULT_STATE_ROOT = Path(".genrelay/bulk")

# Statuses counted as failed: neither succeeded nor cancelled on request.
FAILED_STATUSES = frozenset({"failed", "expired"})


class RunInfo(BaseModel):
    """Where a run reads from and writes to, kept so later commands need only the bulk id."""

    model_config = ConfigDict(frozen=True)

    bulk_id: str
    source: str
    bootstrap: str
    requests_topic: str
    completions_topic: str
    manifest: str
    errors: str
    download: str | None = None
    created_at: datetime
    collected_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PlanEntry:
    """A valid line of the run's file and its idempotency key."""

    line: int
    key: str


@dataclass(frozen=True, slots=True)
class Counts:
    """How far a run has got. `completed` counts successes, `failed` also counts expiries."""

    total: int
    submitted: int
    completed: int
    failed: int
    cancelled: int
    rejected: int

    @property
    def pending(self) -> int:
        """Keys with no outcome yet, sent or not."""
        return self.total - self.completed - self.failed - self.cancelled


@dataclass(frozen=True, slots=True)
class Spend:
    """The estimated cost of a run's finished keys (`priced`: those whose event has one)."""

    usd: float
    priced: int
    finished: int


@dataclass(frozen=True, slots=True)
class RunSnapshot:
    """Everything known locally about a run at one moment."""

    info: RunInfo
    plan: tuple[PlanEntry, ...]
    rejected: tuple[LineError, ...]
    acked: frozenset[str]
    outcomes: dict[str, CompletionEvent]
    cancelled_at: datetime | None

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key of the run: the planned ones in line order, then any key sent under an
        earlier version of the file that is no longer planned."""
        planned = [entry.key for entry in self.plan]
        known = set(planned)
        return (*planned, *sorted(self.acked - known))

    def lines(self) -> dict[str, int]:
        """The line of each planned key."""
        return {entry.key: entry.line for entry in self.plan}

    def spend(self) -> Spend:
        """What the run's finished keys cost, as their completion events estimate it."""
        events = [event for key in self.keys if (event := self.outcomes.get(key))]
        costs = [event.cost_usd for event in events if event.cost_usd is not None]
        return Spend(usd=round(sum(costs), 9), priced=len(costs), finished=len(events))

    def counts(self) -> Counts:
        """The run's counts as of this snapshot."""
        keys = self.keys
        statuses = [event.status for key in keys if (event := self.outcomes.get(key))]
        return Counts(
            total=len(keys),
            submitted=sum(1 for key in keys if key in self.acked or key in self.outcomes),
            completed=statuses.count("succeeded"),
            failed=sum(1 for status in statuses if status in FAILED_STATUSES),
            cancelled=statuses.count("cancelled"),
            rejected=len(self.rejected),
        )


class Journal:
    """The run's two append-only logs, open for writing."""

    def __init__(self, directory: Path) -> None:
        self._acked = open_log(directory / "acked.log")
        self._outcomes = open_log(directory / "outcomes.jsonl")

    def acknowledged(self, key: str) -> None:
        """Write down that the broker acknowledged the record of `key`."""
        append_line(self._acked, key)

    def outcome(self, event: CompletionEvent) -> None:
        """Write down the completion event of a key."""
        append_line(self._outcomes, event.model_dump_json())

    def close(self) -> None:
        """Close both logs; a second call does nothing."""
        self._acked.close()
        self._outcomes.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class RunState:
    """The state directory of one run."""

    def __init__(self, root: Path, bulk_id: str) -> None:
        self.bulk_id = bulk_id
        self.directory = root / bulk_id

    def exists(self) -> bool:
        """Whether a submit has ever been planned under this id."""
        return (self.directory / "run.json").is_file()

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the run's lock for the block; raise `RunInUseError` if another process holds it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / "lock").open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunInUseError(
                    f"bulk run {self.bulk_id} is in use by another genrelay process"
                ) from None
            yield  # the lock goes with the file descriptor when the file closes

    def save_plan(
        self, info: RunInfo, plan: Iterable[PlanEntry], rejected: Iterable[LineError]
    ) -> None:
        """Record the run's settings, its planned keys and its refused lines."""
        self.directory.mkdir(parents=True, exist_ok=True)
        write_jsonl(self.directory / "plan.jsonl", ({"line": e.line, "key": e.key} for e in plan))
        write_jsonl(
            self.directory / "rejected.jsonl",
            ({"line": e.line, "type": e.type, "message": e.message} for e in rejected),
        )
        self.save_info(info)

    def save_info(self, info: RunInfo) -> None:
        """Replace the run's settings."""
        write_atomically(self.directory / "run.json", info.model_dump_json(indent=2) + "\n")

    def journal(self) -> Journal:
        """Open the run's logs for appending."""
        return Journal(self.directory)

    def mark_cancelled(self, at: datetime) -> None:
        """Record that the run was cancelled (the first time only)."""
        marker = self.directory / "cancelled"
        if not marker.exists():
            write_atomically(marker, at.isoformat() + "\n")

    def snapshot(self) -> RunSnapshot:
        """Read the whole state; raise `RunNotFoundError` if there is none."""
        if not self.exists():
            raise RunNotFoundError(f"no bulk run {self.bulk_id} in {self.directory.parent}")
        info = RunInfo.model_validate_json((self.directory / "run.json").read_bytes())
        plan = tuple(PlanEntry(row["line"], row["key"]) for row in self._rows("plan.jsonl"))
        rejected = tuple(
            LineError(row["line"], row["type"], row["message"])
            for row in self._rows("rejected.jsonl")
        )
        acked = frozenset(complete_lines(self.directory / "acked.log"))
        outcomes: dict[str, CompletionEvent] = {}
        for line in complete_lines(self.directory / "outcomes.jsonl"):
            try:
                event = CompletionEvent.model_validate_json(line)
            except ValidationError:
                continue  # not ours to judge here: the watcher only hands out valid events
            outcomes.setdefault(event.idempotency_key, event)
        marker = self.directory / "cancelled"
        cancelled_at = (
            datetime.fromisoformat(marker.read_text().strip()) if marker.exists() else None
        )
        return RunSnapshot(info, plan, rejected, acked, outcomes, cancelled_at)

    def _rows(self, name: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in complete_lines(self.directory / name)]


def utc_now() -> datetime:
    """The current time in UTC."""
    return datetime.now(UTC)
