"""fal's Platform API (``https://api.fal.ai/v1``): the records fal keeps of our requests.

- Request history, ``GET /models/requests/by-endpoint``
  (fal.ai/docs/platform-apis/v1/models/requests/by-endpoint): every request an endpoint
  received, with its input (``expand=payloads``), paged by ``cursor``/``has_more``, at most
  100 per page. It lags behind the queue by an amount fal does not document.
- Billing events, ``GET /models/billing-events`` (fal.ai/docs/platform-apis/v1/models/
  billing-events): what fal billed, per request, with the tags the submit carried
  (``source=tagged-billed``).
- Prices, ``GET /models/pricing`` (fal.ai/docs/platform-apis/v1/models/pricing).

Errors are fal's platform shape, ``{"error": {"type", "message"}}``; every failure here
raises a ``ProviderError``, and a listing is returned whole or not at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from genrelay import __version__
from genrelay.consumer.dispatch.backoff import retry_after
from genrelay.consumer.errors import ProviderError, RateLimited, Rejected
from genrelay.consumer.provider.provider import ListedRequest

DEFAULT_PLATFORM_URL = "https://api.fal.ai/v1"
_TIMEOUT = httpx.Timeout(30.0, connect=5.0, pool=10.0)
_HISTORY_PAGE = 100  # fal's maximum
# A listing longer than this is refused rather than read for minutes.
_MAX_PAGES = 200


class _Listed(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    request_id: str
    endpoint_id: str
    sent_at: datetime | None = None
    status_code: int | None = None
    json_input: JsonValue = None


class _RequestsPage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    items: list[_Listed]
    next_cursor: str | None = None
    has_more: bool = False


class BillingEvent(BaseModel):
    """One billed request, as fal's billing reports it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    request_id: str
    endpoint_id: str
    timestamp: datetime
    unit_price: float | None = None
    quantity: float | None = None
    output_units: float | None = None
    cost_total: float | None = None
    cost_estimate_nano_usd: int | None = None
    tags: dict[str, str] = Field(default_factory=dict)

    @property
    def units(self) -> float | None:
        return self.quantity if self.quantity is not None else self.output_units

    @property
    def cost_usd(self) -> float | None:
        if self.cost_total is not None:
            return self.cost_total
        if self.cost_estimate_nano_usd is not None:
            return self.cost_estimate_nano_usd / 1e9
        return None


class _BillingPage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    billing_events: list[BillingEvent]
    next_cursor: str | None = None
    has_more: bool = False


@dataclass(frozen=True)
class Price:
    endpoint: str
    unit_price: float
    unit: str
    currency: str


class FalPlatform:
    """The ``RequestHistory`` (and billing and prices) of one fal account."""

    def __init__(
        self,
        key: str,
        *,
        base_url: str = DEFAULT_PLATFORM_URL,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not base_url.startswith(("https://", "http://")):
            raise ValueError(f"platform API base URL must be http(s): {base_url!r}")
        self._base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Key {key}", "User-Agent": f"genrelay/{__version__}"}
        self._client = client if client is not None else httpx.AsyncClient()
        self._owns_client = client is None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def requests(
        self, endpoint: str, *, start: datetime, end: datetime | None
    ) -> list[ListedRequest]:
        params: dict[str, str] = {
            "endpoint_id": endpoint,
            "start": _iso(start),
            "expand": "payloads",
            "limit": str(_HISTORY_PAGE),
        }
        if end is not None:
            params["end"] = _iso(end)
        listed: list[ListedRequest] = []
        for body in await self._pages("/models/requests/by-endpoint", params):
            page = _parse(_RequestsPage, body)
            listed.extend(
                ListedRequest(
                    request_id=item.request_id,
                    endpoint=item.endpoint_id,
                    sent_at=item.sent_at,
                    input=item.json_input,
                    status_code=item.status_code,
                )
                for item in page.items
            )
        return listed

    async def billing_events(
        self,
        *,
        start: datetime,
        end: datetime | None = None,
        endpoints: Sequence[str] = (),
        tags: Mapping[str, str] | None = None,
    ) -> list[BillingEvent]:
        """Every billed request in `[start, end)`, with its tags."""
        params: dict[str, str | list[str]] = {"start": _iso(start), "source": "tagged-billed"}
        if end is not None:
            params["end"] = _iso(end)
        if endpoints:
            params["endpoint_id"] = ",".join(endpoints)
        if tags:
            params["tag"] = [f"{key}={value}" for key, value in tags.items()]
        events: list[BillingEvent] = []
        for body in await self._pages("/models/billing-events", params):
            events.extend(_parse(_BillingPage, body).billing_events)
        return events

    async def prices(self, endpoints: list[str]) -> dict[str, Price]:
        """The unit price of each endpoint fal knows (up to 50 per call)."""
        found: dict[str, Price] = {}
        for first in range(0, len(endpoints), 50):
            chunk = ",".join(endpoints[first : first + 50])
            for body in await self._pages("/models/pricing", {"endpoint_id": chunk}):
                for item in _list_of(body, "prices"):
                    price = Price(
                        endpoint=str(item["endpoint_id"]),
                        unit_price=float(item["unit_price"]),
                        unit=str(item.get("unit", "")),
                        currency=str(item.get("currency", "USD")),
                    )
                    found[price.endpoint] = price
        return found

    async def _pages(
        self, path: str, params: Mapping[str, str | list[str]]
    ) -> list[dict[str, Any]]:
        """Every page of a listing, following `next_cursor` while `has_more`."""
        pages: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(_MAX_PAGES):
            query = {**params, **({"cursor": cursor} if cursor else {})}
            body = await self._get(path, query)
            pages.append(body)
            cursor = body.get("next_cursor") if body.get("has_more") else None
            if not cursor:
                return pages
        raise ProviderError(f"GET {path}: more than {_MAX_PAGES} pages; narrow the window")

    async def _get(self, path: str, params: Mapping[str, str | list[str]]) -> dict[str, Any]:
        url = f"{self._base_url}{path}"
        try:
            response = await self._client.get(
                url, params=params, headers=self._headers, timeout=_TIMEOUT
            )
        except httpx.HTTPError as exc:
            raise ProviderError(f"GET {path}: {exc!r}") from exc
        if response.status_code == 429:
            raise RateLimited(
                f"GET {path}: rate limited", retry_after=retry_after(response.headers)
            )
        if not response.is_success:
            kind, message = _error_of(response)
            where = f"GET {path}: {response.status_code} {kind}: {message}"
            if 400 <= response.status_code < 500:
                raise Rejected(where, status_code=response.status_code, error_type=kind)
            raise ProviderError(where)
        try:
            body = response.json()
        except ValueError as exc:
            raise ProviderError(f"GET {path}: the answer is not JSON") from exc
        if not isinstance(body, dict):
            raise ProviderError(f"GET {path}: the answer is not a JSON object")
        return body


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


_Model = TypeVar("_Model", bound=BaseModel)


def _parse(model: type[_Model], body: dict[str, Any]) -> _Model:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise ProviderError(f"unexpected platform API answer: {exc}") from exc


def _list_of(body: dict[str, Any], name: str) -> list[dict[str, Any]]:
    items = body.get(name)
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ProviderError(f"unexpected platform API answer: no list {name!r}")
    return items


def _error_of(response: httpx.Response) -> tuple[str, str]:
    """(type, message) of a platform API error, `{"error": {"type", "message"}}`."""
    try:
        body = response.json()
    except ValueError:
        return "http_error", response.text[:200]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("type", "http_error")), str(error.get("message", ""))
    return "http_error", str(body)[:200]
