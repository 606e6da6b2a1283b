"""The live status page: `/status` (HTML) and `/status.json`, for a person watching one replica.

The page is a static shell with a little inline script that fetches `/status.json` every two
seconds and fills itself in; it loads nothing else, so it works on an isolated network. The
relay supplies a callback that takes a `StatusSnapshot` of its state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from genrelay.consumer.events.recent_outcomes import Outcome

STATUS_PATH = "/status"
STATUS_JSON_PATH = "/status.json"


@dataclass(frozen=True)
class TenantShare:
    """A tenant's use of the slots ("" names work without a tenant)."""

    in_flight: int
    waiting: int
    share: float  # of the slots, among the tenants holding or waiting for some
    budget_waiting: int = 0  # keys waiting, unposted, for the tenant's budget
    spent_usd: float | None = None  # in the budget's current period, every replica's
    budget_usd: float | None = None


@dataclass(frozen=True)
class StatusSnapshot:
    """One replica's state at one moment."""

    ready: bool
    partitions: tuple[int, ...]
    in_flight: int
    by_phase: Mapping[str, int]
    by_endpoint: Mapping[str, int]
    rates: Mapping[str, float]  # events per second over the last minute, by name
    completions: tuple[Outcome, ...]
    failures: tuple[Outcome, ...]
    by_tenant: Mapping[str, TenantShare] = field(default_factory=dict)
    # The last hour, a point per minute (see `RecentOutcomes.trends`).
    trends: Sequence[Mapping[str, Any]] = ()
    instance: str = ""
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_json(self) -> dict[str, Any]:
        """The snapshot as JSON-ready values (times as ISO 8601 strings)."""
        return {
            "ready": self.ready,
            "partitions": list(self.partitions),
            "in_flight": self.in_flight,
            "by_phase": dict(self.by_phase),
            "by_endpoint": dict(self.by_endpoint),
            "by_tenant": {name: asdict(share) for name, share in self.by_tenant.items()},
            "rates": dict(self.rates),
            "completions": [_outcome(o) for o in self.completions],
            "failures": [_outcome(o) for o in self.failures],
            "trends": [dict(point) for point in self.trends],
            "instance": self.instance,
            "generated_at": self.generated_at.isoformat(),
        }


def _outcome(outcome: Outcome) -> dict[str, Any]:
    body = asdict(outcome)
    body["finished_at"] = outcome.finished_at.isoformat()
    return body


SnapshotSource = Callable[[], StatusSnapshot]


def status_routes(snapshot: SnapshotSource) -> list[Route]:
    """The routes of the status page, reading the relay's state through `snapshot`."""
    page = (
        files("genrelay.consumer.service").joinpath("status_page.html").read_text(encoding="utf-8")
    )

    # Async endpoints on purpose: the snapshot reads the relay's state, which only the event
    # loop's thread may touch; Starlette would run a sync endpoint in a worker thread.
    async def html(request: Request) -> Response:
        return HTMLResponse(page, headers={"cache-control": "no-store"})

    async def json(request: Request) -> Response:
        return JSONResponse(snapshot().to_json(), headers={"cache-control": "no-store"})

    return [
        Route(STATUS_PATH, html, methods=["GET"]),
        Route(STATUS_JSON_PATH, json, methods=["GET"]),
    ]
