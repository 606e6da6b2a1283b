"""Spend caps on the real stack: a tenant's budget holds across replicas, refused keys are
never posted, and a budget raised at run time releases the keys waiting for it."""

from __future__ import annotations

import argparse
import json

import pytest

from genrelay.consumer.service.config import Settings
from genrelay.deploy.local.processes import free_port
from genrelay.deploy.local.stack import StackInfo
from genrelay.emulator.server import EmulatorServer
from genrelay.emulator.settings import FixedLatency
from genrelay.operations import budgets_cli
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

PRICE = 0.01  # USD per image of the endpoint, as GENRELAY_PRICES says
IN_FLIGHT = 2  # per replica: what another replica can reserve before this one sees it


async def _budget(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tenant: str, usd: float, when: str
) -> None:
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    parser = argparse.ArgumentParser()
    budgets_cli.add_arguments(parser)
    args = ["set", tenant, "--usd", str(usd), "--period", "day", "--when-exceeded", when]
    assert await budgets_cli.command(parser.parse_args(args)) == 0


def _posted(emulator: EmulatorServer, prefix: str) -> int:
    return len(emulator.submissions(input_contains=prefix))


async def test_a_budget_holds_across_replicas_and_refused_keys_are_never_paid(
    stack: StackInfo, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator.configure(run_latency=FixedLatency(ms=200))
    first = relay_settings(
        stack,
        emulator,
        instance_id="first",
        max_in_flight=IN_FLIGHT,
        prices={"fal-ai/flux/schnell": PRICE},
    )
    replicas = [first, *(_another(first, name) for name in ("second", "third"))]
    allowed = 5
    keys = [f"capped-{n}" for n in range(16)]
    async with running(replicas[0]) as a, running(replicas[1]) as b, running(replicas[2]) as c:
        relays = (a.relay, b.relay, c.relay)
        await eventually(lambda: all(r.ownership.all_ready() for r in relays), timeout=60)
        # Each owns one of the three partitions: the tenant's keys spread over all of them.
        await eventually(lambda: all(len(r.ownership.owned()) == 1 for r in relays), timeout=60)
        await _budget(first, monkeypatch, "capped", allowed * PRICE, "fail")
        records = [(k.encode(), submit_record(k, k, tenant="capped")) for k in keys]
        await produce(stack.kafka_bootstrap, first.topic_requests, records)
        async with TopicReader(stack.kafka_bootstrap, first.topic_completions) as reader:
            await reader.until(lambda rs: len(completions_by_key(rs)) == len(keys), timeout=120)
    events = {key: found[0] for key, found in completions_by_key(reader.records).items()}
    posted = _posted(emulator, "capped-")
    # The documented bound: what the other replicas reserve before one has read it (at most
    # their slots).
    assert allowed <= posted <= allowed + (len(replicas) - 1) * IN_FLIGHT, posted
    succeeded = [k for k, e in events.items() if e["status"] == "succeeded"]
    refused = [
        k for k, e in events.items() if e["error"] and e["error"]["type"] == "budget_exceeded"
    ]
    assert len(succeeded) == posted
    assert len(refused) == len(keys) - posted
    # A refused key was never posted: the emulator never saw its input.
    assert all(_posted(emulator, f'{key}"') == 0 for key in refused)
    assert all(events[key]["attempts"] == 0 for key in refused)


def _another(settings: Settings, name: str) -> Settings:
    port = free_port()
    update = {
        "http_port": port,
        "admin_port": free_port(),
        "public_webhook_url": f"http://127.0.0.1:{port}",
        "instance_id": name,
    }
    return settings.model_copy(update=update)


async def test_a_raised_budget_releases_the_keys_waiting_for_it(
    stack: StackInfo, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = relay_settings(stack, emulator, prices={"fal-ai/flux/schnell": PRICE})
    keys = [f"patient-{n}" for n in range(4)]
    async with running(settings) as live:
        await _budget(settings, monkeypatch, "patient", 2 * PRICE, "wait")
        await eventually(lambda: live.relay.budgets.of("patient") is not None)
        records = [(k.encode(), submit_record(k, k, tenant="patient")) for k in keys]
        await produce(stack.kafka_bootstrap, settings.topic_requests, records)
        await eventually(lambda: live.relay.jobs.waiting_for_budget() == {"patient": 2}, timeout=60)
        # The two that fit were committed before the others were refused; their POSTs follow.
        await eventually(lambda: _posted(emulator, "patient-") == 2, timeout=60)
        assert live.relay.jobs.waiting_for_budget() == {"patient": 2}

        await _budget(settings, monkeypatch, "patient", 4 * PRICE, "wait")
        async with TopicReader(stack.kafka_bootstrap, settings.topic_completions) as reader:
            await reader.until(lambda rs: len(completions_by_key(rs)) == len(keys), timeout=60)
    statuses = {json.loads(r.value)["status"] for r in reader.records}
    assert statuses == {"succeeded"}
    assert _posted(emulator, "patient-") == 4
