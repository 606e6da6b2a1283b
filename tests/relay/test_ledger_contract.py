"""The ledger contract: the fake the fast tests use (`MemoryLedger`) behaves as the real ledger
does on the broker, for every call `Jobs` makes (`KeyStates`)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from genrelay.consumer.dispatch.jobs import KeyStates
from genrelay.consumer.errors import Fenced, RecordTooLarge
from genrelay.consumer.fakes import MemoryLedger
from genrelay.consumer.ledger import ledger as ledger_module
from genrelay.consumer.ledger.ledger import Ledger
from genrelay.consumer.ledger.partition_writer import Outgoing
from genrelay.deploy.local.stack import StackInfo
from genrelay.producers.kafka import read_topic
from genrelay.schemas.ledger import LedgerRecord, Phase
from tests.relay.harness import owned_partitions

# The broker is started before the fixture that asks for it on the broker runs only.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("stack")]

NOW = datetime(2026, 12, 5, tzinfo=UTC)
EVENTS = "events"  # where a write's companion records go (a topic on the broker)


@dataclass
class Owned:
    """A ledger owning partitions 0 and 1, and how a test looks behind it."""

    states: KeyStates
    lose: Callable[[int], Awaitable[None]]  # another replica takes the partition over
    committed_beside: Callable[[], Awaitable[list[bytes]]]  # the companions that committed
    events_topic: str


def _record(key: str, phase: Phase, *, published: bool = False, note: str = "") -> LedgerRecord:
    return LedgerRecord(
        idempotency_key=key,
        phase=phase,
        fingerprint="f",
        endpoint="fal-ai/flux/schnell",
        request={"metadata": {"note": note}},
        published=published,
        accepted_at=NOW,
        updated_at=NOW,
    )


async def _topics(bootstrap: str) -> tuple[str, str]:
    base = f"contract-{uuid.uuid4().hex[:8]}"
    ledger, events = f"{base}.ledger", f"{base}.events"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(ledger, 2, 1), NewTopic(events, 2, 1)])
    finally:
        await admin.close()
    return ledger, events


@pytest.fixture(params=["fake", "ledger-on-the-broker"])
async def owned(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Owned]:
    if request.param == "fake":
        fake = MemoryLedger()

        async def lose_fake(partition: int) -> None:
            fake.lose(partition)

        async def beside_fake() -> list[bytes]:
            return [r.value or b"" for _, also in fake.writes for r in also]

        yield Owned(fake, lose_fake, beside_fake, EVENTS)
        return
    stack: StackInfo = request.getfixturevalue("stack")
    ledger_topic, events_topic = await _topics(stack.kafka_bootstrap)
    group = f"g-{ledger_topic}"
    async with owned_partitions(stack.kafka_bootstrap, group, [0, 1]) as writers:
        ledger = Ledger(writers, stack.kafka_bootstrap, ledger_topic, tmp_path)
        await ledger.restore([0, 1])

        async def lose_real(partition: int) -> None:
            writer = writers.pop(partition)
            assert writer is not None
            await writer.close()

        async def beside_real() -> list[bytes]:
            records = await read_topic(stack.kafka_bootstrap, events_topic)
            return [r.value for r in records]

        yield Owned(ledger, lose_real, beside_real, events_topic)


async def test_a_committed_state_is_read_back_at_once_and_listed_in_its_partition_only(
    owned: Owned,
) -> None:
    assert owned.states.get("a") is None
    await owned.states.write(_record("a", Phase.ACCEPTED), 0)
    await owned.states.write(_record("b", Phase.SUBMITTED), 1)
    await owned.states.write(_record("a", Phase.SUBMITTING), 0)
    a = owned.states.get("a")
    assert a is not None
    assert a.phase is Phase.SUBMITTING  # the latest write wins
    assert owned.states.keys_in(0) == ["a"]
    assert owned.states.keys_in(1) == ["b"]


async def test_a_finished_announced_key_is_no_longer_open_but_is_still_answered(
    owned: Owned,
) -> None:
    await owned.states.write(_record("done", Phase.SUBMITTED), 0)
    assert owned.states.is_open("done")
    await owned.states.write(_record("done", Phase.COMPLETED, published=True), 0)
    await owned.states.write(_record("built", Phase.FAILED), 0)  # built, not yet announced
    assert owned.states.keys_in(0) == ["built"]
    assert not owned.states.is_open("done")
    assert owned.states.is_open("built")
    assert not owned.states.is_open("never-seen")
    finished = owned.states.get("done", 0)
    assert finished is not None
    assert finished.phase is Phase.COMPLETED  # a duplicate can still be replayed its event


async def test_an_open_keys_phase_is_known_and_a_finished_keys_is_not(owned: Owned) -> None:
    await owned.states.write(_record("a", Phase.ACCEPTED), 0)
    await owned.states.write(_record("b", Phase.SUBMITTED), 1)
    await owned.states.write(_record("done", Phase.COMPLETED, published=True), 0)
    assert owned.states.phase("a") is Phase.ACCEPTED
    assert owned.states.phase("b") is Phase.SUBMITTED
    assert owned.states.phase("done") is None
    assert owned.states.phase("never-seen") is None


async def test_open_keys_beyond_those_kept_parsed_are_read_back_whole(
    stack: StackInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_module, "_PARSED", 4)
    ledger_topic, _ = await _topics(stack.kafka_bootstrap)
    async with owned_partitions(stack.kafka_bootstrap, f"g-{ledger_topic}", [0]) as writers:
        ledger = Ledger(writers, stack.kafka_bootstrap, ledger_topic, tmp_path)
        await ledger.restore([0])
        written = [_record(f"k{n}", Phase.SUBMITTED, note=f"note {n}") for n in range(20)]
        for record in written:
            await ledger.write(record, 0)
        assert ledger.open_keys == 20
        assert ledger.parsed_keys == 4  # the rest are held as the bytes written, packed
        as_json = sum(len(r.model_dump_json(exclude_defaults=True)) for r in written)
        assert ledger.held_bytes() < as_json / 2
        assert [ledger.get(r.idempotency_key, 0) for r in written] == written
        assert [ledger.phase(r.idempotency_key) for r in written] == [Phase.SUBMITTED] * 20
        assert ledger.parsed_keys == 4
        # Let go and owned again: the open keys come back from the store whole.
        ledger.release([0])
        again = Ledger(writers, stack.kafka_bootstrap, ledger_topic, tmp_path)
        stats = await again.restore([0])
        assert stats.from_checkpoint == (0,)
        assert [again.get(r.idempotency_key, 0) for r in written] == written


async def test_what_is_written_beside_a_state_commits_with_it(owned: Owned) -> None:
    beside = Outgoing(owned.events_topic, b"the event", b"k", 0)
    await owned.states.write(_record("k", Phase.COMPLETED, published=True), 0, also=(beside,))
    assert await owned.committed_beside() == [b"the event"]


async def test_a_state_larger_than_the_broker_accepts_is_refused_and_changes_nothing(
    owned: Owned,
) -> None:
    await owned.states.write(_record("big", Phase.SUBMITTED, note="small"), 0)
    with pytest.raises(RecordTooLarge):
        await owned.states.write(_record("big", Phase.RESULT_READY, note="x" * 2_000_000), 0)
    kept = owned.states.get("big")
    assert kept is not None
    assert kept.phase is Phase.SUBMITTED
    # A companion too large is refused with its state, which is not written either.
    huge = Outgoing(owned.events_topic, b"x" * 2_000_000, b"big", 0)
    with pytest.raises(RecordTooLarge):
        await owned.states.write(_record("big", Phase.STORED), 0, also=(huge,))
    again = owned.states.get("big")
    assert again is not None
    assert again.phase is Phase.SUBMITTED
    assert await owned.committed_beside() == []


async def test_a_partition_another_replica_took_over_refuses_every_write(owned: Owned) -> None:
    await owned.states.write(_record("mine", Phase.SUBMITTING), 1)
    await owned.lose(1)
    with pytest.raises(Fenced):
        await owned.states.write(_record("mine", Phase.SUBMITTED), 1)
    await owned.states.write(_record("other", Phase.ACCEPTED), 0)  # the rest is unharmed
    assert owned.states.get("other") is not None
