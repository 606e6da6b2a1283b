"""Spend caps: a tenant's budget (`genrelay.budgets`) and each partition's spend against it
(`genrelay.spend`). Both topics are compacted.

- A budget is keyed by tenant; a tombstone removes it. `genrelay budgets set` writes them, and
  every replica follows the topic, so a change takes effect without a restart.
- A spend record is keyed by tenant and period, on the partition whose keys spent it. The
  replica that owns the partition writes it in the same transaction as the ledger states that
  change it, so it is fenced like them; every replica reads the others' partitions.
"""

from datetime import datetime
from typing import Literal

from pydantic import Field, NonNegativeFloat, NonNegativeInt

from genrelay.schemas.base import Record
from genrelay.schemas.fields import NonEmptyStr, UtcDatetime

Period = Literal["day", "month"]
WhenExceeded = Literal["wait", "fail"]


class BudgetRecord(Record):
    """What one tenant may spend per period, and what a request that does not fit does."""

    schema_version: Literal[1] = 1
    tenant: str = Field(description='requests with this `tenant` ("": those without one)')
    usd: NonNegativeFloat
    period: Period = "month"
    when_exceeded: WhenExceeded = Field(
        default="fail",
        description="`fail`: end `budget_exceeded` unpaid; `wait`: wait until it fits",
    )
    set_at: UtcDatetime


class SpendRecord(Record):
    """One partition's spend for one tenant in one period (reserved or billed, in USD)."""

    schema_version: Literal[1] = 1
    tenant: str
    period_start: NonEmptyStr = Field(description="`2026-12-05` (a day) or `2026-12` (a month)")
    partition: NonNegativeInt
    usd: float
    updated_at: UtcDatetime


def period_start(period: Period, now: datetime) -> str:
    """The period `now` falls in (UTC), as spend records name it."""
    return now.strftime("%Y-%m-%d" if period == "day" else "%Y-%m")


def spend_key(tenant: str, start: str) -> bytes:
    return f"{start}\n{tenant}".encode()
