"""Unit prices per endpoint, for the cost a completion event estimates.

Configured prices (`GENRELAY_PRICES`) win; otherwise fal's price list
(`GET /v1/models/pricing`, fal.ai/docs/platform-apis/v1/models/pricing) is asked once per
endpoint and kept for an hour. A price that cannot be learnt is no price (the event's cost
stays null), asked again a minute later: costs are reported, never in the way of a job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Protocol

from genrelay.consumer.errors import ProviderError
from genrelay.consumer.provider.fal_platform import Price

log = logging.getLogger(__name__)

_KEEP_S = 3600.0
_RETRY_S = 60.0


class PriceList(Protocol):
    async def prices(self, endpoints: list[str]) -> dict[str, Price]: ...


class Prices:
    def __init__(
        self,
        source: PriceList | None,
        configured: Mapping[str, float],
    ) -> None:
        self._source = source
        self._configured = dict(configured)
        self._known: dict[str, tuple[float | None, float]] = {}  # endpoint -> (price, until)

    async def unit_price(self, endpoint: str) -> float | None:
        """USD per billed unit of `endpoint`, or None when unknown."""
        if endpoint in self._configured:
            return self._configured[endpoint]
        now = time.monotonic()
        known = self._known.get(endpoint)
        if known is not None and now < known[1]:
            return known[0]
        price = await self._ask(endpoint)
        self._known[endpoint] = (price, now + (_KEEP_S if price is not None else _RETRY_S))
        return price

    async def _ask(self, endpoint: str) -> float | None:
        if self._source is None:
            return None
        try:
            found = await self._source.prices([endpoint])
        except ProviderError as exc:
            log.info("no price for %s: %s", endpoint, exc)
            return None
        price = found.get(endpoint)
        if price is None or price.currency.upper() != "USD":
            return None
        return price.unit_price
