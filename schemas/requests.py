"""Request records (`genrelay.requests`): submit a paid generation, or cancel one.

`parse_request` is how the relay reads them: every refusal is a `RecordInvalid` whose
`reason_code` is a stable `DeadLetterReason`, checked in a fixed order so one record always
gets the same code.
"""

import hashlib
import math
from typing import Annotated, Any, Literal, Self

import pydantic_core
from pydantic import Field, JsonValue, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from genrelay.schemas.base import Record, canonical_json
from genrelay.schemas.dead_letter import DeadLetterReason
from genrelay.schemas.fields import (
    BucketName,
    Endpoint,
    IdempotencyKey,
    JsonObject,
    Metadata,
    ObjectPrefix,
    Priority,
    Tenant,
    UtcDatetime,
)

SCHEMA_VERSION = 1

# How many validation errors a refusal message lists; the rest are counted.
_MAX_ERRORS_SHOWN = 5


class OutputTarget(Record):
    """Where the relay stores this request's files; unset parts use the relay's defaults."""

    bucket: BucketName | None = None
    prefix: ObjectPrefix | None = None


class SubmitRequest(Record):
    """Ask for one paid generation, done at most once per idempotency key."""

    schema_version: Literal[1] = 1
    action: Literal["submit"] = "submit"
    idempotency_key: IdempotencyKey
    endpoint: Endpoint
    input: JsonObject
    priority: Priority = "normal"
    tenant: Tenant | None = None
    metadata: Metadata = Field(default_factory=dict)
    output: OutputTarget | None = None
    deadline: UtcDatetime | None = None


class CancelRequest(Record):
    """Cancel the submission with the same idempotency key (ordered after it on its partition)."""

    schema_version: Literal[1] = 1
    action: Literal["cancel"] = "cancel"
    idempotency_key: IdempotencyKey


RequestRecord = Annotated[SubmitRequest | CancelRequest, Field(discriminator="action")]

_REQUEST_ADAPTER: TypeAdapter[RequestRecord] = TypeAdapter(RequestRecord)

_ACTIONS = frozenset({"submit", "cancel"})
_JSON_TYPE_NAMES = {
    list: "array",
    str: "string",
    bool: "boolean",
    int: "number",
    float: "number",
    type(None): "null",
}


class RecordInvalid(ValueError):  # noqa: N818 - the name the relay and producers know it by
    """A record that can never be processed; retrying it cannot help.

    `reason_code` is the machine-readable reason (also the dead-letter reason); `message`
    says what was wrong without echoing the record's content.
    """

    def __init__(self, reason_code: DeadLetterReason, message: str) -> None:
        super().__init__(f"{reason_code}: {message}")
        self.reason_code = reason_code
        self.message = message

    @classmethod
    def from_validation_error(cls, exc: ValidationError) -> Self:
        """Classify a request model's validation failure: a bad endpoint has its own code."""
        errors = exc.errors(include_url=False, include_input=False)
        endpoint_wrong = any(_field_path(error["loc"])[:1] == ("endpoint",) for error in errors)
        reason = (
            DeadLetterReason.INVALID_ENDPOINT
            if endpoint_wrong
            else DeadLetterReason.SCHEMA_VIOLATION
        )
        return cls(reason, _summarize(errors))


def parse_request(raw: bytes, max_bytes: int) -> RequestRecord:
    """Read one request record from its Kafka value.

    Checks run in this order, the first failure deciding the reason code: `oversized`,
    `not_json`, `not_object`, `unsupported_schema_version`, `missing_idempotency_key`, then
    `invalid_endpoint` or `schema_violation`. Unknown fields are ignored.

    Raises:
        RecordInvalid: the record can never be processed.
    """
    if len(raw) > max_bytes:
        raise RecordInvalid(
            DeadLetterReason.OVERSIZED, f"record is {len(raw)} bytes; the limit is {max_bytes}"
        )
    data = _decode_json(raw)
    if not isinstance(data, dict):
        raise RecordInvalid(
            DeadLetterReason.NOT_OBJECT,
            f"the record is a JSON {_JSON_TYPE_NAMES[type(data)]}, not an object",
        )
    _check_schema_version(data)
    _check_idempotency_key_present(data)
    try:
        # Validated from the bytes rather than `data`: strict JSON mode reads ISO-8601 strings
        # as datetimes, which strict Python mode would refuse.
        record = _REQUEST_ADAPTER.validate_json(raw)
    except ValidationError as exc:
        raise RecordInvalid.from_validation_error(exc) from exc
    except OverflowError as exc:  # a datetime whose UTC form leaves the calendar
        raise RecordInvalid(
            DeadLetterReason.SCHEMA_VIOLATION, f"value out of range: {exc}"
        ) from exc
    if isinstance(record, SubmitRequest):
        _check_finite({"input": record.input, "metadata": dict(record.metadata)})
    return record


def _check_finite(value: object, path: str = "") -> None:
    # JSON has no infinities, but a number like 1e400 parses as one; it could never be
    # fingerprinted or sent on, so it is refused like any other schema violation.
    if isinstance(value, float) and not math.isfinite(value):
        raise RecordInvalid(
            DeadLetterReason.SCHEMA_VIOLATION, f"{path or 'a value'}: number out of range"
        )
    if isinstance(value, dict):
        for name, item in value.items():
            _check_finite(item, f"{path}.{name}" if path else str(name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_finite(item, f"{path}[{index}]")


def fingerprint(request: SubmitRequest) -> str:
    """SHA-256 (hex) of the canonical JSON of the paid work: endpoint, input and output target.

    Metadata, priority, tenant and deadline only schedule or label a job, so a resend that
    differs in them alone is the same paid work, not an idempotency conflict.
    """
    output = request.output or OutputTarget()
    work: dict[str, JsonValue] = {
        "endpoint": request.endpoint,
        "input": request.input,
        "output": output.model_dump(mode="json"),
    }
    return hashlib.sha256(canonical_json(work)).hexdigest()


def _decode_json(raw: bytes) -> object:
    try:
        # NaN and Infinity are not JSON; other languages' readers would choke on them.
        return pydantic_core.from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        raise RecordInvalid(DeadLetterReason.NOT_JSON, f"not UTF-8 JSON: {exc}") from exc


def _check_schema_version(data: dict[str, Any]) -> None:
    if "schema_version" not in data:
        raise RecordInvalid(
            DeadLetterReason.UNSUPPORTED_SCHEMA_VERSION, "schema_version is missing"
        )
    version = data["schema_version"]
    # `type(...) is int` because True == 1 in Python but is not a version number.
    if type(version) is not int or version != SCHEMA_VERSION:
        raise RecordInvalid(
            DeadLetterReason.UNSUPPORTED_SCHEMA_VERSION,
            f"schema_version {version!r} is not supported (supported: {SCHEMA_VERSION})",
        )


def _check_idempotency_key_present(data: dict[str, Any]) -> None:
    if data.get("idempotency_key") in (None, ""):
        raise RecordInvalid(
            DeadLetterReason.MISSING_IDEMPOTENCY_KEY, "idempotency_key is missing or empty"
        )


def _field_path(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    # Errors from the discriminated union are located under the action tag first.
    return loc[1:] if loc and loc[0] in _ACTIONS else loc


def _summarize(errors: list[ErrorDetails]) -> str:
    shown = [
        f"{'.'.join(str(part) for part in _field_path(error['loc'])) or 'record'}: {error['msg']}"
        for error in errors[:_MAX_ERRORS_SHOWN]
    ]
    hidden = len(errors) - len(shown)
    return "; ".join(shown) + (f" (and {hidden} more)" if hidden else "")
