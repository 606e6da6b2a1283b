"""The bulk commands end to end against in-memory Kafka (`FakeRelay`): no broker needed."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from genrelay.producers.bulk import cli
from genrelay.producers.bulk.keys import default_bulk_id
from genrelay.producers.bulk.state import Counts, RunState
from tests.bulk.helpers import (
    FakeRelay,
    MemoryConnector,
    parse,
    printed,
    quiet,
    read_jsonl,
    write_jsonl,
)

ENDPOINT = "fal-ai/flux/schnell"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"p{n}"} for n in range(5)])


class Bulk:
    """Runs `genrelay bulk ...` in process against one `FakeRelay`."""

    def __init__(self, tmp_path: Path, relay: FakeRelay | None = None) -> None:
        self.tmp_path = tmp_path
        self.relay = relay or FakeRelay()
        self.connector = MemoryConnector(self.relay)
        self.last_output = ""

    async def __call__(self, *argv: str) -> int:
        command = argv[0]
        extra = ["--state-dir", str(self.tmp_path / "state")]
        if command == "submit":
            extra += ["--endpoint", ENDPOINT, "--rate", "10000/s", "--bootstrap", "kafka:9092"]
        output = quiet()
        code = await cli.run(
            parse(["bulk", *argv, *extra]), connector=self.connector, output=output
        )
        self.last_output = printed(output)
        return code

    def state(self, source: Path) -> RunState:
        return RunState(self.tmp_path / "state", default_bulk_id(source.read_bytes()))


def sent(relay: FakeRelay, action: str = "submit") -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in relay.records if json.loads(r.value)["action"] == action]


async def test_a_clean_run_sends_each_line_once_and_writes_the_manifest(
    tmp_path: Path, source: Path
) -> None:
    bulk = Bulk(tmp_path)
    assert await bulk("submit", str(source)) == 0

    records = sent(bulk.relay)
    bulk_id = bulk.state(source).bulk_id
    assert [r["metadata"] for r in records] == [
        {"bulk_id": bulk_id, "line": n} for n in range(1, 6)
    ]
    assert {r["priority"] for r in records} == {"low"}
    manifest = read_jsonl(tmp_path / "prompts.manifest.jsonl")
    assert [(row["line"], row["status"]) for row in manifest] == [
        (n, "succeeded") for n in range(1, 6)
    ]
    assert [row["idempotency_key"] for row in manifest] == [r["idempotency_key"] for r in records]
    (obj,) = manifest[0]["objects"]
    assert set(obj) == {"bucket", "key", "size", "sha256", "content_type"}
    assert manifest[0]["request_id"] == f"req-{records[0]['idempotency_key']}"
    assert read_jsonl(tmp_path / "prompts.errors.jsonl") == []
    assert "5 total, 5 submitted, 5 completed, 0 failed" in bulk.last_output


async def test_running_a_finished_run_again_sends_nothing(tmp_path: Path, source: Path) -> None:
    bulk = Bulk(tmp_path)
    assert await bulk("submit", str(source)) == 0
    assert await bulk("submit", str(source)) == 0
    assert len(sent(bulk.relay)) == 5


async def test_bad_lines_are_skipped_reported_by_line_and_the_rest_sent(tmp_path: Path) -> None:
    source = write_jsonl(
        tmp_path / "jobs.jsonl",
        [{"prompt": "ok"}, "{broken", {"prompt": "ok too"}, {"input": {}, "endpoint": "nope"}],
    )
    bulk = Bulk(tmp_path)
    assert await bulk("submit", str(source)) == 1

    assert len(sent(bulk.relay)) == 2
    assert "line 2: not_json" in bulk.last_output
    errors = read_jsonl(tmp_path / "jobs.errors.jsonl")
    assert [(e["line"], e["type"], e["idempotency_key"]) for e in errors] == [
        (2, "not_json", None),
        (4, "invalid_endpoint", None),
    ]
    assert [row["line"] for row in read_jsonl(tmp_path / "jobs.manifest.jsonl")] == [1, 3]


async def test_on_error_abort_checks_the_whole_file_and_sends_nothing(tmp_path: Path) -> None:
    rows: list[dict[str, Any] | str] = [{"prompt": f"p{n}"} for n in range(100)]
    rows.append("{broken")
    source = write_jsonl(tmp_path / "jobs.jsonl", rows)
    bulk = Bulk(tmp_path)
    assert await bulk("submit", str(source), "--on-error", "abort") == 2

    assert bulk.relay.records == []
    assert not (tmp_path / "state").exists()
    errors = read_jsonl(tmp_path / "jobs.errors.jsonl")
    assert [(e["line"], e["type"]) for e in errors] == [(101, "not_json")]


async def test_a_run_stopped_by_a_broker_failure_resumes_without_resending(
    tmp_path: Path, source: Path
) -> None:
    bulk = Bulk(tmp_path)
    bulk.relay.fail_after = 2
    assert await bulk("submit", str(source)) == 1
    assert bulk.state(source).snapshot().counts().submitted == 2

    bulk.relay.fail_after = None
    assert await bulk("submit", str(source)) == 0
    assert "5 request(s), 2 sent before" in bulk.last_output
    assert Counter(r["idempotency_key"] for r in sent(bulk.relay)).most_common(1)[0][1] == 1
    assert len(sent(bulk.relay)) == 5


async def test_without_waiting_the_manifest_is_pending_until_collected(
    tmp_path: Path, source: Path
) -> None:
    bulk = Bulk(tmp_path)
    assert await bulk("submit", str(source), "--no-wait") == 0
    manifest = read_jsonl(tmp_path / "prompts.manifest.jsonl")
    assert {row["status"] for row in manifest} == {"pending"}
    bulk_id = bulk.state(source).bulk_id

    assert await bulk("status", bulk_id) == 0
    assert "submitted         5" in bulk.last_output
    assert "completed         0" in bulk.last_output
    assert "spend      0.0000 USD, estimated (0 of 0 finished keys priced" in bulk.last_output

    assert await bulk("collect", bulk_id) == 0
    manifest = read_jsonl(tmp_path / "prompts.manifest.jsonl")
    assert {row["status"] for row in manifest} == {"succeeded"}
    assert await bulk("status", bulk_id) == 0
    assert "completed         5" in bulk.last_output
    assert "spend      0.0150 USD, estimated (5 of 5 finished keys priced" in bulk.last_output
    # Collect used the topics the run was submitted with.
    assert bulk.connector.targets[-1] == bulk.connector.targets[0]


async def test_failed_jobs_are_counted_and_listed_in_the_error_file(
    tmp_path: Path, source: Path
) -> None:
    bulk = Bulk(tmp_path, FakeRelay(lambda key: "failed" if key.endswith("/2") else "succeeded"))
    source = write_jsonl(source, [{"prompt": "same"}, {"prompt": "same"}, {"prompt": "other"}])
    assert await bulk("submit", str(source)) == 1

    counts = bulk.state(source).snapshot().counts()
    assert counts == Counts(total=3, submitted=3, completed=2, failed=1, cancelled=0, rejected=0)
    (error,) = read_jsonl(tmp_path / "prompts.errors.jsonl")
    assert (error["line"], error["status"], error["type"]) == (2, "failed", "boom")
    assert error["message"] == "it broke"


async def test_outcomes_not_in_time_leave_keys_pending(tmp_path: Path, source: Path) -> None:
    bulk = Bulk(tmp_path, FakeRelay(lambda key: None))
    assert await bulk("submit", str(source), "--timeout", "0.2") == 1
    assert "bulk collect" in bulk.last_output
    assert bulk.state(source).snapshot().counts().pending == 5


async def test_cancel_covers_every_key_without_an_outcome_and_stops_resubmits(
    tmp_path: Path, source: Path
) -> None:
    bulk = Bulk(tmp_path, FakeRelay(lambda key: "succeeded" if key.endswith("0") else None))
    bulk.relay.fail_after = 3  # two lines are never sent; they are cancelled all the same
    assert await bulk("submit", str(source), "--timeout", "1") == 1
    snapshot = bulk.state(source).snapshot()
    without_outcome = [key for key in snapshot.keys if key not in snapshot.outcomes]

    bulk.relay.fail_after = None
    assert await bulk("cancel", snapshot.info.bulk_id) == 0
    assert sorted(bulk.relay.sent_keys("cancel")) == sorted(without_outcome)
    assert await bulk("submit", str(source)) == 2
    assert await bulk("status", snapshot.info.bulk_id) == 0
    assert "cancelled at" in bulk.last_output


async def test_a_run_in_use_by_another_process_is_refused(tmp_path: Path, source: Path) -> None:
    bulk = Bulk(tmp_path)
    state = bulk.state(source)
    with state.locked():
        assert await bulk("submit", str(source)) == 2
    assert bulk.relay.records == []


async def test_unknown_runs_are_reported(tmp_path: Path) -> None:
    bulk = Bulk(tmp_path)
    for command in ("status", "collect", "cancel"):
        assert await bulk(command, "no-such-run") == 2


async def test_an_edited_file_under_the_same_id_pays_only_for_changed_lines(
    tmp_path: Path, source: Path
) -> None:
    bulk = Bulk(tmp_path)
    assert await bulk("submit", str(source), "--bulk-id", "sale") == 0
    edited = [{"prompt": "new first line"}] + [{"prompt": f"p{n}"} for n in range(5)]
    edited[3] = {"prompt": "p2 fixed"}
    write_jsonl(source, edited)
    assert await bulk("submit", str(source), "--bulk-id", "sale") == 0

    assert len(sent(bulk.relay)) == 5 + 2
    manifest = read_jsonl(tmp_path / "prompts.manifest.jsonl")
    assert [row["line"] for row in manifest] == [1, 2, 3, 4, 5, 6, None]
    assert {row["status"] for row in manifest} == {"succeeded"}


async def test_csv_files_are_submitted_row_by_row(tmp_path: Path) -> None:
    source = tmp_path / "jobs.csv"
    source.write_text("prompt,seed\na cat,1\na dog,2\n")
    bulk = Bulk(tmp_path)
    assert await bulk("submit", str(source)) == 0
    assert [r["input"] for r in sent(bulk.relay)] == [
        {"prompt": "a cat", "seed": 1},
        {"prompt": "a dog", "seed": 2},
    ]
    assert [r["line"] for r in read_jsonl(tmp_path / "jobs.manifest.jsonl")] == [2, 3]


async def test_the_progress_bar_reports_submitted_and_finished(
    tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bulk = Bulk(tmp_path, FakeRelay(lambda key: "failed"))
    args = parse(
        ["bulk", "submit", str(source), "--endpoint", ENDPOINT, "--state-dir", str(tmp_path)]
    )
    output = quiet()
    output.show_progress = True
    assert await cli.run(args, connector=bulk.connector, output=output) == 1
    drawn = capsys.readouterr().err
    assert "submitted" in drawn
    assert "5/5" in drawn
    assert "completed 0 · failed 5 · cancelled 0" in drawn
