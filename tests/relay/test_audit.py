"""`genrelay audit` over a real run: fal's billing (the emulator's) against the completions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from genrelay.consumer.service.config import Settings
from genrelay.consumer.steps import key_hash
from genrelay.deploy.local.stack import StackInfo
from genrelay.emulator.server import EmulatorServer
from genrelay.operations import audit_cli
from genrelay.producers.kafka import read_topic
from tests.relay.harness import TopicReader, produce, relay_settings, running, submit_record
from tests.waiting import eventually

pytestmark = pytest.mark.integration

KEYS = [f"audit-{n}" for n in range(3)]


async def _audit(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, out: Path, *extra: str
) -> int:
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    parser = argparse.ArgumentParser()
    audit_cli.add_arguments(parser)
    window = ["--hours", "1", "--billing-lag-minutes", "0", "--json", str(out), *extra]
    return await audit_cli.command(parser.parse_args(window))


def _costs(records: list[Any]) -> dict[str, dict[str, Any]]:
    """The latest cost record of each key (as compaction will keep it)."""
    return {r.key.decode(): json.loads(r.value) for r in records if r.value}


async def _paid_around_genrelay(emulator: EmulatorServer, tags: str | None) -> None:
    headers = {"Authorization": "Key emulator-key", **({"X-Fal-Tags": tags} if tags else {})}
    async with httpx.AsyncClient(base_url=emulator.base_url, headers=headers) as fal:
        answer = await fal.post("/fal-ai/flux/schnell", json={"prompt": "around"})
        status_url = answer.json()["status_url"]

        async def done() -> bool:
            return (await fal.get(status_url)).status_code == 200

        await eventually(done)


async def test_the_audit_finds_no_double_charge_then_exactly_the_one_provoked(
    stack: StackInfo,
    emulator: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    settings = relay_settings(stack, emulator)
    records = [(key.encode(), submit_record(key, key, tenant="ops")) for key in KEYS]
    async with running(settings):
        await produce(stack.kafka_bootstrap, settings.topic_requests, records)
        async with TopicReader(stack.kafka_bootstrap, settings.topic_completions) as reader:
            await reader.until(lambda rs: len(rs) == len(KEYS))
    events = {json.loads(r.value)["idempotency_key"]: json.loads(r.value) for r in reader.records}
    clean = tmp_path / "clean.json"
    assert await _audit(settings, monkeypatch, clean, "--publish-costs") == 0
    report = json.loads(clean.read_text())
    assert report["double_charges"] == {}
    assert report["keys_billed"] == len(KEYS)
    assert report["orphans"] == []
    assert report["unbilled"] == {}
    assert report["spend_by_tenant"]["ops"] == pytest.approx(report["spend_usd"])
    # What fal billed each key, beside the estimate its completion event carried.
    costs = _costs(await read_topic(stack.kafka_bootstrap, settings.topic_costs))
    assert set(costs) == set(KEYS)
    for key, cost in costs.items():
        assert len(cost["request_ids"]) == 1
        assert cost["request_ids"] == [events[key]["request_id"]]
        assert cost["tenant"] == "ops"
        assert cost["cost_usd"] > 0
        assert cost["cost_usd"] == pytest.approx(events[key]["cost_usd"])
        assert cost["billed_units"] == events[key]["cost_units"]
    assert sum(c["cost_usd"] for c in costs.values()) == pytest.approx(report["spend_usd"])

    # A second POST for one key, sent around genrelay with its tags; and one with none.
    await _paid_around_genrelay(emulator, f"gr.key={key_hash(KEYS[0])},gr.attempt=1")
    await _paid_around_genrelay(emulator, None)
    provoked = tmp_path / "provoked.json"
    assert await _audit(settings, monkeypatch, provoked) == 1
    report = json.loads(provoked.read_text())
    assert list(report["double_charges"]) == [KEYS[0]]
    assert len(report["double_charges"][KEYS[0]]) == 2
    assert len(report["orphans"]) == 1
    # Published again, the double-charged key's record counts both of its requests.
    assert await _audit(settings, monkeypatch, provoked, "--publish-costs") == 1
    costs = _costs(await read_topic(stack.kafka_bootstrap, settings.topic_costs))
    assert len(costs[KEYS[0]]["request_ids"]) == 2
    assert costs[KEYS[0]]["cost_usd"] == pytest.approx(2 * costs[KEYS[1]]["cost_usd"])
