"""A rebalance costs no payment: the callbacks return at once, a large ledger partition is
restored in the background while the group stays stable, and a partition that stays assigned
is not read again."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest

from genrelay.bench.restore import fill, record_template
from genrelay.consumer.service.config import Settings
from genrelay.consumer.service.relay import Relay
from genrelay.deploy.local.processes import free_port
from genrelay.deploy.local.stack import StackInfo
from genrelay.emulator.server import EmulatorServer
from genrelay.emulator.settings import EmulatorSettings
from tests.relay.harness import (
    TopicReader,
    completions_by_key,
    produce,
    relay_settings,
    running,
    submit_record,
)
from tests.waiting import eventually

pytestmark = pytest.mark.integration

LEDGER_RECORDS = 100_000
JOBS = 40


@pytest.fixture
async def emulator() -> AsyncIterator[EmulatorServer]:
    async with EmulatorServer(EmulatorSettings()) as server:
        yield server


@contextlib.asynccontextmanager
async def _started(settings: Settings) -> AsyncIterator[Relay]:
    """A relay running in the background; unlike `running`, it does not wait to be ready."""
    async with Relay(settings) as relay:
        task = asyncio.get_running_loop().create_task(relay.run())
        try:
            yield relay
        finally:
            relay.stop()
            await task


@pytest.mark.timeout(420)
async def test_a_replica_joining_beside_a_large_ledger_is_never_expelled_and_pays_once(
    stack: StackInfo, emulator: EmulatorServer
) -> None:
    first = relay_settings(
        stack, emulator, partitions=2, session_timeout_ms=6000, instance_id="first"
    )
    port = free_port()
    second = first.model_copy(
        update={
            "http_port": port,
            "admin_port": free_port(),
            "public_webhook_url": f"http://127.0.0.1:{port}",
            "instance_id": "second",
        }
    )
    keys = [f"rebalance-{n}" for n in range(JOBS)]
    async with running(first) as a:
        # Both ledger partitions grow large behind the first replica's back (finished keys
        # nobody asks for again): whichever one moves, its new owner has to read it all.
        template = record_template()
        for partition in (0, 1):
            await fill(
                stack.kafka_bootstrap,
                first.topic_ledger,
                template,
                f"old-{partition}",
                LEDGER_RECORDS,
                partition=partition,
            )
        async with _started(second) as b:
            await eventually(lambda: bool(b.ownership.restoring()), timeout=120)
            async with httpx.AsyncClient() as http:
                ready = await http.get(f"http://127.0.0.1:{port}/readyz")
            assert ready.status_code == 503, ready.text
            assert ready.json()["restoring"], ready.text
            await produce(
                stack.kafka_bootstrap,
                first.topic_requests,
                [(k.encode(), submit_record(k, k)) for k in keys],
            )
            async with TopicReader(stack.kafka_bootstrap, first.topic_completions) as reader:
                await reader.until(lambda rs: len(completions_by_key(rs)) == JOBS, timeout=300)
            await eventually(b.ownership.all_ready, timeout=120)
            b_rebalances = b.ownership.rebalances
            b_restore = b.ownership.last_restore
        a_rebalances = a.relay.ownership.rebalances
        a_restore = a.relay.ownership.last_restore

    # Nobody was expelled: the first replica saw its own join and the second's, no more, and
    # the second joined once (an expelled member rejoins and rebalances everyone again).
    assert b_rebalances == 1
    assert a_rebalances == 2
    assert b_restore is not None
    assert b_restore.records_read >= LEDGER_RECORDS
    # The partition the first replica kept was not read again.
    assert a_restore is not None
    assert a_restore.records_read < LEDGER_RECORDS
    paid = Counter(s.input["prompt"] for s in emulator.submissions())
    assert paid == Counter({k: 1 for k in keys})
    for events in completions_by_key(reader.records).values():
        assert len({e["event_id"] for e in events}) == 1
