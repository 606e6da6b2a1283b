"""What each key cost, from the provider's own figures: the completion event carries the
units fal billed (X-Fal-Billable-Units) and their estimated cost at fal's listed price, and
both match what fal's billing reports for the key's request."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from genrelay.consumer.provider.fal_platform import BillingEvent, FalPlatform
from genrelay.deploy.local.stack import StackInfo
from genrelay.emulator.server import EmulatorServer
from tests.relay.harness import (
    TopicReader,
    metric,
    produce,
    relay_settings,
    running,
    scrape,
    submit_record,
)
from tests.waiting import eventually

pytestmark = pytest.mark.integration

FLUX = "fal-ai/flux/schnell"
KEYS = [f"cost-{n}" for n in range(4)]


@pytest.mark.parametrize("webhooks", [True, False], ids=["webhooks", "polling-only"])
async def test_each_event_carries_the_units_and_cost_fal_billed_for_its_key(
    stack: StackInfo, emulator: EmulatorServer, webhooks: bool
) -> None:
    since = datetime.now(UTC) - timedelta(minutes=1)
    emulator.configure(unit_prices={FLUX: 0.0045})
    polling_only = {} if webhooks else {"public_webhook_url": None}
    settings = relay_settings(stack, emulator, poll_grace_seconds=0.5, **polling_only)
    records = [(key.encode(), submit_record(key, key, tenant="growth")) for key in KEYS]
    async with running(settings):
        await produce(stack.kafka_bootstrap, settings.topic_requests, records)
        async with TopicReader(stack.kafka_bootstrap, settings.topic_completions) as reader:
            await reader.until(lambda rs: len(rs) == len(KEYS))
        samples = await scrape(settings)
    events = [json.loads(r.value) for r in reader.records]
    async with FalPlatform("emulator-key", base_url=f"{emulator.base_url}/v1") as fal:
        billed: list[BillingEvent] = []

        async def all_billed() -> bool:
            billed[:] = await fal.billing_events(start=since)
            return len(billed) >= len(KEYS)

        await eventually(all_billed, timeout=30)
    by_request = {row.request_id: row for row in billed}
    for event in events:
        row = by_request[event["request_id"]]
        assert event["status"] == "succeeded"
        assert event["cost_units"] == row.units
        assert event["cost_usd"] == pytest.approx(row.cost_usd)
        assert event["cost_source"] == "estimate"
        assert row.tags["tenant"] == "growth"
        assert row.tags["gr.attempt"] == "1"
    total = sum(row.cost_usd or 0.0 for row in billed)
    spent = metric(samples, "genrelay_spend_usd_total", tenant="growth", endpoint=FLUX)
    assert spent == pytest.approx(total)


async def _all_billed(fal: FalPlatform, since: datetime, count: int) -> list[BillingEvent] | None:
    found = await fal.billing_events(start=since)
    return found if len(found) >= count else None
