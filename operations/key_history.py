"""What happened to one key, read from Kafka: every ledger state it went through (as far as
the compacted ledger still holds them) and its completion event(s).

It reads only the key's partition of each topic (Kafka's default partitioner, murmur2 of the
key), from any replica's writes, committed data only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from genrelay.consumer.service.telemetry import trace_id_of
from genrelay.producers.kafka import partition_count, read_topic
from genrelay.schemas.base import from_json_bytes
from genrelay.schemas.completions import CompletionEvent
from genrelay.schemas.ledger import LedgerRecord
from genrelay.schemas.topics import partition_for


@dataclass
class KeyHistory:
    key: str
    partition: int
    states: list[LedgerRecord] = field(default_factory=list)
    events: list[CompletionEvent] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return bool(self.states or self.events)

    @property
    def trace_id(self) -> str | None:
        for state in reversed(self.states):
            if state.traceparent:
                return trace_id_of(state.traceparent)
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "partition": self.partition,
            "trace_id": self.trace_id,
            "states": [state.model_dump(mode="json", exclude={"event"}) for state in self.states],
            "events": [event.model_dump(mode="json") for event in self.events],
        }

    def text(self) -> str:
        if not self.found:
            return f"{self.key}: unknown (no ledger state or event in partition {self.partition})"
        lines = [f"{self.key}  (partition {self.partition}, trace {self.trace_id or '-'})"]
        lines += [_state_line(state) for state in self.states]
        for event in self.events:
            lines.append(_event_line(event))
            lines += [
                f"    stored s3://{a.bucket}/{a.key} ({a.size} bytes, sha256 {a.sha256[:12]}…)"
                for a in event.artifacts
            ]
        return "\n".join(lines)


def _state_line(state: LedgerRecord) -> str:
    parts = [f"  {_at(state.updated_at)}  {state.phase.value:<12} attempts {state.attempts}"]
    if state.job is not None:
        parts.append(f"request {state.job.request_id}")
    if state.adopted:
        parts.append("adopted")
    if state.proven_absent:
        parts.append(f"re-posted after proof x{state.proven_absent}")
    if state.retry_at is not None:
        parts.append(f"retry at {_at(state.retry_at)}")
    if state.step_failures:
        parts.append(f"step failures {state.step_failures}")
    if state.cancel_requested:
        parts.append("cancel requested")
    if state.last_error is not None:
        parts.append(f"last error {state.last_error.type}: {state.last_error.message[:120]}")
    return " · ".join(parts)


def _event_line(event: CompletionEvent) -> str:
    cost = "" if event.cost_usd is None else f" · cost {event.cost_usd:.4f} USD"
    error = "" if event.error is None else f" · {event.error.type}: {event.error.message[:120]}"
    replayed = " (replayed)" if event.replayed else ""
    return (
        f"  event {event.event_id}: {event.status}{replayed} · request {event.request_id}"
        f" · {event.timings.total_ms} ms · attempts {event.attempts}{cost}{error}"
    )


def _at(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def key_history(
    bootstrap: str, ledger_topic: str, completions_topic: str, key: str
) -> KeyHistory:
    """Read the key's partition of the ledger and completion topics (genrelay writes a key's
    state and event to the partition its request came in on: the same number)."""
    partition = partition_for(key.encode(), await partition_count(bootstrap, ledger_topic))
    history = KeyHistory(key, partition)
    wanted = key.encode()
    for record in await read_topic(bootstrap, ledger_topic, partition=partition):
        if record.key == wanted and record.value:
            try:
                history.states.append(from_json_bytes(LedgerRecord, record.value))
            except ValidationError:
                continue  # a state written by a newer version: skipped, not fatal
    for record in await read_topic(bootstrap, completions_topic, partition=partition):
        if record.key == wanted and record.value:
            try:
                history.events.append(from_json_bytes(CompletionEvent, record.value))
            except ValidationError:
                continue
    return history
