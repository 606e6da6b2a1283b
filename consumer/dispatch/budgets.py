"""Spend caps per tenant: whether a key's estimated cost fits its tenant's budget, now.

Budgets come from the compacted `genrelay.budgets` topic (`genrelay budgets set`), which every
replica follows, so a change takes effect without a restart. A key's estimate is its
endpoint's unit price (`Prices`: `GENRELAY_PRICES`, else fal's price list) times the units it
asks for (`num_images`, else one). Spend is every replica's (`SpendBook`). The verdict is a
fact the lifecycle decides on (`SlotGranted.budget`): post and reserve, wait, or fail.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from genrelay.consumer import lifecycle as lc
from genrelay.consumer.ledger.spend import SpendBook, follow_topic
from genrelay.consumer.provider.prices import Prices
from genrelay.schemas.base import from_json_bytes
from genrelay.schemas.budgets import BudgetRecord, period_start
from genrelay.schemas.ledger import LedgerRecord

log = logging.getLogger(__name__)


class Budgets:
    """The budgets in force and the verdicts they give."""

    def __init__(self, bootstrap: str, topic: str, spend: SpendBook, prices: Prices) -> None:
        self._bootstrap = bootstrap
        self.topic = topic
        self.spend = spend
        self._prices = prices
        self._book: dict[str, BudgetRecord] = {}
        self.on_change: Callable[[str], None] = lambda tenant: None
        self.caught_up = asyncio.Event()

    def of(self, tenant: str) -> BudgetRecord | None:
        return self._book.get(tenant)

    def all(self) -> dict[str, BudgetRecord]:
        return dict(self._book)

    def set(self, budget: BudgetRecord) -> None:
        self._book[budget.tenant] = budget
        self.on_change(budget.tenant)

    def remove(self, tenant: str) -> None:
        if self._book.pop(tenant, None) is not None:
            self.on_change(tenant)

    async def verdict(self, record: LedgerRecord, now: datetime) -> lc.BudgetVerdict | None:
        """None when the key's tenant has no budget."""
        # Nothing is posted before every replica's budgets and spend were read once.
        await self.caught_up.wait()
        await self.spend.caught_up.wait()
        tenant = record.request.tenant or ""
        budget = self._book.get(tenant)
        if budget is None:
            return None
        price = await self._prices.unit_price(record.endpoint)
        # Read after the price (which may wait for fal): as late as possible before the hold.
        start = period_start(budget.period, now)
        spent = self.spend.total((tenant, start))
        if price is None:
            # Without a price nothing can be reserved, so nothing may be posted.
            log.warning(
                "no price known for %s: its keys cannot be fitted to a budget", record.endpoint
            )
            return lc.BudgetVerdict(
                False, 0.0, start, budget.when_exceeded, budget.usd, spent, unpriced=True
            )
        estimate = round(price * _units(record.request.input), 9)
        fits = spent + estimate <= budget.usd + 1e-9
        return lc.BudgetVerdict(fits, estimate, start, budget.when_exceeded, budget.usd, spent)

    def period_spend(self, now: datetime | None = None) -> dict[str, tuple[float, float]]:
        """Each budgeted tenant's spend in its current period, and its budget (USD)."""
        moment = now or datetime.now(UTC)
        return {
            tenant: (self.spend.total((tenant, period_start(b.period, moment))), b.usd)
            for tenant, b in self._book.items()
        }

    async def follow(self) -> None:
        """Keep the budgets up to date, until cancelled (`caught_up` is set once every budget
        set before the start was read)."""
        await follow_topic(self._bootstrap, self.topic, self._read, self.caught_up)

    def _read(self, partition: int, key: bytes | None, value: bytes | None) -> None:
        if value is None:
            if key is not None:
                self.remove(key.decode())
            return
        try:
            self.set(from_json_bytes(BudgetRecord, value))
        except ValidationError:
            log.warning("an unreadable budget record was skipped")


def _units(request_input: Any) -> int:
    """The output units a request asks for: fal bills images and videos per output."""
    if isinstance(request_input, dict):
        asked = request_input.get("num_images")
        if isinstance(asked, int) and asked > 0:
            return asked
    return 1
