"""fal's Platform API, the part about our own requests: history, billing and prices.

    GET  /v1/models/requests/by-endpoint   fal.ai/docs/platform-apis/v1/models/requests/by-endpoint
    GET  /v1/models/billing-events         fal.ai/docs/platform-apis/v1/models/billing-events
    GET  /v1/models/pricing                fal.ai/docs/platform-apis/v1/models/pricing
    POST /v1/models/pricing/estimate       fal.ai/docs/platform-apis/v1/models/pricing/estimate

Each account sees only its own requests. Lists page with `cursor` (the page number, base64,
as fal's examples show: "Mg==" is page 2) and `has_more`. Errors have fal's platform shape,
`{"error": {"type", "message"}}`. Time windows (`start` inclusive, `end` exclusive) apply
to when a request arrived (history) and when it was billed (billing).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from genrelay.emulator.outcomes import dumps

if TYPE_CHECKING:
    from genrelay.emulator.core import Emulator
    from genrelay.emulator.records import Entry

JSON = Any
_DAY_S = 86_400.0
_HISTORY_PAGE_MAX = 100
_BILLING_PAGE_MAX = 10_000
_MAX_IDS = 50


class _InvalidError(Exception):
    """A query parameter fal would refuse (400 validation_error)."""


def _error(status: int, kind: str, message: str) -> Response:
    body = dumps({"error": {"type": kind, "message": message}})
    return Response(body, status, media_type="application/json")


def _ok(body: JSON) -> Response:
    return Response(dumps(body), 200, media_type="application/json")


def _ids(request: Request, name: str, *, required: bool) -> list[str]:
    """A parameter given comma-separated, repeated, or both."""
    values = [part.strip() for raw in request.query_params.getlist(name) for part in raw.split(",")]
    values = [value for value in values if value]
    if required and not values:
        raise _InvalidError(f"{name} is required")
    if len(values) > _MAX_IDS:
        raise _InvalidError(f"{name} accepts at most {_MAX_IDS} values")
    return values


def _moment(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name)
    if raw is None or not raw.strip():
        return None
    text = raw.strip().replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise _InvalidError(f"{name} must be an ISO 8601 date or time: {raw!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _limit(request: Request, default: int, most: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise _InvalidError("limit must be an integer") from exc
    if not 1 <= value <= most:
        raise _InvalidError(f"limit must be between 1 and {most}")
    return value


def _page(request: Request) -> int:
    raw = request.query_params.get("cursor")
    if not raw:
        return 1
    try:
        page = int(base64.b64decode(raw, validate=True).decode())
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise _InvalidError("cursor is not one this API returned") from exc
    if page < 1:
        raise _InvalidError("cursor is not one this API returned")
    return page


def _paged(items: list[JSON], name: str, page: int, limit: int) -> JSON:
    first = (page - 1) * limit
    more = len(items) > first + limit
    cursor = base64.b64encode(str(page + 1).encode()).decode() if more else None
    return {name: items[first : first + limit], "next_cursor": cursor, "has_more": more}


def _tag_filters(request: Request) -> dict[str, set[str]]:
    filters: dict[str, set[str]] = {}
    for raw in request.query_params.getlist("tag"):
        key, sep, value = raw.partition("=")
        if not sep or not key.strip():
            raise _InvalidError(f"tag filters are key=value: {raw!r}")
        filters.setdefault(key.strip().lower(), set()).add(value.strip())
    if len(filters) > 10:
        raise _InvalidError("at most 10 tag filters")
    return filters


def _tagged(tags: dict[str, str], filters: dict[str, set[str]]) -> bool:
    # Different keys must all match; the values of one key are alternatives.
    for key, values in filters.items():
        value = tags.get(key)
        if not (value in values or (value is None and "(untagged)" in values)):
            return False
    return True


class PlatformApi:
    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator

    def routes(self) -> list[Route]:
        return [
            Route("/models/requests/by-endpoint", self._guarded(self.requests), methods=["GET"]),
            Route("/models/billing-events", self._guarded(self.billing), methods=["GET"]),
            Route("/models/pricing", self._guarded(self.pricing), methods=["GET"]),
            Route("/models/pricing/estimate", self._guarded(self.estimate), methods=["POST"]),
        ]

    def _guarded(self, handler: Callable[[Request, str], Any]) -> Callable[[Request], Any]:
        async def guarded(request: Request) -> Response:
            owner = self.emulator.account(request.headers.get("authorization"))
            if owner is None:
                self.emulator.accounting.count("unauthorized")
                return _error(401, "authorization_error", "Authentication required")
            self.emulator.accounting.count("platform_calls")
            try:
                response: Response = await handler(request, owner)
            except _InvalidError as exc:
                return _error(400, "validation_error", str(exc))
            return response

        return guarded

    async def requests(self, request: Request, owner: str) -> Response:
        endpoints = set(_ids(request, "endpoint_id", required=True))
        request_id = request.query_params.get("request_id")
        status = request.query_params.get("status")
        if status not in (None, "success", "error", "user_error"):
            raise _InvalidError("status must be one of success, error, user_error")
        sort_by = request.query_params.get("sort_by", "ended_at")
        if sort_by not in ("ended_at", "duration"):
            raise _InvalidError("sort_by must be ended_at or duration")
        expand = {part for raw in request.query_params.getlist("expand") for part in raw.split(",")}
        now = time.time()
        # The default window is the last 24 h, widened to 90 days when a request id is given.
        start = _moment(request, "start") or now - (90 if request_id else 1) * _DAY_S
        end = _moment(request, "end") or now
        limit = _limit(request, 50, _HISTORY_PAGE_MAX)
        page = _page(request)
        found = [
            entry
            for entry in self.emulator.records.history(owner)
            if entry.endpoint in endpoints
            and start <= entry.sent_at < end
            and (request_id is None or entry.request_id == request_id)
            and (status is None or entry.status == status)
        ]
        found.sort(key=_sort_key(sort_by), reverse=True)
        items = [entry.listed("payloads" in expand) for entry in found]
        return _ok(_paged(items, "items", page, limit))

    async def billing(self, request: Request, owner: str) -> Response:
        source = request.query_params.get("source", "billed")
        if source not in ("billed", "tagged-billed"):
            raise _InvalidError("source must be billed or tagged-billed")
        endpoints = set(_ids(request, "endpoint_id", required=False))
        request_ids = set(_ids(request, "request_id", required=False))
        filters = _tag_filters(request)
        now = time.time()
        start = _moment(request, "start") or now - _DAY_S
        end = _moment(request, "end") or now
        if end - start > 90 * _DAY_S:
            raise _InvalidError("the date range is capped at 90 days")
        limit = _limit(request, 1000, _BILLING_PAGE_MAX)
        page = _page(request)
        with_tags = source == "tagged-billed" and self.emulator.settings.tagged_billing
        rows = [
            entry.billing_event(with_tags)
            for entry in self.emulator.records.billed(owner)
            if entry.billed_at is not None
            and start <= entry.billed_at < end
            and (not endpoints or entry.endpoint in endpoints)
            and (not request_ids or entry.request_id in request_ids)
            and _tagged(entry.tags if with_tags else {}, filters)
        ]
        rows.reverse()  # newest first
        return _ok(_paged(rows, "billing_events", page, limit))

    async def pricing(self, request: Request, owner: str) -> Response:
        endpoints = _ids(request, "endpoint_id", required=True)
        prices = [self._price(endpoint) for endpoint in endpoints if self._serves(endpoint)]
        if not prices:
            return _error(404, "not_found", "No pricing found for the given endpoints")
        return _ok({"prices": prices, "next_cursor": None, "has_more": False})

    async def estimate(self, request: Request, owner: str) -> Response:
        try:
            body = json.loads(await request.body())
            kind = body["estimate_type"]
            wanted: dict[str, dict[str, float]] = body["endpoints"]
            field = {"unit_price": "unit_quantity", "historical_api_price": "call_quantity"}[kind]
            total = sum(
                float(amounts[field]) * self.emulator.records.price(endpoint)
                for endpoint, amounts in wanted.items()
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise _InvalidError(f"invalid estimate request: {exc!r}") from exc
        return _ok({"estimate_type": kind, "total_cost": round(total, 9), "currency": "USD"})

    def _serves(self, endpoint: str) -> bool:
        return self.emulator.registry.resolve(endpoint) is not None

    def _price(self, endpoint: str) -> JSON:
        price = self.emulator.records.price(endpoint)
        return {"endpoint_id": endpoint, "unit_price": price, "unit": "image", "currency": "USD"}


def _sort_key(sort_by: str) -> Callable[[Entry], float]:
    if sort_by == "duration":
        return lambda entry: (entry.ended_at or 0.0) - (entry.started_at or entry.ended_at or 0.0)
    # Still running (no end yet) sorts first, as the newest.
    return lambda entry: entry.ended_at if entry.ended_at is not None else float("inf")


def platform_routes(emulator: Emulator) -> list[Route]:
    return PlatformApi(emulator).routes()
