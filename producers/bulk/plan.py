"""Turning a bulk file's rows into the submit requests of a run, or line-numbered refusals.

A JSONL line is one of:
- a request: an object with an `input` object, plus `endpoint` (or `--endpoint`) and any of
  `idempotency_key`, `priority`, `tenant`, `metadata`, `output`, `deadline`;
- a bare input object, when `--endpoint` is given and the line has no `input` object.

A CSV row is always a bare input. Each request is checked exactly as the relay checks it
(`parse_request`), so a line refused here would have been dead-lettered there. Every request
carries `{"bulk_id": ..., "line": ...}` in its metadata (overriding the line's own values of
those two names) so its completion event can be attributed to the run and the line.
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from genrelay.producers.bulk.keys import bulk_key, work_hash
from genrelay.producers.bulk.reader import LineError, Row
from genrelay.schemas.base import to_json_bytes
from genrelay.schemas.dead_letter import DeadLetterReason
from genrelay.schemas.fields import Priority
from genrelay.schemas.requests import SCHEMA_VERSION, RecordInvalid, SubmitRequest, parse_request

# The relay's default `max_record_bytes`: a larger record would be dead-lettered.
MAX_RECORD_BYTES = 1024 * 1024

DUPLICATE_KEY = "duplicate_key"

# Stands in for a derived key while the request is validated; never sent.
_KEY_PENDING = "pending"


@dataclass(frozen=True, slots=True)
class Defaults:
    """What a line does not say for itself: `--endpoint` and `--priority`."""

    endpoint: str | None = None
    priority: Priority = "low"


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    """A valid line and the request it becomes."""

    line: int
    request: SubmitRequest

    @property
    def key(self) -> str:
        """The request's idempotency key."""
        return self.request.idempotency_key


@dataclass(frozen=True, slots=True)
class Plan:
    """A run's requests in file order, and the lines refused."""

    bulk_id: str
    requests: tuple[PlannedRequest, ...]
    errors: tuple[LineError, ...]


@dataclass
class _Planner:
    bulk_id: str
    defaults: Defaults
    occurrences: dict[str, int] = field(default_factory=dict)
    lines_by_key: dict[str, int] = field(default_factory=dict)

    def plan(self, row: Row) -> PlannedRequest | LineError:
        fields = self._request_fields(row)
        if isinstance(fields, LineError):
            return fields
        explicit_key = fields.get("idempotency_key")
        if explicit_key is None:
            fields["idempotency_key"] = _KEY_PENDING
        raw = json.dumps(fields, ensure_ascii=False, allow_nan=False).encode()
        try:
            request = parse_request(raw, MAX_RECORD_BYTES)
        except RecordInvalid as exc:
            return LineError(row.line, exc.reason_code.value, exc.message)
        assert isinstance(request, SubmitRequest)  # the action was fixed to "submit" above
        if explicit_key is None:
            request = request.model_copy(update={"idempotency_key": self._derived_key(request)})
        return self._registered(row.line, request)

    def _request_fields(self, row: Row) -> dict[str, Any] | LineError:
        given = row.fields
        if row.input_only or not isinstance(given.get("input"), dict):
            if self.defaults.endpoint is None:
                return LineError(
                    row.line,
                    DeadLetterReason.SCHEMA_VIOLATION.value,
                    "the line has no `input` object; pass --endpoint to send it as the input",
                )
            given = {"input": given}
        if given.get("action", "submit") != "submit":
            return LineError(
                row.line,
                DeadLetterReason.SCHEMA_VIOLATION.value,
                f"action {given['action']!r}: a bulk file holds submissions only",
            )
        defaults: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "priority": self.defaults.priority,
        }
        if self.defaults.endpoint is not None:
            defaults["endpoint"] = self.defaults.endpoint
        fields: dict[str, Any] = {**defaults, **given, "action": "submit"}
        metadata = fields.get("metadata", {})
        if isinstance(metadata, dict):  # anything else is refused by the schema check
            fields["metadata"] = {**metadata, "bulk_id": self.bulk_id, "line": row.line}
        return fields

    def _derived_key(self, request: SubmitRequest) -> str:
        work = work_hash(request)
        occurrence = self.occurrences.get(work, 0) + 1
        self.occurrences[work] = occurrence
        return bulk_key(self.bulk_id, work, occurrence)

    def _registered(self, line: int, request: SubmitRequest) -> PlannedRequest | LineError:
        key = request.idempotency_key
        first = self.lines_by_key.setdefault(key, line)
        if first != line:
            # One key has one outcome: a second line under it could never be told apart.
            return LineError(
                line, DUPLICATE_KEY, f"idempotency_key is already used on line {first}"
            )
        size = len(to_json_bytes(request))
        if size > MAX_RECORD_BYTES:
            return LineError(
                line,
                DeadLetterReason.OVERSIZED.value,
                f"the request is {size} bytes; the limit is {MAX_RECORD_BYTES}",
            )
        return PlannedRequest(line, request)


def plan_run(rows: Iterable[Row | LineError], bulk_id: str, defaults: Defaults) -> Plan:
    """The requests of run `bulk_id` made from `rows`, and the rows refused."""
    planner = _Planner(bulk_id, defaults)
    requests: list[PlannedRequest] = []
    errors: list[LineError] = []
    for row in rows:
        item = row if isinstance(row, LineError) else planner.plan(row)
        if isinstance(item, LineError):
            errors.append(item)
        else:
            requests.append(item)
    return Plan(bulk_id, tuple(requests), tuple(errors))
