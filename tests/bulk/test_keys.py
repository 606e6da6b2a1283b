"""Bulk ids and idempotency keys: the same work in the same run always gets the same key."""

from __future__ import annotations

import pytest

from genrelay.producers.bulk.keys import (
    bulk_key,
    check_bulk_id,
    default_bulk_id,
    work_hash,
)
from genrelay.producers.bulk.plan import Defaults, Plan, plan_run
from genrelay.producers.bulk.reader import SourceFormat, read_rows

FILE = b"""\
{"prompt": "a lighthouse", "seed": 1}
{"prompt": "a harbour", "seed": 2}
{"prompt": "a lighthouse", "seed": 1}
"""


def planned(content: bytes, bulk_id: str | None = None, **defaults: str) -> Plan:
    run = bulk_id or default_bulk_id(content)
    options = Defaults(**{"endpoint": "fal-ai/flux/schnell", **defaults})  # type: ignore[arg-type]
    return plan_run(read_rows(content, SourceFormat.JSONL), run, options)


def keys(plan: Plan) -> list[str]:
    return [request.key for request in plan.requests]


def test_running_the_same_file_again_derives_the_same_keys() -> None:
    assert keys(planned(FILE)) == keys(planned(FILE))
    assert default_bulk_id(FILE) == default_bulk_id(bytes(FILE))


def test_the_default_bulk_id_is_a_hash_of_the_content() -> None:
    assert len(default_bulk_id(FILE)) == 16
    assert default_bulk_id(FILE) != default_bulk_id(FILE + b"\n")


def test_keys_name_the_run_and_the_work() -> None:
    plan = planned(FILE, "spring-sale")
    first, second, _ = plan.requests
    assert first.key == bulk_key("spring-sale", work_hash(first.request), 1)
    assert first.key.startswith("bulk/spring-sale/")
    assert first.key != second.key


def test_a_repeat_of_the_same_work_is_a_separate_generation() -> None:
    first, _, repeat = planned(FILE).requests
    assert repeat.key == first.key + "/2"


def test_keys_do_not_depend_on_line_numbers_within_a_run() -> None:
    edited = b'{"prompt": "a new first line"}\n' + FILE
    before = keys(planned(FILE, "run-1"))
    after = keys(planned(edited, "run-1"))
    assert after[1:] == before


def test_labels_and_scheduling_do_not_change_the_key() -> None:
    labelled = FILE.replace(
        b'{"prompt": "a harbour", "seed": 2}',
        b'{"input": {"prompt": "a harbour", "seed": 2}, "metadata": {"team": "x"}, '
        b'"priority": "normal"}',
    )
    assert keys(planned(labelled, "run-1")) == keys(planned(FILE, "run-1"))


def test_different_work_or_runs_never_share_keys() -> None:
    assert keys(planned(FILE, "run-1"))[1] != keys(planned(FILE.replace(b"2}", b"3}"), "run-1"))[1]
    assert set(keys(planned(FILE, "run-1"))).isdisjoint(keys(planned(FILE, "run-2")))
    other_endpoint = planned(FILE, "run-1", endpoint="fal-ai/flux/dev")
    assert set(keys(planned(FILE, "run-1"))).isdisjoint(keys(other_endpoint))


def test_a_key_given_in_the_line_is_kept() -> None:
    content = b'{"idempotency_key": "order-42/hero", "input": {"prompt": "x"}}\n'
    assert keys(planned(content)) == ["order-42/hero"]


@pytest.mark.parametrize("bulk_id", ["", "../up", "a/b", "-flag", "x" * 65, "sp ace"])
def test_bulk_ids_that_are_not_path_and_key_safe_are_refused(bulk_id: str) -> None:
    with pytest.raises(ValueError, match="bulk id"):
        check_bulk_id(bulk_id)


def test_reasonable_bulk_ids_are_accepted() -> None:
    assert check_bulk_id("2026-11-spring_sale.v2") == "2026-11-spring_sale.v2"
