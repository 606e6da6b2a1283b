"""What fal keeps about each request after the queue forgets it: the request history and the
billing events, as the Platform API serves them (fal.ai/docs/platform-apis/v1/models/requests/
by-endpoint, fal.ai/docs/platform-apis/v1/models/billing-events).

A request is listed from its arrival (with `ended_at` empty while it runs), `history_lag_s`
later; a request is billed when it succeeds (fal never bills server errors; see its FAQ), and
the billing event shows `billing_lag_s` after it ended. Both are bounded like the submission
log, oldest first out.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from genrelay.emulator.settings import EmulatorSettings

JSON = Any

# X-Fal-Tags (fal.ai/docs/documentation/model-apis/request-tags): comma-separated `key=value`
# pairs split on the first "="; keys trimmed and lowercased. The gateway never fails a request
# over a tag: each pair that breaks a rule is dropped, silently.
_TAG_KEY = re.compile(r"[a-z0-9._-]{1,64}")
_TAG_VALUE = re.compile(r"[\x20-\x2b\x2d-\x7e]{0,256}")
MAX_TAGS = 10
MAX_TAG_BYTES = 1024


def parse_tags(header: str | None) -> dict[str, str]:
    """The tags fal's gateway keeps from an `X-Fal-Tags` header."""
    if not header:
        return {}
    pairs: list[tuple[str, str]] = []
    for part in header.split(","):
        key, sep, value = part.partition("=")
        if sep:
            pairs.append((key.strip().lower(), value.strip()))
    # The limits count every pair sent, before duplicates collapse.
    if len(pairs) > MAX_TAGS or sum(len(k) + len(v) for k, v in pairs) > MAX_TAG_BYTES:
        pairs = pairs[:MAX_TAGS]
        kept: list[tuple[str, str]] = []
        used = 0
        for key, value in pairs:
            if used + len(key) + len(value) <= MAX_TAG_BYTES:
                kept.append((key, value))
                used += len(key) + len(value)
        pairs = kept
    tags: dict[str, str] = {}
    for key, value in pairs:
        if key.startswith("fal.") or not _TAG_KEY.fullmatch(key):
            continue
        if not _TAG_VALUE.fullmatch(value):
            continue
        tags[key] = value  # the last value of a key wins
    return tags


def iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class Entry:
    """One request as fal's records know it."""

    request_id: str
    endpoint: str
    owner: str
    sent_at: float
    input: JSON
    tags: dict[str, str]
    started_at: float | None = None
    ended_at: float | None = None
    status_code: int | None = None
    output: JSON = None
    billed_units: float | None = None
    unit_price: float | None = None
    billed_at: float | None = None

    @property
    def status(self) -> str | None:
        """The history's status filter: `success`, `user_error` (4xx) or `error`."""
        if self.status_code is None:
            return None
        if self.status_code < 400:
            return "success"
        return "user_error" if self.status_code < 500 else "error"

    def listed(self, with_payloads: bool) -> dict[str, JSON]:
        item: dict[str, JSON] = {
            "request_id": self.request_id,
            "endpoint_id": self.endpoint,
            "sent_at": iso(self.sent_at),
            "started_at": iso(self.started_at),
            "ended_at": iso(self.ended_at),
            "status_code": self.status_code,
            "duration": (
                None
                if self.ended_at is None or self.started_at is None
                else round(self.ended_at - self.started_at, 3)
            ),
        }
        if with_payloads:
            item["json_input"] = self.input
            item["json_output"] = self.output
        return item

    def billing_event(self, with_tags: bool) -> dict[str, JSON]:
        assert self.billed_units is not None
        assert self.unit_price is not None
        cost = round(self.billed_units * self.unit_price, 9)
        event: dict[str, JSON] = {
            "request_id": self.request_id,
            "endpoint_id": self.endpoint,
            "timestamp": iso(self.billed_at),
            "quantity": self.billed_units,
            "unit": "image",
            "output_units": self.billed_units,
            "unit_price": self.unit_price,
            "percent_discount": None,
            "cost_subtotal": cost,
            "cost_discount": 0.0,
            "cost_total": cost,
            "cost_estimate_nano_usd": round(cost * 1e9),
        }
        if with_tags:
            event["tags"] = dict(self.tags)
        return event


class Records:
    """The request history and billing of every account, in arrival order."""

    def __init__(self, settings: Callable[[], EmulatorSettings]) -> None:
        self._settings = settings
        self._entries: OrderedDict[str, Entry] = OrderedDict()

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def arrived(
        self, request_id: str, endpoint: str, owner: str, arguments: JSON, tags: dict[str, str]
    ) -> None:
        self._entries[request_id] = Entry(request_id, endpoint, owner, time.time(), arguments, tags)
        limit = self._settings().submission_log_limit
        while len(self._entries) > limit:
            self._entries.popitem(last=False)

    def started(self, request_id: str) -> None:
        entry = self._entries.get(request_id)
        if entry is not None and entry.started_at is None:
            entry.started_at = time.time()

    def ended(self, request_id: str, status_code: int, output: JSON, units: float) -> float | None:
        """Record how the request ended; returns the units billed (None: not billed)."""
        entry = self._entries.get(request_id)
        if entry is None:
            return None
        now = time.time()
        entry.ended_at, entry.status_code = now, status_code
        entry.output = output if status_code < 400 else None
        if status_code >= 400:
            return None
        settings = self._settings()
        entry.billed_units = units
        entry.unit_price = settings.unit_prices.get(entry.endpoint, settings.default_unit_price)
        entry.billed_at = now
        return units

    def price(self, endpoint: str) -> float:
        settings = self._settings()
        return settings.unit_prices.get(endpoint, settings.default_unit_price)

    def history(self, owner: str) -> Iterator[Entry]:
        """The owner's requests listed by now (past the history's lag)."""
        visible_until = time.time() - self._settings().history_lag_s
        for entry in self._entries.values():
            if entry.owner == owner and entry.sent_at <= visible_until:
                yield entry

    def billed(self, owner: str) -> Iterator[Entry]:
        """The owner's billed requests reported by now (past the billing's lag)."""
        visible_until = time.time() - self._settings().billing_lag_s
        for entry in self._entries.values():
            billed_at = entry.billed_at
            if entry.owner == owner and billed_at is not None and billed_at <= visible_until:
                yield entry
