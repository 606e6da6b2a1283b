"""The progress display of a bulk run: submitted and finished keys, their rates and ETAs.

    submitted ━━━━━━━━━━━━━━━━━ 1200/2000  98.1/s 0:00:08
    finished  ━━━━━━━━━━━━━━━━━  950/2000  45.3/s 0:00:23 completed 948 · failed 2 · cancelled 0

It is drawn on stderr while that is a terminal; elsewhere (logs, CI) the final state is
printed once at the end.
"""

from types import TracebackType
from typing import Protocol, Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from genrelay.producers.bulk.state import FAILED_STATUSES, Counts


class ProgressView(Protocol):
    """What a bulk run reports as it goes."""

    def submitted(self) -> None:
        """One more record was acknowledged by the broker."""
        ...

    def finished(self, status: str) -> None:
        """One more key reached its outcome (`succeeded`, `failed`, ...)."""
        ...


class SilentProgress:
    """A `ProgressView` that shows nothing; a context manager like `BarProgress`."""

    def submitted(self) -> None:
        """Nothing to show."""

    def finished(self, status: str) -> None:
        """Nothing to show."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("   -/s" if speed is None else f"{speed:6.1f}/s")


class BarProgress:
    """Two bars, submitted and finished, and how many finished completed, failed or were
    cancelled.

    Use as a context manager; it starts from the counts a resumed run already has.
    """

    def __init__(self, counts: Counts, *, waiting: bool, console: Console | None = None) -> None:
        self._completed = counts.completed
        self._failed = counts.failed
        self._cancelled = counts.cancelled
        self._progress = Progress(
            TextColumn("{task.description:<9}"),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[note]}"),
            console=console or Console(stderr=True),
        )
        self._submitted = self._progress.add_task(
            "submitted", total=counts.total, completed=counts.submitted, note=""
        )
        self._finished: TaskID | None = None
        if waiting:
            done = counts.completed + counts.failed + counts.cancelled
            self._finished = self._progress.add_task(
                "finished", total=counts.total, completed=done, note=self._note()
            )

    def submitted(self) -> None:
        """Advance the submitted bar."""
        self._progress.advance(self._submitted)

    def finished(self, status: str) -> None:
        """Advance the finished bar and count the outcome."""
        if status == "succeeded":
            self._completed += 1
        elif status in FAILED_STATUSES:
            self._failed += 1
        elif status == "cancelled":
            self._cancelled += 1
        if self._finished is not None:
            self._progress.update(self._finished, advance=1, note=self._note())

    def _note(self) -> str:
        return f"completed {self._completed} · failed {self._failed} · cancelled {self._cancelled}"

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._progress.stop()
