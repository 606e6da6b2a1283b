"""A chaos run's outcome: the invariants checked, as a table row, details and JSON.

The three numbers that must hold, whatever was broken: no job lost (every key got a terminal
completion event within the cap), no extra paid submission (the provider's own accounting
shows at most one submission per key), and exactly one distinct completion event per key
(redelivery may repeat an `event_id`, never add another).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from genrelay.chaos.faults import Fault
from genrelay.chaos.replicas import Crash

HEADER = (
    "scenario",
    "jobs",
    "faults injected",
    "completed",
    "failed by reason",
    "lost",
    "extra paid",
    "events/key",
    "drain after last fault",
    "verdict",
)


@dataclass(frozen=True)
class ScenarioReport:
    """What one scenario run showed."""

    scenario: str
    size: str
    jobs: int
    faults: tuple[Fault, ...]
    completed: int
    failed: Mapping[str, int]
    lost: int
    extra_paid: int
    # Distinct completion event ids per finished key: the largest seen, and how many keys
    # had more than one.
    events_per_key_max: int
    keys_with_several_events: int
    drain_s: float | None
    wall_s: float
    command: str
    notes: Mapping[str, int] = field(default_factory=dict)
    crashes: tuple[Crash, ...] = ()
    evidence: Mapping[str, Sequence[str]] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Every invariant held and the fault script ran to its end."""
        return (
            self.lost == 0
            and self.extra_paid == 0
            and self.keys_with_several_events == 0
            and self.error is None
        )

    def fault_summary(self) -> str:
        """`6 x kill -9 relay`, several kinds joined by `; `."""
        if not self.faults:
            return "none"
        kinds = Counter(f.kind for f in self.faults)
        return "; ".join(f"{n} x {kind}" for kind, n in kinds.items())

    def row(self) -> tuple[str, ...]:
        failed = ", ".join(f"{k} {v}" for k, v in sorted(self.failed.items())) or "0"
        events = (
            "1"
            if self.keys_with_several_events == 0
            else (f"up to {self.events_per_key_max} ({self.keys_with_several_events} keys)")
        )
        if self.completed + sum(self.failed.values()) == 0:
            events = "-"
        drain = "-" if self.drain_s is None else f"{self.drain_s:.1f} s"
        return (
            self.scenario,
            str(self.jobs),
            self.fault_summary(),
            str(self.completed),
            failed,
            str(self.lost),
            str(self.extra_paid),
            events,
            drain,
            "PASS" if self.ok else "FAIL",
        )

    def details(self) -> str:
        """Everything behind the row: faults with their times, counters, crashes, evidence."""
        lines = [f"{self.scenario} ({self.size}, {self.wall_s:.0f} s): {self.command}"]
        for fault in self.faults:
            healed = "never" if fault.healed is None else f"{fault.healed:.1f}"
            lines.append(
                f"  fault {fault.kind} on {fault.target}: t={fault.started:.1f}..{healed} s"
            )
        for name, value in sorted(self.notes.items()):
            lines.append(f"  {name}: {value}")
        for crash in self.crashes:
            lines.append(f"  CRASH {crash.replica} {crash.what} (log {crash.log_path})")
            lines += [f"    | {line}" for line in crash.log_tail.splitlines()[-8:]]
        for what, keys in self.evidence.items():
            if keys:
                lines.append(f"  {what}: {', '.join(keys)}")
        if self.error:
            lines.append(f"  ERROR {self.error}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        data["crashes"] = [{**asdict(c), "log_path": str(c.log_path)} for c in self.crashes]
        return data


def table(reports: Sequence[ScenarioReport]) -> str:
    """The reports as a Markdown table (readable in a terminal too)."""
    rows = [HEADER, *(r.row() for r in reports)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(HEADER), rule, *(line(r) for r in rows[1:])])
