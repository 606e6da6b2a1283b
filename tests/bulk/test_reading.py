"""Reading JSONL and CSV bulk files into requests, and refusing bad lines by number."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from genrelay.producers.bulk.errors import BadInputError
from genrelay.producers.bulk.plan import MAX_RECORD_BYTES, Defaults, Plan, plan_run
from genrelay.producers.bulk.reader import LineError, SourceFormat, read_rows
from genrelay.schemas.requests import OutputTarget

ENDPOINT = "fal-ai/flux/schnell"


def plan(content: str | bytes, source_format: SourceFormat = SourceFormat.JSONL, **kw: str) -> Plan:
    raw = content.encode() if isinstance(content, str) else content
    defaults = Defaults(**kw)  # type: ignore[arg-type]
    return plan_run(read_rows(raw, source_format), "run-1", defaults)


def refusals(result: Plan) -> list[tuple[int, str]]:
    return [(error.line, error.type) for error in result.errors]


def test_a_request_line_keeps_its_fields_and_gains_the_run_metadata() -> None:
    result = plan(
        '{"endpoint": "fal-ai/flux/dev", "input": {"prompt": "a cat"}, "tenant": "shop",'
        ' "metadata": {"sku": "42", "line": "mine"}, "priority": "normal",'
        ' "output": {"bucket": "renders", "prefix": "sale"}, "deadline": "2030-01-01T00:00:00Z"}\n'
    )
    (planned,) = result.requests
    request = planned.request
    assert (planned.line, request.endpoint, request.tenant) == (1, "fal-ai/flux/dev", "shop")
    assert request.input == {"prompt": "a cat"}
    assert request.metadata == {"sku": "42", "line": 1, "bulk_id": "run-1"}
    assert request.priority == "normal"
    assert request.output == OutputTarget(bucket="renders", prefix="sale")
    assert request.deadline == datetime(2030, 1, 1, tzinfo=UTC)


def test_lines_default_to_the_given_endpoint_and_low_priority() -> None:
    result = plan('{"input": {"prompt": "a cat"}}\n', endpoint=ENDPOINT)
    (planned,) = result.requests
    assert (planned.request.endpoint, planned.request.priority) == (ENDPOINT, "low")


def test_with_an_endpoint_a_line_without_an_input_object_is_the_input() -> None:
    result = plan('{"prompt": "a cat", "seed": 3}\n', endpoint=ENDPOINT)
    assert result.requests[0].request.input == {"prompt": "a cat", "seed": 3}


def test_without_an_endpoint_a_bare_input_is_refused() -> None:
    result = plan('{"prompt": "a cat"}\n')
    assert refusals(result) == [(1, "schema_violation")]
    assert "--endpoint" in result.errors[0].message


def test_bad_lines_are_refused_by_line_number_and_the_rest_planned() -> None:
    content = "\n".join(
        [
            '{"prompt": "ok 1"}',  # 1
            "",  # 2: blank lines are skipped
            "{not json",  # 3
            "[1, 2]",  # 4
            '{"prompt": "ok 2"}',  # 5
            '{"input": {"prompt": "x"}, "endpoint": "not an endpoint"}',  # 6
            '{"input": {"prompt": "x"}, "priority": "urgent"}',  # 7
            '{"input": {"prompt": "x"}, "schema_version": 2}',  # 8
            '{"input": {"prompt": "x"}, "action": "cancel"}',  # 9
            '{"prompt": NaN}',  # 10
            '{"input": {"prompt": "x"}, "metadata": {"nested": {"no": 1}}}',  # 11
        ]
    )
    result = plan(content, endpoint=ENDPOINT)
    assert [p.line for p in result.requests] == [1, 5]
    assert refusals(result) == [
        (3, "not_json"),
        (4, "not_object"),
        (6, "invalid_endpoint"),
        (7, "schema_violation"),
        (8, "unsupported_schema_version"),
        (9, "schema_violation"),
        (10, "not_json"),
        (11, "schema_violation"),
    ]
    assert all(error.message for error in result.errors)


def test_a_line_too_large_for_the_relay_is_refused() -> None:
    big = "x" * MAX_RECORD_BYTES
    result = plan(f'{{"prompt": "{big}"}}\n{{"prompt": "small"}}\n', endpoint=ENDPOINT)
    assert refusals(result) == [(1, "oversized")]
    assert [p.line for p in result.requests] == [2]


def test_a_key_given_twice_is_refused_on_its_second_line() -> None:
    line = '{"idempotency_key": "k1", "input": {"prompt": "%s"}}'
    result = plan("\n".join([line % "a", line % "b", line % "a"]), endpoint=ENDPOINT)
    assert [p.line for p in result.requests] == [1]
    assert refusals(result) == [(2, "duplicate_key"), (3, "duplicate_key")]
    assert "line 1" in result.errors[0].message


def test_crlf_line_ends_and_a_byte_order_mark_are_read() -> None:
    result = plan(b'\xef\xbb\xbf{"prompt": "a"}\r\n{"prompt": "b"}\r\n', endpoint=ENDPOINT)
    assert [p.request.input["prompt"] for p in result.requests] == ["a", "b"]


def test_csv_columns_become_input_fields_with_json_values() -> None:
    content = (
        "prompt,seed,guidance,safe,image_size,tags,note\n"
        'a lighthouse,7,3.5,true,"{""width"": 64, ""height"": 64}","[1, 2]",\n'
        "007,1e2,-0.5,false,{not json,[draft,null\n"
    )
    result = plan(content, SourceFormat.CSV, endpoint=ENDPOINT)
    first, second = (p.request.input for p in result.requests)
    assert first == {
        "prompt": "a lighthouse",
        "seed": 7,
        "guidance": 3.5,
        "safe": True,
        "image_size": {"width": 64, "height": 64},
        "tags": [1, 2],
    }
    assert second == {
        "prompt": "007",
        "seed": 100.0,
        "guidance": -0.5,
        "safe": False,
        "image_size": "{not json",
        "tags": "[draft",
        "note": "null",
    }


def test_csv_rows_are_numbered_by_their_first_line() -> None:
    content = 'prompt,seed\n"a prompt\nover two lines",1\n\ntoo,many,cells\nlast,2\n'
    result = plan(content, SourceFormat.CSV, endpoint=ENDPOINT)
    assert [p.line for p in result.requests] == [2, 6]
    assert refusals(result) == [(5, "schema_violation")]
    assert result.requests[0].request.metadata["line"] == 2


def test_csv_needs_an_endpoint() -> None:
    result = plan("prompt\na cat\n", SourceFormat.CSV)
    assert refusals(result) == [(2, "schema_violation")]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"prompt,prompt\na,b\n", "more than once"),
        (b"prompt,\na,b\n", "needs a name"),
        (b"prompt\nok\n\xff\xfe\n", "line 3: the file is not UTF-8"),
        (b'prompt\n"never closed\n', "not readable as CSV"),
    ],
)
def test_a_csv_file_that_cannot_be_read_is_refused_whole(content: bytes, problem: str) -> None:
    with pytest.raises(BadInputError, match=problem):
        plan(content, SourceFormat.CSV, endpoint=ENDPOINT)


def test_the_format_follows_the_file_name() -> None:
    assert SourceFormat.of(Path("jobs.CSV")) is SourceFormat.CSV
    assert SourceFormat.of(Path("jobs.jsonl")) is SourceFormat.JSONL
    assert SourceFormat.of(Path("jobs.ndjson")) is SourceFormat.JSONL


def test_line_errors_read_like_dead_letter_reasons() -> None:
    (error,) = plan("{oops\n").errors
    assert error == LineError(1, "not_json", error.message)
    assert error.message.startswith("not UTF-8 JSON")
