"""`genrelay inspect KEY` shows a key's whole story, whichever replica wrote it."""

from __future__ import annotations

import argparse

import httpx
import pytest

from genrelay.deploy.local.stack import StackInfo
from genrelay.emulator.server import EmulatorServer
from genrelay.emulator.settings import FixedLatency
from genrelay.operations import inspect_cli
from genrelay.operations.key_history import key_history
from tests.relay.harness import TopicReader, produce, relay_settings, running, submit_record
from tests.waiting import eventually

pytestmark = pytest.mark.integration


async def test_the_history_of_a_key_that_crossed_a_restart(
    stack: StackInfo,
    emulator: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    emulator.configure(run_latency=FixedLatency(ms=4000))
    settings = relay_settings(stack, emulator, poll_grace_seconds=0.5)
    record = (b"traced", submit_record("traced", "traced", tenant="ops"))
    async with running(settings) as first:
        await produce(stack.kafka_bootstrap, settings.topic_requests, [record])
        await eventually(lambda: len(emulator.submissions()) == 1)
        relay = first.relay
        await eventually(lambda: relay.jobs.active == 1)
    # The first replica stopped with the key submitted; the next one finishes it.
    async with (
        running(settings),
        TopicReader(stack.kafka_bootstrap, settings.topic_completions) as reader,
    ):
        await reader.until(lambda rs: len(rs) == 1)

    history = await key_history(
        stack.kafka_bootstrap,
        settings.topic_ledger,
        settings.topic_completions,
        "traced",
    )
    phases = [state.phase.value for state in history.states]
    assert phases[0] == "SUBMITTING"
    assert "SUBMITTED" in phases
    assert phases[-1] == "COMPLETED"
    assert len(history.events) == 1
    assert history.events[0].status == "succeeded"
    assert history.trace_id is not None
    assert len(emulator.submissions()) == 1

    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    args = argparse.Namespace(key="traced", bootstrap=None, json=False)
    assert await inspect_cli.command(args) == 0
    text = capsys.readouterr().out
    assert "COMPLETED" in text
    assert "stored s3://" in text
    missing = argparse.Namespace(key="never-sent", bootstrap=None, json=True)
    assert await inspect_cli.command(missing) == 1


async def test_the_admin_pages_show_a_key_and_the_dead_letters(
    stack: StackInfo, emulator: EmulatorServer
) -> None:
    settings = relay_settings(stack, emulator)
    good = (b"order-7/<hero>", submit_record("order-7/<hero>", "x"))
    async with running(settings) as running_relay:
        await produce(stack.kafka_bootstrap, settings.topic_requests, [good, (b"bad", b"{no")])
        async with TopicReader(stack.kafka_bootstrap, settings.topic_completions) as reader:
            await reader.until(lambda rs: len(rs) == 1)
        admin = f"http://127.0.0.1:{running_relay.relay.admin_port}"
        as_json = {"accept": "application/json"}
        async with httpx.AsyncClient(base_url=admin, timeout=30) as client:
            page = await client.get("/keys/order-7/<hero>", headers=as_json)
            assert page.status_code == 200
            history = page.json()
            assert [s["phase"] for s in history["states"]][-1] == "COMPLETED"
            assert history["events"][0]["status"] == "succeeded"
            assert history["trace_id"]
            shown = await client.get("/keys/order-7/<hero>")
            assert shown.headers["content-type"].startswith("text/html")
            assert "order-7/&lt;hero&gt;" in shown.text  # what producers sent is escaped
            assert "<hero>" not in shown.text
            assert (await client.get("/keys/never-sent", headers=as_json)).status_code == 404

            async def dead_letters() -> dict[str, int]:
                answer = await client.get("/dead-letters", headers=as_json)
                assert answer.status_code == 200
                counts: dict[str, int] = answer.json()["counts"]
                return counts

            async def dead_lettered() -> bool:
                return bool(await dead_letters())

            await eventually(dead_lettered, timeout=60, interval=0.5)
            counts = await dead_letters()
            assert sum(counts.values()) == 1
            listed = (await client.get("/dead-letters")).text
            assert next(iter(counts)) in listed
