"""Offsets commit only the contiguous prefix of finished records."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from genrelay.consumer.intake.offsets import PartitionOffsets


def test_nothing_finished_means_nothing_to_commit() -> None:
    offsets = PartitionOffsets()
    offsets.taken(5)
    assert offsets.commit_point() is None


def test_an_unfinished_record_holds_back_the_commit() -> None:
    offsets = PartitionOffsets()
    for n in (10, 11, 12):
        offsets.taken(n)
    offsets.finished(11)
    offsets.finished(12)
    assert offsets.commit_point() is None
    offsets.finished(10)
    assert offsets.commit_point() == 13
    assert offsets.in_flight == 0


@given(st.permutations(list(range(40))))
def test_commit_point_is_first_unfinished_offset(order: list[int]) -> None:
    offsets = PartitionOffsets()
    for n in range(40):
        offsets.taken(100 + n)
    done: set[int] = set()
    for n in order:
        offsets.finished(100 + n)
        done.add(n)
        first_open = next((k for k in range(40) if k not in done), 40)
        expected = 100 + first_open if first_open else None
        assert offsets.commit_point() == expected
