"""The base of every record genrelay puts on Kafka, and the records' wire encoding."""

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, GetJsonSchemaHandler, JsonValue
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema


class Record(BaseModel):
    """A versioned record: immutable, unknown fields ignored on read, JSON types not coerced.

    Strict validation keeps pydantic in step with the generated JSON Schema (a string "1" is
    not the integer 1); reading JSON still accepts ISO-8601 strings for datetimes.
    """

    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """Mark constant fields (`schema_version`, `action`) as required on the wire.

        Python fills them in by default, but a reader decides how to parse a record from
        them, so every written record carries them.
        """
        schema = handler.resolve_ref_schema(handler(core_schema))
        properties: dict[str, dict[str, Any]] = schema.get("properties", {})
        required = set(schema.get("required", ()))
        wire_required = [
            name for name, prop in properties.items() if name in required or "const" in prop
        ]
        if wire_required:
            schema["required"] = wire_required
        return schema


R = TypeVar("R", bound=BaseModel)


def to_json_bytes(record: BaseModel) -> bytes:
    """Encode a record as compact UTF-8 JSON, every field included, datetimes in ISO-8601."""
    return record.model_dump_json().encode()


def from_json_bytes(model: type[R], raw: bytes) -> R:
    """Decode and validate one record of type `model`.

    Raises:
        pydantic.ValidationError: `raw` is not JSON or not a valid `model`.
    """
    return model.model_validate_json(raw)


def canonical_json(value: JsonValue) -> bytes:
    """The one byte form of a JSON value: sorted keys, compact separators, UTF-8."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()
