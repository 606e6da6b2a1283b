"""The one exception tree of genrelay.

Adapters translate their library's errors (httpx, minio, urllib3, cryptography) into these
classes at the boundary, with ``raise … from exc``, so the core never sees a foreign
exception. Whether an error may be retried is a property of its class (``retryable``)::

    GenrelayError
    ├── ClosedError            a resource was used after it was closed
    ├── Fenced                 this replica no longer owns the partition: write and post nothing
    ├── RecordTooLarge         a record exceeds what the broker accepts; it was not written
    ├── ProviderError
    │   ├── NotSent            provably never reached the provider: retry freely
    │   │   └── RateLimited    a 429: wait at least its Retry-After
    │   ├── MaybeSent          may have been accepted: never re-POST, reconcile
    │   ├── Rejected           the provider answered definitively: do not retry
    │   ├── InvalidEndpoint    the endpoint id or a URL is malformed: nothing was sent
    │   ├── NotFound           the provider does not know the request
    │   └── ResultExpired      the request completed, but its result is gone
    ├── ArtifactError
    │   ├── DownloadRefused    forbidden by policy: host, address, scheme, size
    │   ├── DownloadFailed     transient: 5xx, transport error, truncated body
    │   ├── UrlExpired         403/404/410: refetch the result for fresh URLs
    │   └── Unstorable         no valid object key or reference for it: retrying cannot help
    ├── StoreError             the object store failed; keys are deterministic, so retry
    │   ├── StoreRefused       refused for good: permissions, quota, a bucket not ours
    │   └── ObjectMissing      the object does not exist
    ├── KeysUnavailable        no webhook verification keys could be loaded
    └── WebhookRejected        a webhook delivery is refused with a 4xx and a reason code

``NotSent`` and ``MaybeSent`` matter for the paid submit. A read (status, result, cancel)
is idempotent, so the poller may repeat it after either.
"""

# Names say what happened, as httpx's do (ConnectTimeout, ReadError), not "…Error".
# ruff: noqa: N818

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class GenrelayError(Exception):
    """Base of every error genrelay raises on purpose."""

    retryable: ClassVar[bool] = False


class ClosedError(GenrelayError):
    """A resource was used after ``aclose()``."""


class Fenced(GenrelayError):
    """This replica no longer owns a partition: it may neither write its state nor act for its keys.

    Raised when the broker refuses the partition's transactional producer (a newer owner has
    initialised the same transactional id) or when the partition was released here.
    """

    def __init__(self, partition: int, reason: str) -> None:
        super().__init__(f"partition {partition} is no longer owned here: {reason}")
        self.partition = partition


class RecordTooLarge(GenrelayError):
    """A record is larger than the producer and broker accept; it was not written."""

    def __init__(self, topic: str, size: int) -> None:
        super().__init__(f"a {size}-byte record for {topic} exceeds the record size limit")
        self.size = size


class ProviderError(GenrelayError):
    """The inference provider could not be asked, or answered with an error."""


class NotSent(ProviderError):
    """The request provably never reached the provider, so sending it again cannot bill twice."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(NotSent):
    """The provider answered 429: back-pressure, not a failure of the request."""


class MaybeSent(ProviderError):
    """The provider may have accepted the request; a second POST could bill twice."""


class Rejected(ProviderError):
    """The provider refused the request definitively; sending it again gets the same answer."""

    def __init__(self, message: str, *, status_code: int, error_type: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error_type = error_type
        self.message = message


class InvalidEndpoint(ProviderError):
    """The endpoint id or a request URL is malformed; nothing was sent, and resending fails."""


class NotFound(ProviderError):
    """The provider does not know the request (unknown id, or forgotten)."""


class ResultExpired(ProviderError):
    """The request completed but its result or files are gone; resubmitting would bill again."""


class ArtifactError(GenrelayError):
    """An output file could not be copied."""


class DownloadRefused(ArtifactError):
    """Policy forbids the download: host not allowed, private address, scheme, or size."""


class DownloadFailed(ArtifactError):
    """The download failed in a way that may pass on a later attempt."""

    retryable = True

    def __init__(
        self, message: str, *, status_code: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after = retry_after


class UrlExpired(ArtifactError):
    """The file URL no longer works; fetch the result again for fresh URLs."""

    def __init__(self, message: str, *, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class Unstorable(ArtifactError, ValueError):
    """A file cannot be named in the object store (the key would be too long, a prefix
    climbs out of itself, the result changed shape): retrying cannot help."""


class StoreError(GenrelayError):
    """The object store failed. Object keys are deterministic, so a retry overwrites."""

    retryable = True


class StoreRefused(StoreError):
    """The object store refused in a way a retry cannot fix (AccessDenied, a quota, a bucket
    name taken by another account)."""

    retryable = False


class ObjectMissing(StoreError):
    """The object does not exist."""

    retryable = False


class KeysUnavailable(GenrelayError):
    """No webhook verification keys could be loaded; the sender should retry later."""

    retryable = True


class RejectReason(StrEnum):
    """Stable, machine-readable reasons for refusing a webhook delivery."""

    MISSING_HEADER = "missing_header"
    MALFORMED_HEADER = "malformed_header"
    STALE_TIMESTAMP = "stale_timestamp"
    BAD_SIGNATURE = "bad_signature"
    BODY_TOO_LARGE = "body_too_large"
    MALFORMED_BODY = "malformed_body"
    BAD_TOKEN = "bad_token"
    UNKNOWN_KEY = "unknown_key"
    FOREIGN_ACCOUNT = "foreign_account"


_REJECT_STATUS: dict[RejectReason, int] = {
    RejectReason.MISSING_HEADER: 400,
    RejectReason.MALFORMED_HEADER: 400,
    RejectReason.STALE_TIMESTAMP: 401,
    RejectReason.BAD_SIGNATURE: 401,
    RejectReason.BODY_TOO_LARGE: 413,
    RejectReason.MALFORMED_BODY: 400,
    RejectReason.BAD_TOKEN: 403,
    RejectReason.UNKNOWN_KEY: 404,
    RejectReason.FOREIGN_ACCOUNT: 403,
}


class WebhookRejected(GenrelayError):
    """A webhook delivery is refused; the receiver answers ``status_code`` and changes nothing."""

    def __init__(self, reason: RejectReason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else str(reason))
        self.reason = reason
        self.status_code = _REJECT_STATUS[reason]
