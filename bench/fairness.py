"""Scenario 6: how long a tenant that sends behind another's flood waits for its slots.

The relay's own slot scheduler (`Slots`) runs under a simulated clock: a flood of `bulk`
requests queues first, then a few `shop` requests arrive; every job holds its slot for the
same run time. The shop's waits (arrival to slot) are measured twice in the same run: with
fair shares between tenants (as the relay runs), and in plain arrival order (the scheduler
given no tenants), which is what a tenant got before fair sharing.

The clock is simulated so the figure is the scheduler's alone, exact and repeatable; the
real-stack tests show the relay grants slots this way (tests/relay/test_fair_shares.py).
"""

from __future__ import annotations

import asyncio
import heapq
from dataclasses import dataclass
from typing import Any

from genrelay.bench.context import Bench
from genrelay.consumer.dispatch.slots import Slots
from genrelay.consumer.provider.provider import Priority


@dataclass(frozen=True)
class FloodPlan:
    flood: int = 5_000
    late: int = 50
    slots: int = 20  # the endpoint's limit, the only one that binds
    run_seconds: float = 0.2
    late_after_seconds: float = 1.0


async def fairness(bench: Bench) -> dict[str, Any]:
    plan = FloodPlan(flood=500 if bench.plan.smoke else 5_000)
    fair = await _late_waits(plan, tenants=True)
    fifo = await _late_waits(plan, tenants=False)
    # Holding its equal share (half the slots), the shop's last request starts after
    # late / (slots / 2) runs: the wait a fair scheduler is measured against.
    share_wait = plan.late / (plan.slots / 2) * plan.run_seconds
    return {
        "flood": plan.flood,
        "late": plan.late,
        "slots": plan.slots,
        "run_ms": plan.run_seconds * 1000,
        "fair_share_wait_ms": round(share_wait * 1000, 1),
        "fair": _summary(fair),
        "fifo": _summary(fifo),
    }


async def _late_waits(plan: FloodPlan, *, tenants: bool) -> list[float]:
    """The late tenant's waits (seconds), under the simulated clock."""
    slots = Slots(total=plan.slots * 10, per_endpoint=plan.slots)
    now = 0.0
    finishing: list[tuple[float, int, str]] = []  # (when, order, tenant) of running jobs
    waits: list[float] = []
    order = 0

    def arrive(tenant: str) -> asyncio.Task[None]:
        arrived = now

        async def run() -> None:
            nonlocal order
            await slots.acquire("e", Priority.NORMAL, tenant if tenants else None)
            if tenant == "shop":
                waits.append(now - arrived)
            order += 1
            heapq.heappush(finishing, (now + plan.run_seconds, order, tenant))

        return asyncio.create_task(run())

    tasks = [arrive("bulk") for _ in range(plan.flood)]
    await _settle()
    shop_due: float | None = plan.late_after_seconds
    while len(waits) < plan.late:
        if shop_due is not None and (not finishing or finishing[0][0] > shop_due):
            now, shop_due = shop_due, None
            tasks += [arrive("shop") for _ in range(plan.late)]
        else:
            now, _, tenant = heapq.heappop(finishing)
            slots.release("e", tenant if tenants else None)
        await _settle()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return waits


async def _settle() -> None:
    # Let every task a grant woke record its slot (each needs a turn of the loop).
    for _ in range(3):
        await asyncio.sleep(0)


def _summary(waits: list[float]) -> dict[str, float]:
    ordered = sorted(waits)

    def q(share: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000, 1)

    return {"p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": round(ordered[-1] * 1000, 1)}
