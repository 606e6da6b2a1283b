"""Spend per tenant and period: a partition's totals move with its keys' charges, in the same
transaction; a grant not yet committed is held; other partitions count as last read."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from genrelay.consumer.ledger.spend import SpendBook
from genrelay.schemas.ledger import LedgerRecord, Phase

NOW = datetime(2026, 12, 5, tzinfo=UTC)
SHOP = ("shop", "2026-12")


def state(charged: float | None, tenant: str = "shop", period: str = "2026-12") -> LedgerRecord:
    return LedgerRecord(
        idempotency_key="k",
        phase=Phase.SUBMITTING,
        fingerprint="f",
        endpoint="fal-ai/flux/schnell",
        request={"tenant": tenant},
        charged_usd=charged,
        budget_period=period if charged is not None else None,
        accepted_at=NOW,
        updated_at=NOW,
    )


def test_a_charge_changes_the_partition_total_and_writes_it_with_the_state() -> None:
    book = SpendBook("kafka:9092", "t.spend")
    reserved = book.charge(state(None), state(0.25), partition=3)
    assert reserved is not None
    assert book.total(SHOP) == pytest.approx(0.25)
    (record,) = reserved.records
    assert (record.topic, record.partition, record.key) == ("t.spend", 3, b"2026-12\nshop")
    assert json.loads(record.value or b"")["usd"] == pytest.approx(0.25)
    settled = book.charge(state(0.25), state(0.1), partition=3)
    assert settled is not None
    assert book.total(SHOP) == pytest.approx(0.1)
    assert book.charge(state(0.1), state(0.1), partition=3) is None  # nothing changed
    # A commit that failed takes its change back.
    failed = book.charge(state(0.1), state(0.5), partition=3)
    assert failed is not None
    failed.undo()
    assert book.total(SHOP) == pytest.approx(0.1)


def test_a_grant_is_held_until_committed_and_other_partitions_count_as_last_known() -> None:
    book = SpendBook("kafka:9092", "t.spend")
    release = book.hold(SHOP, 0.5)
    assert book.total(SHOP) == pytest.approx(0.5)
    book.charge(None, state(0.5), partition=0)
    release()
    release()  # once only
    assert book.total(SHOP) == pytest.approx(0.5)
    book.release([0])  # another replica owns it now: its total, as last known, still counts
    assert book.total(SHOP) == pytest.approx(0.5)
    assert book.total(("other", "2026-12")) == 0.0
    assert book.total(("shop", "2026-11")) == 0.0
