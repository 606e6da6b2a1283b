"""Finished keys live in each partition's local store, not in memory; a replica that owns its
partitions again reads only the ledger's tail, and a duplicate is still answered from the
store."""

from __future__ import annotations

from pathlib import Path

import pytest

from genrelay.consumer.ledger.state_store import PartitionStore, StoredState
from genrelay.deploy.local.stack import StackInfo
from genrelay.emulator.server import EmulatorServer
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

JOBS = 30


async def test_a_restarted_replica_reads_only_the_tail_and_still_replays_finished_keys(
    stack: StackInfo, emulator: EmulatorServer, tmp_path: Path
) -> None:
    settings = relay_settings(stack, emulator, instance_id="steady", state_dir=tmp_path)
    keys = [f"stored-{n}" for n in range(JOBS)]
    records = [(k.encode(), submit_record(k, k)) for k in keys]
    async with running(settings) as first:
        await produce(stack.kafka_bootstrap, settings.topic_requests, records)
        async with TopicReader(stack.kafka_bootstrap, settings.topic_completions) as reader:
            await reader.until(lambda rs: len(completions_by_key(rs)) == JOBS)
        # Every key finished: none is held in memory, all are in the stores. The event is
        # visible as soon as its transaction commits, a moment before the relay hears so.
        await eventually(lambda: first.relay.ledger.open_keys == 0)
        assert len(first.relay.ledger) == JOBS
        cold = first.relay.ownership.last_restore
    assert cold is not None
    assert cold.from_checkpoint == ()

    async with running(settings) as second:
        warm = second.relay.ownership.last_restore
        assert warm is not None
        assert warm.from_checkpoint == warm.partitions
        assert warm.keys >= JOBS
        # Only what was written after the checkpoints (nothing) is read again.
        assert warm.records_read < JOBS
        await produce(stack.kafka_bootstrap, settings.topic_requests, records[:1])
        async with TopicReader(stack.kafka_bootstrap, settings.topic_completions) as reader:
            await reader.until(lambda rs: len(completions_by_key(rs).get(keys[0], [])) == 2)
    first_event, replayed = completions_by_key(reader.records)[keys[0]]
    assert replayed["replayed"] is True
    assert replayed["event_id"] == first_event["event_id"]
    assert len(emulator.submissions()) == JOBS


async def test_a_store_opened_after_a_crash_holds_no_checkpoint(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p.sqlite", "t.ledger", 0)
    assert store.open() is None
    store.settle()
    store.checkpoint(42)
    store.close()
    live = PartitionStore(tmp_path / "p.sqlite", "t.ledger", 0)
    checkpoint = live.open()
    assert checkpoint is not None
    assert checkpoint.next_offset == 42
    live.close()  # no clean release: the process "crashed" while owning the partition
    again = PartitionStore(tmp_path / "p.sqlite", "t.ledger", 0)
    assert again.open() is None
    again.close()
    other = PartitionStore(tmp_path / "p.sqlite", "another.ledger", 0)
    assert other.open() is None
    other.close()


def test_a_rebuilt_store_is_indexed_and_journalled_once_settled(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p.sqlite", "t.ledger", 0)
    assert store.open() is None  # nothing to trust: rebuilt by appending, without an index
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "memory"
    assert _indexes(store) == set()
    store.put_many([StoredState("k", 1.0, True, b"{}")])
    store.settle()
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert _indexes(store) == {"keys_by_key", "keys_by_updated"}
    assert store.finished_before(2.0) == ["k"]
    store.close()


def _indexes(store: PartitionStore) -> set[str]:
    rows = store.db.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
    return {name for (name,) in rows}


def _state(key: str, value: bytes, updated: float = 1.0) -> StoredState:
    return StoredState(key, updated, True, value)


@pytest.mark.parametrize("written_twice", [False, True])
def test_a_rebuild_keeps_each_keys_last_state_and_drops_tombstoned_keys(
    tmp_path: Path, written_twice: bool
) -> None:
    store = PartitionStore(tmp_path / "p.sqlite", "t.ledger", 0)
    assert store.open() is None
    # Batches as a restore hands them over, in the topic's order.
    store.put_many([_state("kept", b"1"), _state("gone", b"1"), _state("back", b"1")])
    store.put_many([_state(f"other-{n}", b"x") for n in range(2_500)])  # several statements
    store.replace(["gone", "back", "never-stored"], [])
    store.put_many([_state("back", b"2", 5.0)])
    if written_twice:  # the same key finished again in a later batch: the index cannot be
        store.put_many([_state("kept", b"2", 6.0)])  # built until the older row goes
    store.settle()
    assert store.get("kept") == (b"2" if written_twice else b"1")
    assert store.get("gone") is None
    assert store.get("never-stored") is None
    assert store.get("back") == b"2"
    assert store.count() == 2 + 2_500
    # Live again: a write replaces the key's state, a delete removes it.
    store.replace(["other-0"], [_state("kept", b"3"), _state("new", b"1")])
    assert (store.get("kept"), store.get("new"), store.get("other-0")) == (b"3", b"1", None)
    assert store.count() == 2 + 2_500
    store.close()


def test_a_store_of_an_older_layout_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite"
    store = PartitionStore(path, "t.ledger", 0)
    assert store.open() is None
    store.put_many([_state("k", b"{}")])
    store.settle()
    store.checkpoint(7)
    store.db.execute("PRAGMA user_version=1")
    store.close()
    again = PartitionStore(path, "t.ledger", 0)
    assert again.open() is None  # its checkpoint is not trusted: the layout differs
    assert again.count() == 0
    again.close()


def test_a_store_a_crash_left_half_written_is_thrown_away_and_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite"
    store = PartitionStore(path, "t.ledger", 0)
    store.open()
    store.put_many([StoredState(f"k{n}", 1.0, True, b"x" * 4000) for n in range(100)])
    store.close()  # killed mid-rebuild: never settled, no checkpoint
    with path.open("r+b") as garbled:
        garbled.seek(0)
        garbled.write(b"\xff" * 4096)  # and its pages were left torn
    again = PartitionStore(path, "t.ledger", 0)
    assert again.open() is None
    assert again.count() == 0
    again.put_many([StoredState("fresh", 1.0, True, b"{}")])
    again.settle()
    assert again.get("fresh") == b"{}"
    again.close()
