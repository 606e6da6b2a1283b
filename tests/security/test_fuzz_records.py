"""Hostile records: whatever the bytes, a record is refused with `RecordInvalid` (a dead letter)
or read as a record the published JSON Schema accepts; intake never raises.

Already covered in `tests/schemas/test_request_parsing.py`: each refusal's reason code and the
order of the checks, NaN refused, messages that never echo a record's content.

Added here: property tests over arbitrary bytes, arbitrary JSON, records assembled from
hostile field values, and mutated valid records; and the inputs found to break the rule.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from genrelay.schemas.requests import RecordInvalid, parse_request
from tests.security.fuzz.fuzz_records import SEEDS, check_record

FUZZ_SCRIPT = Path(__file__).parent / "fuzz" / "fuzz_records.py"

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
# Offsets up to ±23:59 on dates far from the calendar's ends (the edges are tested below).
offsets = st.integers(-1439, 1439).map(lambda minutes: timezone(timedelta(minutes=minutes)))
deadlines = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=offsets
).map(datetime.isoformat)
metadata_values = st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
printable = st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), max_size=30)
valid_submit = st.fixed_dictionaries(
    {
        "schema_version": st.just(1),
        "action": st.just("submit"),
        "idempotency_key": printable.filter(bool),
        "endpoint": st.sampled_from(["fal-ai/flux/schnell", "fal-ai/flux-pro/v1.1", "a/b"]),
        "input": st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    },
    optional={
        "priority": st.sampled_from(["normal", "low"]),
        "tenant": printable.filter(bool),
        "metadata": st.dictionaries(st.text(max_size=8), metadata_values, max_size=4),
        "output": st.fixed_dictionaries(
            {}, optional={"bucket": st.just("genrelay-out"), "prefix": printable.filter(bool)}
        ),
        "deadline": deadlines,
    },
)
valid_cancel = st.fixed_dictionaries(
    {
        "schema_version": st.just(1),
        "action": st.just("cancel"),
        "idempotency_key": printable.filter(bool),
    }
)
valid_records = valid_submit | valid_cancel
HOSTILE: dict[str, st.SearchStrategy[object]] = {
    "schema_version": st.sampled_from([1.0, "1", True, 2, 0, None]) | json_values,
    "action": st.sampled_from(["SUBMIT", "", "delete"]) | json_values,
    "idempotency_key": st.sampled_from(["", "k\x00", "k\n", "\x85", "k" * 513]) | json_values,
    "endpoint": st.sampled_from(["fal-ai/../admin", "/abs/x", "a/b?c=d", "a/.b", "x", "a//b"])
    | st.text(max_size=30)
    | json_values,
    "input": json_values,
    "priority": st.text(max_size=8) | json_values,
    "tenant": st.sampled_from(["", "t\x7f", "t" * 129]) | json_values,
    "metadata": st.dictionaries(st.text(max_size=8), json_values) | json_values,
    "output": st.fixed_dictionaries(
        {}, optional={"bucket": st.text(max_size=70), "prefix": st.text(max_size=12)}
    )
    | json_values,
    "deadline": st.sampled_from(["2026-11-25T12:00:00", "tomorrow", "2026-13-01T00:00:00Z"])
    | st.text(max_size=30)
    | json_values,
}


@st.composite
def hostile_records(draw: st.DrawFn) -> bytes:
    """A valid record with a few fields replaced by hostile values, or dropped."""
    record: dict[str, object] = draw(valid_records)
    for name in draw(st.sets(st.sampled_from(sorted(HOSTILE)), max_size=3)):
        if draw(st.booleans()):
            record[name] = draw(HOSTILE[name])
        else:
            record.pop(name, None)
    return json.dumps(record).encode()


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    """A valid record with a few bytes flipped, inserted or deleted."""
    raw = bytearray(draw(valid))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(raw)))
        edit = draw(st.sampled_from(["flip", "insert", "delete"]))
        if edit == "insert" or not raw:
            raw[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif edit == "delete":
            del raw[min(at, len(raw) - 1)]
        else:
            raw[min(at, len(raw) - 1)] = draw(st.integers(0, 255))
    return bytes(raw)


def check(raw: bytes) -> None:
    record = check_record(raw)
    event("accepted" if record is not None else "refused")


@settings(max_examples=300)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_are_refused_or_read_faithfully(raw: bytes) -> None:
    check(raw)


@settings(max_examples=300)
@given(json_values.map(lambda value: json.dumps(value).encode()))
def test_arbitrary_json_is_refused_or_read_faithfully(raw: bytes) -> None:
    check(raw)


@settings(max_examples=500)
@given(hostile_records())
def test_records_with_hostile_fields_are_refused_or_read_faithfully(raw: bytes) -> None:
    check(raw)


@settings(max_examples=500)
@given(mutated(valid_records.map(lambda record: json.dumps(record).encode())))
def test_mutated_records_are_refused_or_read_faithfully(raw: bytes) -> None:
    check(raw)


def submit(**fields: Any) -> bytes:
    base = {
        "schema_version": 1,
        "action": "submit",
        "idempotency_key": "k",
        "endpoint": "fal-ai/flux/schnell",
        "input": {"prompt": "p"},
    }
    return json.dumps({**base, **fields}).encode()


# Inputs at the edges of what JSON parsers read: numbers beyond float range, dates at the ends
# of the calendar. Anything but a clean refusal would be a poison record for the partition.
KNOWN_BREAKERS = {
    "input-number-beyond-float": submit().replace(b'"p"}', b'"p", "seed": 1e400}'),
    "input-negative-number-beyond-float": submit().replace(b'"p"}', b'"p", "x": -1e999}'),
    "metadata-number-beyond-float": submit().replace(b"{", b'{"metadata": {"m": 1e400}, ', 1),
    "deadline-past-year-9999-in-utc": submit(deadline="9999-12-31T23:59:59-23:59"),
    "deadline-before-year-1-in-utc": submit(deadline="0001-01-01T00:00:00+00:01"),
}


@pytest.mark.parametrize("case", sorted(KNOWN_BREAKERS))
def test_values_beyond_json_or_calendar_range_are_refused(case: str) -> None:
    with pytest.raises(RecordInvalid) as refused:
        parse_request(KNOWN_BREAKERS[case], max_bytes=1 << 20)
    assert refused.value.reason_code == "schema_violation"


def test_libfuzzer_finds_no_record_that_breaks_the_rule(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for n, seed in enumerate(SEEDS):
        (corpus / f"seed-{n}").write_bytes(seed)
    fuzzing = subprocess.run(
        [
            sys.executable,
            str(FUZZ_SCRIPT),
            "-runs=50000",
            "-seed=1",
            "-max_len=2048",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert fuzzing.returncode == 0, fuzzing.stderr.decode(errors="replace")[-4000:]
