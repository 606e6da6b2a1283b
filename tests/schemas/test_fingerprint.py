"""The payload fingerprint covers exactly the paid work: endpoint, input and output target."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from hypothesis import assume, given
from hypothesis import strategies as st
from pydantic import JsonValue

from genrelay.schemas import OutputTarget, SubmitRequest, fingerprint

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=6)


def submit(input: dict[str, JsonValue], **changes: Any) -> SubmitRequest:
    fields: dict[str, Any] = {
        "idempotency_key": "k",
        "endpoint": "fal-ai/flux/schnell",
        "input": input,
    }
    return SubmitRequest.model_validate({**fields, **changes})


def reordered(value: JsonValue) -> JsonValue:
    if isinstance(value, dict):
        return {key: reordered(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [reordered(item) for item in value]
    return value


@given(json_objects)
def test_key_order_in_input_does_not_change_the_fingerprint(
    input: dict[str, JsonValue],
) -> None:
    shuffled = reordered(input)
    assert isinstance(shuffled, dict)
    assert fingerprint(submit(input)) == fingerprint(submit(shuffled))


@given(json_objects, st.text(max_size=8), json_values)
def test_any_change_to_input_changes_the_fingerprint(
    input: dict[str, JsonValue], key: str, value: JsonValue
) -> None:
    assume(key not in input)
    extended = {**input, key: value}
    assert fingerprint(submit(input)) != fingerprint(submit(extended))


def test_fingerprint_ignores_scheduling_and_labels() -> None:
    plain = submit({"prompt": "a lighthouse", "seed": 7})
    relabelled = submit(
        {"seed": 7, "prompt": "a lighthouse"},
        idempotency_key="another-key",
        metadata={"order_id": "42"},
        priority="low",
        tenant="shop",
        deadline=datetime(2026, 11, 25, tzinfo=UTC),
    )
    assert fingerprint(plain) == fingerprint(relabelled)


def test_fingerprint_changes_with_the_work() -> None:
    base = submit({"prompt": "a lighthouse", "seed": 7})
    assert fingerprint(base) != fingerprint(submit({"prompt": "a lighthouse", "seed": 8}))
    assert fingerprint(base) != fingerprint(
        submit({"prompt": "a lighthouse", "seed": 7}, endpoint="fal-ai/flux/dev")
    )
    assert fingerprint(base) != fingerprint(
        submit({"prompt": "a lighthouse", "seed": 7}, output=OutputTarget(prefix="shop"))
    )


def test_no_output_target_is_the_same_as_an_empty_one() -> None:
    input: dict[str, JsonValue] = {"prompt": "a lighthouse"}
    assert fingerprint(submit(input)) == fingerprint(submit(input, output=OutputTarget()))


def test_fingerprint_is_sha256_hex_of_the_canonical_work() -> None:
    # Pinned so the relay's stored fingerprints stay comparable across releases.
    request = submit({"seed": 7, "prompt": "a lighthouse"})
    canonical = (
        b'{"endpoint":"fal-ai/flux/schnell","input":{"prompt":"a lighthouse","seed":7},'
        b'"output":{"bucket":null,"prefix":null}}'
    )
    assert fingerprint(request) == hashlib.sha256(canonical).hexdigest()
