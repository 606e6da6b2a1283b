"""Webhook deliveries (`genrelay.webhooks`, internal).

Any replica's HTTP receiver verifies a fal webhook and hands it, as this record keyed by the
idempotency key, to the replica that owns the key's partition.
"""

from typing import Literal

from pydantic import JsonValue

from genrelay.schemas.base import Record
from genrelay.schemas.fields import IdempotencyKey, NonEmptyStr, UtcDatetime


class WebhookDelivery(Record):
    """A verified fal webhook: `ok` is fal's `status == "OK"`.

    `payload` is the model output (or its error body); it is null with `payload_error` set
    when fal could not serialise the output, and the result must then be fetched.
    """

    schema_version: Literal[1] = 1
    idempotency_key: IdempotencyKey
    # The submit attempt whose webhook URL fal called (bound to it by the URL's token).
    attempt: int | None = None
    # The fal account that signed it; `account_pinned`: it is the configured account.
    user_id: str | None = None
    account_pinned: bool = False
    request_id: NonEmptyStr
    gateway_request_id: str | None = None
    ok: bool
    payload: JsonValue = None
    error: str | None = None
    payload_error: str | None = None
    received_at: UtcDatetime
