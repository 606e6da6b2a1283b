"""Field types shared by the record families.

Each constraint is written so that pydantic and the generated JSON Schema enforce the same
rule: patterns use only syntax that Rust's regex crate (pydantic), Python's `re` and ECMA-262
(JSON Schema validators) read alike, which is why `\\w` is spelled out as an ASCII class.
"""

from datetime import UTC, datetime
from typing import Annotated, Literal

from minio.helpers import check_bucket_name
from pydantic import AfterValidator, AwareDatetime, JsonValue, StringConstraints

_NO_CONTROL_CHARS = r"^[^\x00-\x1f\x7f-\x9f]+$"

IDEMPOTENCY_KEY_MAX_LENGTH = 512

# A fal endpoint id: owner/app plus optional sub-path. No segment after the owner may start
# with a dot, so "." and ".." can never reach a queue URL.
ENDPOINT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)+$"

IdempotencyKey = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=IDEMPOTENCY_KEY_MAX_LENGTH, pattern=_NO_CONTROL_CHARS
    ),
]
Endpoint = Annotated[str, StringConstraints(max_length=256, pattern=ENDPOINT_PATTERN)]
NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
Tenant = Annotated[str, StringConstraints(max_length=128, pattern=_NO_CONTROL_CHARS)]


def _storable_bucket(name: str) -> str:
    # The rules a pattern cannot say: no "..", ".-" or "-.", not an IP address, no reserved
    # prefix or suffix (minio's own check, as strict as S3's).
    check_bucket_name(name, strict=True, s3_check=True)
    return name


# S3 bucket naming rules, checked on intake so a job is never paid for output it cannot store.
BucketName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"),
    AfterValidator(_storable_bucket),
]


def _no_dot_segments(prefix: str) -> str:
    # The prefix becomes the start of every object key: "." or ".." segments (or an empty
    # one) would let it point somewhere else than it reads.
    if any(segment in {"", ".", ".."} for segment in prefix.strip("/").split("/")):
        raise ValueError("a prefix may not contain empty, '.' or '..' segments")
    return prefix


ObjectPrefix = Annotated[
    str,
    StringConstraints(max_length=512, pattern=_NO_CONTROL_CHARS),
    AfterValidator(_no_dot_segments),
]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]

Priority = Literal["normal", "low"]

MetadataValue = str | int | float | bool
Metadata = dict[str, MetadataValue]
JsonObject = dict[str, JsonValue]


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


# Timestamps must carry an offset (a naive deadline is ambiguous) and are kept in UTC, so
# every record serialises them the same way ("…Z").
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
