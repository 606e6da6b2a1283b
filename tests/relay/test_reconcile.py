"""Ambiguous submits settled from fal's own records (its request history), on the real
broker and the emulator: an arrived request is adopted, one that never arrived is re-posted
exactly once, with webhooks and without (polling only)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from genrelay.deploy.local.stack import StackInfo
from genrelay.emulator.server import EmulatorServer
from genrelay.schemas.ledger import LedgerRecord
from tests.relay.harness import (
    TopicReader,
    metric,
    produce,
    relay_settings,
    running,
    scrape,
    submit_record,
)

pytestmark = pytest.mark.integration

# Small enough for a test: fal must start a request within 6 s (time enough, on a busy
# machine, between the committed intent and the POST), and lists it within 2 s.
RECONCILING: dict[str, Any] = {
    "start_timeout_seconds": 6.0,
    "history_lag_seconds": 2.0,
    "clock_skew_seconds": 1.0,
    "poll_grace_seconds": 1.0,
}
WEBHOOKS = pytest.mark.parametrize("webhooks", [True, False], ids=["webhooks", "polling-only"])


def _settings(stack: StackInfo, emulator: EmulatorServer, webhooks: bool) -> Any:
    polling_only = {} if webhooks else {"public_webhook_url": None}
    return relay_settings(stack, emulator, **RECONCILING, **polling_only)


async def _one_event(stack: StackInfo, settings: Any, key: str) -> dict[str, Any]:
    async with running(settings):
        await produce(
            stack.kafka_bootstrap,
            settings.topic_requests,
            [(key.encode(), submit_record(key, key))],
        )
        async with TopicReader(stack.kafka_bootstrap, settings.topic_completions) as reader:
            await reader.until(lambda rs: len(rs) == 1, timeout=120)
        samples = await scrape(settings)
    event: dict[str, Any] = json.loads(reader.records[0].value)
    event["_samples"] = samples
    return event


async def _last_state(stack: StackInfo, settings: Any, key: str) -> LedgerRecord:
    async with TopicReader(stack.kafka_bootstrap, settings.topic_ledger) as ledger:
        await ledger.until(lambda rs: any(r.key == key.encode() for r in rs))
    states = [r.value for r in ledger.records if r.key == key.encode() and r.value]
    # Parsed as the relay reads it: fields at their defaults are not written.
    return LedgerRecord.model_validate_json(states[-1])


@WEBHOOKS
async def test_a_submit_reset_on_its_way_up_is_reposted_once_the_history_proves_it(
    stack: StackInfo, emulator: EmulatorServer, webhooks: bool
) -> None:
    # The connection dies before fal reads the submit: nothing arrived, nothing was paid,
    # and the relay cannot tell that from a lost answer. The history can.
    emulator.arm(reset_submits=1)
    settings = _settings(stack, emulator, webhooks)
    event = await _one_event(stack, settings, "reset")
    assert emulator.stats()["reset_submits"] == 1
    assert len(emulator.submissions()) == 1  # the re-post: the only submit that arrived
    assert event["status"] == "succeeded"
    assert event["attempts"] == 2
    state = await _last_state(stack, settings, "reset")
    assert state.proven_absent == 1
    assert not state.adopted
    samples = event["_samples"]
    assert metric(samples, "genrelay_reconciled_submits_total", outcome="reposted") == 1


@WEBHOOKS
async def test_a_lost_answer_the_history_lists_only_after_its_lag_is_adopted_never_reposted(
    stack: StackInfo, emulator: EmulatorServer, webhooks: bool
) -> None:
    # fal accepted and billed it; the answer was lost, its webhook too, and the history
    # lists it only 1.5 s later (within the 2 s the relay allows for).
    emulator.configure(history_lag_s=1.5)
    emulator.arm(drop_submit_responses=1, lose_webhooks=1)
    settings = _settings(stack, emulator, webhooks)
    event = await _one_event(stack, settings, "late")
    assert len(emulator.submissions()) == 1
    assert event["status"] == "succeeded"
    assert event["attempts"] == 1
    state = await _last_state(stack, settings, "late")
    assert state.adopted
    assert state.proven_absent == 0
    samples = event["_samples"]
    assert metric(samples, "genrelay_reconciled_submits_total", outcome="adopted") == 1
