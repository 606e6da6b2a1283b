"""A webhook URL that leaks (a proxy's log) cannot make a key adopt another fal account's
request: only requests our account knows are adopted, and a pinned account refuses the rest."""

from __future__ import annotations

import json

import httpx
import pytest

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

ATTACKER_KEY = "someone-elses-key"


async def _lost_submit_then_a_foreign_job_on_its_url(emulator: EmulatorServer) -> str:
    """Our submit's answer and webhook are lost (the key is UNKNOWN); then another account
    sends its own job to our key's webhook URL. Returns that job's request id."""
    await eventually(lambda: emulator.stats()["webhooks_lost"] == 1, timeout=60)
    (ours,) = emulator.submissions()
    assert ours.webhook_url is not None
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            f"{emulator.base_url}/fal-ai/flux/schnell",
            params={"fal_webhook": ours.webhook_url},
            json={"prompt": "not yours", "image_size": {"width": 64, "height": 64}},
            headers={"Authorization": f"Key {ATTACKER_KEY}"},
        )
    answer.raise_for_status()
    request_id: str = answer.json()["request_id"]
    return request_id


async def test_another_accounts_job_sent_to_our_url_is_never_adopted(
    stack: StackInfo, emulator: EmulatorServer
) -> None:
    emulator.configure(accounts={ATTACKER_KEY: "someone-else"})
    emulator.arm(drop_submit_responses=1, lose_webhooks=1)
    # Not reconciled from the request history, which would adopt its own request at once:
    # only a webhook can name a request here.
    settings = relay_settings(
        stack, emulator, unknown_grace_seconds=3.0, reconcile_from_history=False
    )
    async with running(settings):
        await produce(
            stack.kafka_bootstrap, settings.topic_requests, [(b"mine", submit_record("mine", "x"))]
        )
        theirs = await _lost_submit_then_a_foreign_job_on_its_url(emulator)
        async with TopicReader(stack.kafka_bootstrap, settings.topic_completions) as reader:
            await reader.until(lambda rs: len(rs) == 1)
        samples = await scrape(settings)
    event = json.loads(reader.records[0].value)
    # Adopting it would have announced someone else's output as this key's.
    assert event["request_id"] != theirs
    assert event["status"] == "failed"
    assert event["error"]["type"] == "submit_unknown"
    assert metric(samples, "genrelay_foreign_webhooks_total") == 1


async def test_with_the_account_pinned_another_accounts_webhook_is_refused_at_the_door(
    stack: StackInfo, emulator: EmulatorServer
) -> None:
    emulator.configure(accounts={ATTACKER_KEY: "someone-else"})
    emulator.arm(drop_submit_responses=1, lose_webhooks=1)
    settings = relay_settings(
        stack,
        emulator,
        unknown_grace_seconds=3.0,
        fal_user_id="emulator-user",
        reconcile_from_history=False,
    )
    async with running(settings) as relay:
        await produce(
            stack.kafka_bootstrap, settings.topic_requests, [(b"mine", submit_record("mine", "x"))]
        )
        await _lost_submit_then_a_foreign_job_on_its_url(emulator)
        receiver = relay.relay.receiver
        assert receiver is not None
        await eventually(lambda: receiver.refused.get("foreign_account", 0) >= 1, timeout=60)
        async with TopicReader(stack.kafka_bootstrap, settings.topic_completions) as reader:
            await reader.until(lambda rs: len(rs) == 1)
    event = json.loads(reader.records[0].value)
    assert event["error"]["type"] == "submit_unknown"
