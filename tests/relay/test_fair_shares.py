"""Fair shares on the real stack: a tenant that sends behind another's flood is served by its
share of the slots, not after the flood."""

from __future__ import annotations

import pytest

from genrelay.deploy.local.stack import StackInfo
from genrelay.emulator.server import EmulatorServer
from genrelay.emulator.settings import FixedLatency
from tests.relay.harness import produce, relay_settings, running, submit_record
from tests.waiting import eventually

pytestmark = pytest.mark.integration

FLOOD = 600
LATE = 20
SLOTS = 10


async def test_a_late_tenant_is_served_by_its_share_not_after_anothers_flood(
    stack: StackInfo, emulator: EmulatorServer
) -> None:
    emulator.configure(run_latency=FixedLatency(ms=300))
    settings = relay_settings(stack, emulator, max_in_flight=SLOTS)
    bulk = [
        (f"bulk-{n}".encode(), submit_record(f"bulk-{n}", f"bulk-{n}", tenant="bulk"))
        for n in range(FLOOD)
    ]
    shop = [
        (f"shop-{n}".encode(), submit_record(f"shop-{n}", f"shop-{n}", tenant="shop"))
        for n in range(LATE)
    ]
    async with running(settings) as relay:
        slots = relay.relay.slots
        await produce(stack.kafka_bootstrap, settings.topic_requests, bulk)
        # The whole flood is read and waiting for the ten slots before the shop sends.
        await eventually(
            lambda: slots.waiting_by_tenant().get("bulk", 0) + slots.used >= FLOOD - SLOTS * 3,
            timeout=120,
        )
        await produce(stack.kafka_bootstrap, settings.topic_requests, shop)

        def shop_posted() -> int:
            return len(emulator.submissions(input_contains="shop-"))

        await eventually(lambda: shop_posted() == LATE, timeout=120)
        bulk_before = len(emulator.submissions(input_contains="bulk-"))
        assert slots.shares() in ({"bulk": 0.5, "shop": 0.5}, {"bulk": 1.0})
    # In arrival order the shop would wait for all 600. By shares it takes the next free slots
    # until it holds half: its 20 are posted after about 10 + 2 x 20 more bulk ones (reading
    # its records takes a moment more on a busy machine; the bound leaves room for that).
    assert bulk_before < FLOOD // 2, bulk_before


async def test_under_saturation_posts_follow_the_tenants_weights(
    stack: StackInfo, emulator: EmulatorServer
) -> None:
    emulator.configure(run_latency=FixedLatency(ms=300))
    settings = relay_settings(stack, emulator, max_in_flight=SLOTS, tenant_weights={"gold": 3.0})
    # Enough of each that neither runs out within the window measured below.
    backlog = {"gold": 400, "silver": 200}
    keys = [
        (f"{t}-{n}", t) for n in range(max(backlog.values())) for t in backlog if n < backlog[t]
    ]
    records = [(key.encode(), submit_record(key, key, tenant=tenant)) for key, tenant in keys]
    async with running(settings):
        await produce(stack.kafka_bootstrap, settings.topic_requests, records)
        await eventually(lambda: len(emulator.submissions()) >= 280, timeout=180)
    posted = [s.input["prompt"].split("-")[0] for s in emulator.submissions()]
    # Past the first slots (granted while the backlog was still being read), every free slot
    # goes to whichever tenant holds fewer for its weight: 3 gold for each silver.
    window = posted[40:280]
    ratio = window.count("gold") / window.count("silver")
    assert 2.7 <= ratio <= 3.3, ratio
