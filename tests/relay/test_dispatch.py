"""Dispatch rules: what is retried, what is reconciled, cancels, re-keying and priorities."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from genrelay.consumer.ledger.ledger import Ledger
from genrelay.deploy.local.stack import StackInfo
from genrelay.emulator.server import EmulatorServer
from genrelay.emulator.settings import FixedLatency
from genrelay.schemas.ledger import LedgerRecord, Phase
from tests.relay.harness import (
    TopicReader,
    completions_by_key,
    owned_partitions,
    produce,
    relay_settings,
    running,
    submit_record,
)
from tests.waiting import eventually

pytestmark = pytest.mark.integration


def _ledger_states(records: list[object], key: str) -> list[dict[str, object]]:
    return [
        json.loads(r.value)  # type: ignore[attr-defined]
        for r in records
        if r.key == key.encode() and r.value  # type: ignore[attr-defined]
    ]


async def test_429s_are_retried_with_backoff_and_pay_once(
    stack: StackInfo, emulator: EmulatorServer
) -> None:
    emulator.arm(reject_submits=3)
    settings = relay_settings(stack, emulator)
    async with running(settings):
        await produce(
            stack.kafka_bootstrap, settings.topic_requests, [(b"r429", submit_record("r429", "x"))]
        )
        async with TopicReader(stack.kafka_bootstrap, settings.topic_completions) as reader:
            await reader.until(lambda rs: len(rs) == 1)
    assert emulator.stats()["rejected_submits"] == 3
    assert len(emulator.submissions()) == 1
    event = json.loads(reader.records[0].value)
    assert event["status"] == "succeeded"
    assert event["attempts"] == 4  # three refused (never sent) and the one that was paid


async def test_lost_submit_response_is_adopted_from_the_webhook_never_reposted(
    stack: StackInfo, emulator: EmulatorServer
) -> None:
    # The provider accepts and bills the request, then the connection dies before the answer.
    emulator.arm(drop_submit_responses=1)
    settings = relay_settings(stack, emulator, unknown_grace_seconds=120.0)
    async with running(settings):
        await produce(
            stack.kafka_bootstrap, settings.topic_requests, [(b"cut", submit_record("cut", "x"))]
        )
        async with TopicReader(stack.kafka_bootstrap, settings.topic_completions) as reader:
            await reader.until(lambda rs: len(rs) == 1)
    assert json.loads(reader.records[0].value)["status"] == "succeeded"
    assert len(emulator.submissions()) == 1
    async with TopicReader(stack.kafka_bootstrap, settings.topic_ledger) as ledger:
        await ledger.until(lambda rs: any(s.get("adopted") for s in _ledger_states(rs, "cut")))
    phases = [s["phase"] for s in _ledger_states(ledger.records, "cut")]
    # A slot was free: the key went straight to SUBMITTING (ACCEPTED is for keys that wait).
    assert phases[:2] == ["SUBMITTING", "UNKNOWN"]


async def test_a_gateway_504_after_forwarding_is_ambiguous_and_never_reposted(
    stack: StackInfo, emulator: EmulatorServer
) -> None:
    # fal accepted and billed the request; the proxy in front answered 504 without
    # x-fal-request-id. Treating that as "never sent" would post (and pay) it again.
    emulator.arm(gateway_error_submits=1)
    settings = relay_settings(stack, emulator, unknown_grace_seconds=120.0)
    async with running(settings):
        await produce(
            stack.kafka_bootstrap, settings.topic_requests, [(b"g504", submit_record("g504", "x"))]
        )
        async with TopicReader(stack.kafka_bootstrap, settings.topic_completions) as reader:
            await reader.until(lambda rs: len(rs) == 1)
    assert emulator.stats()["gateway_error_submit_responses"] == 1
    assert len(emulator.submissions()) == 1
    event = json.loads(reader.records[0].value)
    assert event["status"] == "succeeded"
    assert event["attempts"] == 1


async def test_cancel_command_cancels_at_the_provider_and_ends_the_key_cancelled(
    stack: StackInfo, emulator: EmulatorServer
) -> None:
    emulator.configure(run_latency=FixedLatency(ms=60_000))
    settings = relay_settings(stack, emulator, poll_grace_seconds=0.5)
    cancel = json.dumps({"schema_version": 1, "action": "cancel", "idempotency_key": "stop-me"})
    async with running(settings) as relay:
        await produce(
            stack.kafka_bootstrap,
            settings.topic_requests,
            [(b"stop-me", submit_record("stop-me", "x"))],
        )
        await eventually(lambda: _phase(relay.relay.ledger.get("stop-me")) is Phase.SUBMITTED)
        await produce(
            stack.kafka_bootstrap, settings.topic_requests, [(b"stop-me", cancel.encode())]
        )
        async with TopicReader(stack.kafka_bootstrap, settings.topic_completions) as reader:
            await reader.until(lambda rs: len(rs) == 1, timeout=60)
    event = json.loads(reader.records[0].value)
    assert event["status"] == "cancelled"
    assert event["error"]["type"] == "client_cancelled"
    assert emulator.stats()["cancel_requests"] == 1
    assert len(emulator.submissions()) == 1


async def test_records_keyed_otherwise_or_from_team_topics_are_rekeyed_and_paid_once(
    stack: StackInfo, emulator: EmulatorServer
) -> None:
    settings = relay_settings(stack, emulator)
    team_topic = f"{settings.topic_requests}.team-a"
    settings = settings.model_copy(update={"extra_input_topics": [team_topic]})
    await _create_topic(stack, team_topic, partitions=2)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
    async with running(settings):
        await producer.start()
        try:
            await producer.send_and_wait(
                settings.topic_requests, submit_record("wrong-key", "a"), key=b"zzz"
            )
            await producer.send_and_wait(settings.topic_requests, submit_record("no-key", "b"))
            await producer.send_and_wait(team_topic, submit_record("from-team", "c"), key=b"t")
            await producer.send_and_wait(team_topic, submit_record("from-team", "c"), key=b"t")
        finally:
            await producer.stop()
        async with TopicReader(stack.kafka_bootstrap, settings.topic_completions) as reader:
            await reader.until(lambda rs: len(completions_by_key(rs)) == 3)
    assert set(completions_by_key(reader.records)) == {"wrong-key", "no-key", "from-team"}
    assert sorted(s.input["prompt"] for s in emulator.submissions()) == ["a", "b", "c"]


async def test_normal_work_overtakes_low_priority_work_when_slots_are_full(
    stack: StackInfo, emulator: EmulatorServer
) -> None:
    emulator.configure(run_latency=FixedLatency(ms=300))
    settings = relay_settings(stack, emulator, partitions=1, max_in_flight=2)
    lows = [
        (f"low-{n}".encode(), submit_record(f"low-{n}", f"low-{n}", priority="low"))
        for n in range(10)
    ]
    normals = [(f"hi-{n}".encode(), submit_record(f"hi-{n}", f"hi-{n}")) for n in range(3)]
    async with running(settings):
        await produce(stack.kafka_bootstrap, settings.topic_requests, lows + normals)
        async with TopicReader(stack.kafka_bootstrap, settings.topic_completions) as reader:
            await reader.until(lambda rs: len(rs) == 13, timeout=60)
    order = [s.input["prompt"] for s in sorted(emulator.submissions(), key=lambda s: s.seq)]
    # At most the two slots' worth of low work was already running when the normal work came.
    assert {"hi-0", "hi-1", "hi-2"} <= set(order[:5]), order
    priorities = {s.input["prompt"]: s.priority for s in emulator.submissions()}
    assert priorities["low-0"] == "low"
    assert priorities["hi-0"] == "normal"


async def test_keys_past_the_dedup_window_are_tombstoned(stack: StackInfo, tmp_path: Path) -> None:
    topic = f"window-{datetime.now(UTC).timestamp():.0f}.ledger"
    await _create_topic(stack, topic, partitions=1)
    async with owned_partitions(stack.kafka_bootstrap, f"g-{topic}", [0]) as writers:
        ledger = Ledger(writers, stack.kafka_bootstrap, topic, tmp_path / "owner")
        await ledger.restore([0])
        now = datetime.now(UTC)
        for key, age in (("old", timedelta(days=8)), ("recent", timedelta(days=1))):
            stamp = now - age
            await ledger.write(_finished(key, stamp), partition=0)
        assert await ledger.forget_expired(0, timedelta(days=7), now) == 1
        assert ledger.get("old") is None
        assert ledger.get("recent") is not None
        # A fresh reader of the ledger agrees: the old key is gone for good.
        fresh = Ledger(writers, stack.kafka_bootstrap, topic, tmp_path / "reader")
        await fresh.restore([0])
        assert fresh.get("old") is None
        assert fresh.get("recent") is not None


async def _create_topic(stack: StackInfo, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


def _finished(key: str, at: datetime) -> LedgerRecord:
    return LedgerRecord(
        idempotency_key=key,
        phase=Phase.FAILED,
        fingerprint="f",
        endpoint="fal-ai/flux/schnell",
        request={},
        published=True,
        accepted_at=at,
        updated_at=at,
    )


def _phase(record: LedgerRecord | None) -> Phase | None:
    return None if record is None else record.phase


async def _committed(bootstrap: str, group: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(meta.offset for meta in offsets.values() if meta.offset > 0)


async def test_a_records_offset_commits_once_its_state_is_durable_not_after_the_post(
    stack: StackInfo, emulator: EmulatorServer
) -> None:
    # The provider holds its answer to the submit for a minute: the POST is under way.
    emulator.arm(delay_submit_responses=1, delay_submit_ms=60_000)
    settings = relay_settings(stack, emulator, partitions=1)
    async with running(settings) as relay:
        await produce(
            stack.kafka_bootstrap, settings.topic_requests, [(b"slow", submit_record("slow", "x"))]
        )
        await eventually(lambda: len(emulator.submissions()) == 1, timeout=60)
        # SUBMITTING is committed before the POST, so the record is done with: its offset
        # commits while the POST still waits for its answer.

        async def committed() -> bool:
            return await _committed(stack.kafka_bootstrap, settings.group_id) == 1

        await eventually(committed, timeout=60)
        record = relay.relay.ledger.get("slow")
        assert record is not None
        assert record.phase is Phase.SUBMITTING


async def test_a_tenant_at_its_in_flight_limit_waits_while_another_tenant_is_served(
    stack: StackInfo, emulator: EmulatorServer
) -> None:
    emulator.configure(run_latency=FixedLatency(ms=60_000))
    settings = relay_settings(stack, emulator, max_in_flight_per_tenant=1)
    bulk = [f"bulk-{n}" for n in range(3)]
    records = [(k.encode(), submit_record(k, k, tenant="bulk")) for k in bulk]
    records.append((b"shop-0", submit_record("shop-0", "x", tenant="shop")))
    async with running(settings) as relay:
        await produce(stack.kafka_bootstrap, settings.topic_requests, records)

        def phases() -> list[Phase | None]:
            return [_phase(relay.relay.ledger.get(k)) for k in (*bulk, "shop-0")]

        # One bulk key runs (for a minute), the shop key runs beside it, two bulk keys wait
        # recorded but never posted.
        # (The running bulk key's SUBMITTED may commit after the shop key's: wait for both.)
        await eventually(
            lambda: (
                phases().count(Phase.ACCEPTED) == 2
                and phases().count(Phase.SUBMITTED) == 2
                and phases()[-1] is Phase.SUBMITTED
            ),
            timeout=60,
        )
        assert len(emulator.submissions()) == 2


async def test_a_request_past_its_deadline_ends_deadline_exceeded_and_is_never_paid(
    stack: StackInfo, emulator: EmulatorServer
) -> None:
    settings = relay_settings(stack, emulator)
    past = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    records = [
        (b"late", submit_record("late", "x", deadline=past)),
        (b"on-time", submit_record("on-time", "y", deadline=future)),
    ]
    async with running(settings):
        await produce(stack.kafka_bootstrap, settings.topic_requests, records)
        async with TopicReader(stack.kafka_bootstrap, settings.topic_completions) as reader:
            await reader.until(lambda rs: len(rs) == 2)
    events = {json.loads(r.value)["idempotency_key"]: json.loads(r.value) for r in reader.records}
    assert events["late"]["status"] == "failed"
    assert events["late"]["error"]["type"] == "deadline_exceeded"
    assert events["on-time"]["status"] == "succeeded"
    assert [s.input["prompt"] for s in emulator.submissions()] == ["y"]
