"""Request records: every refusal has its stable reason code; valid records round-trip."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from genrelay.schemas import (
    CancelRequest,
    DeadLetterReason,
    OutputTarget,
    RecordInvalid,
    SubmitRequest,
    parse_request,
    to_json_bytes,
)

MAX_BYTES = 4096
SUBMIT = {
    "schema_version": 1,
    "action": "submit",
    "idempotency_key": "order-42/hero",
    "endpoint": "fal-ai/flux/schnell",
    "input": {"prompt": "a lighthouse at dawn", "seed": 7},
}


def encode(record: object) -> bytes:
    return json.dumps(record).encode()


def with_fields(**changes: object) -> bytes:
    return encode({**SUBMIT, **changes})


def without(field: str) -> bytes:
    return encode({name: value for name, value in SUBMIT.items() if name != field})


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        pytest.param(with_fields(input={"prompt": "x" * MAX_BYTES}), "oversized", id="oversized"),
        pytest.param(b'{"action": "submit"', "not_json", id="truncated-json"),
        pytest.param(b"\xff\xfe{}", "not_json", id="not-utf8"),
        pytest.param(
            b'{"schema_version": 1, "action": "submit", "idempotency_key": "k", '
            b'"endpoint": "a/b", "input": {"x": NaN}}',
            "not_json",
            id="nan-is-not-json",
        ),
        pytest.param(b'["submit"]', "not_object", id="array"),
        pytest.param(b'"submit"', "not_object", id="string"),
        pytest.param(b"null", "not_object", id="null"),
        pytest.param(without("schema_version"), "unsupported_schema_version", id="no-version"),
        pytest.param(with_fields(schema_version=2), "unsupported_schema_version", id="v2"),
        pytest.param(with_fields(schema_version="1"), "unsupported_schema_version", id="str"),
        pytest.param(with_fields(schema_version=True), "unsupported_schema_version", id="bool"),
        pytest.param(without("idempotency_key"), "missing_idempotency_key", id="no-key"),
        pytest.param(with_fields(idempotency_key=""), "missing_idempotency_key", id="empty-key"),
        pytest.param(with_fields(idempotency_key=None), "missing_idempotency_key", id="null-key"),
        pytest.param(without("endpoint"), "invalid_endpoint", id="no-endpoint"),
        pytest.param(with_fields(endpoint="flux"), "invalid_endpoint", id="no-owner"),
        pytest.param(with_fields(endpoint="fal-ai/../admin"), "invalid_endpoint", id="dots"),
        pytest.param(with_fields(endpoint="fal-ai/flux?x=1"), "invalid_endpoint", id="query"),
        pytest.param(with_fields(endpoint="/fal-ai/flux"), "invalid_endpoint", id="leading-/"),
        pytest.param(with_fields(endpoint=42), "invalid_endpoint", id="endpoint-number"),
        pytest.param(with_fields(action="delete"), "schema_violation", id="unknown-action"),
        pytest.param(without("action"), "schema_violation", id="no-action"),
        pytest.param(without("input"), "schema_violation", id="no-input"),
        pytest.param(with_fields(input=["prompt"]), "schema_violation", id="input-array"),
        pytest.param(with_fields(idempotency_key=42), "schema_violation", id="key-number"),
        pytest.param(with_fields(idempotency_key="a\nb"), "schema_violation", id="key-control"),
        pytest.param(with_fields(idempotency_key="k" * 513), "schema_violation", id="key-long"),
        pytest.param(with_fields(priority="urgent"), "schema_violation", id="priority"),
        pytest.param(with_fields(metadata={"a": {"b": 1}}), "schema_violation", id="nested-meta"),
        pytest.param(with_fields(output={"bucket": "Bad_Bucket"}), "schema_violation", id="bkt"),
        pytest.param(with_fields(output={"bucket": "a..b"}), "schema_violation", id="bkt-dots"),
        pytest.param(with_fields(output={"bucket": "a.-b"}), "schema_violation", id="bkt-dot-dash"),
        pytest.param(
            with_fields(output={"bucket": "10.20.30.40"}), "schema_violation", id="bkt-ip"
        ),
        pytest.param(with_fields(output={"bucket": "xn--abc"}), "schema_violation", id="bkt-xn"),
        pytest.param(
            with_fields(output={"bucket": "ab-s3alias"}), "schema_violation", id="bkt-alias"
        ),
        pytest.param(with_fields(deadline="2026-11-25T12:00:00"), "schema_violation", id="naive"),
        pytest.param(with_fields(deadline=1764072000), "schema_violation", id="epoch-deadline"),
    ],
)
def test_each_refusal_has_its_reason_code(raw: bytes, reason: str) -> None:
    with pytest.raises(RecordInvalid) as refused:
        parse_request(raw, MAX_BYTES)
    assert refused.value.reason_code == reason
    assert refused.value.message


def test_reason_codes_are_the_published_strings() -> None:
    assert {reason.value for reason in DeadLetterReason} == {
        "not_json",
        "not_object",
        "unsupported_schema_version",
        "missing_idempotency_key",
        "invalid_endpoint",
        "schema_violation",
        "oversized",
        "idempotency_conflict",
    }


def test_checks_run_in_a_fixed_order() -> None:
    # Wrong version, no key and a bad endpoint at once: the version is reported.
    raw = encode({"schema_version": 9, "action": "submit", "endpoint": "x"})
    with pytest.raises(RecordInvalid) as refused:
        parse_request(raw, MAX_BYTES)
    assert refused.value.reason_code is DeadLetterReason.UNSUPPORTED_SCHEMA_VERSION


def test_refusal_message_names_the_field_not_the_content() -> None:
    secret = "do-not-echo-this-prompt"
    with pytest.raises(RecordInvalid) as refused:
        parse_request(with_fields(input=[secret]), MAX_BYTES)
    assert "input" in refused.value.message
    assert secret not in str(refused.value)


def test_a_record_exactly_at_the_limit_is_accepted() -> None:
    raw = encode(SUBMIT)
    assert isinstance(parse_request(raw, len(raw)), SubmitRequest)
    with pytest.raises(RecordInvalid):
        parse_request(raw, len(raw) - 1)


def test_the_design_examples_parse() -> None:
    submit = parse_request(
        encode(
            {
                **SUBMIT,
                "priority": "normal",
                "tenant": "shop",
                "metadata": {"order_id": "42"},
                "output": {"bucket": "genrelay", "prefix": "shop"},
                "deadline": "2026-11-25T12:00:00Z",
            }
        ),
        MAX_BYTES,
    )
    cancel = parse_request(
        b'{"schema_version": 1, "action": "cancel", "idempotency_key": "order-42/hero"}',
        MAX_BYTES,
    )
    assert isinstance(submit, SubmitRequest)
    assert submit.output == OutputTarget(bucket="genrelay", prefix="shop")
    assert submit.deadline == datetime(2026, 11, 25, 12, tzinfo=UTC)
    assert cancel == CancelRequest(idempotency_key="order-42/hero")


def test_only_the_contract_fields_are_required() -> None:
    request = parse_request(encode(SUBMIT), MAX_BYTES)
    assert isinstance(request, SubmitRequest)
    assert request.priority == "normal"
    assert request.tenant is None
    assert request.metadata == {}
    assert request.output is None
    assert request.deadline is None


def test_unknown_fields_are_ignored_on_read() -> None:
    request = parse_request(with_fields(callback="https://example.test", future={"x": 1}), 4096)
    assert request == parse_request(encode(SUBMIT), MAX_BYTES)


def test_endpoints_with_sub_paths_and_versions_are_valid() -> None:
    for endpoint in ("fal-ai/flux/dev", "fal-ai/flux-pro/v1.1-ultra", "owner/app/a/b_c"):
        request = parse_request(with_fields(endpoint=endpoint), MAX_BYTES)
        assert isinstance(request, SubmitRequest)
        assert request.endpoint == endpoint


def test_round_trip_keeps_every_field_and_writes_utc() -> None:
    original = SubmitRequest(
        idempotency_key="order-42/hero",
        endpoint="fal-ai/flux/schnell",
        input={"prompt": "a lighthouse", "seed": 7, "sizes": [1.5, None, True]},
        priority="low",
        tenant="shop",
        metadata={"order_id": "42", "attempt": 2, "vip": True},
        output=OutputTarget(bucket="genrelay", prefix="shop"),
        deadline=datetime(2026, 11, 25, 14, tzinfo=timezone(timedelta(hours=2))),
    )
    raw = to_json_bytes(original)
    assert b'"deadline":"2026-11-25T12:00:00Z"' in raw
    assert parse_request(raw, MAX_BYTES) == original
