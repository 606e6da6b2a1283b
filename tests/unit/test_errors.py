"""The exception tree: one root, retryability on the class, the drawing kept honest."""

from __future__ import annotations

import inspect

import pytest

from genrelay.consumer import errors
from genrelay.consumer.errors import (
    DownloadFailed,
    GenrelayError,
    MaybeSent,
    NotSent,
    ObjectMissing,
    Rejected,
    RejectReason,
    StoreError,
    UrlExpired,
    WebhookRejected,
)

EXCEPTIONS = [
    obj
    for _, obj in inspect.getmembers(errors, inspect.isclass)
    if issubclass(obj, Exception) and obj.__module__ == errors.__name__
]


def test_every_error_descends_from_genrelay_error() -> None:
    assert all(issubclass(cls, GenrelayError) for cls in EXCEPTIONS)


def test_the_docstring_draws_every_error() -> None:
    drawing = errors.__doc__ or ""
    assert [cls.__name__ for cls in EXCEPTIONS if cls.__name__ not in drawing] == []


@pytest.mark.parametrize(
    ("cls", "retryable"),
    [
        (NotSent, True),
        (MaybeSent, False),
        (Rejected, False),
        (DownloadFailed, True),
        (UrlExpired, False),
        (StoreError, True),
        (ObjectMissing, False),
    ],
)
def test_retryability_is_a_property_of_the_class(cls: type[GenrelayError], retryable: bool) -> None:
    assert cls.retryable is retryable


def test_not_sent_carries_the_providers_retry_after() -> None:
    assert NotSent("429", retry_after=2.5).retry_after == 2.5
    assert NotSent("connect refused").retry_after is None


def test_rejected_carries_status_type_and_message() -> None:
    exc = Rejected("bad key", status_code=401, error_type="http_401")
    assert (exc.status_code, exc.error_type, exc.message) == (401, "http_401", "bad key")


@pytest.mark.parametrize("reason", list(RejectReason))
def test_every_webhook_rejection_is_a_4xx(reason: RejectReason) -> None:
    assert 400 <= WebhookRejected(reason).status_code < 500


def test_webhook_reject_reasons_are_stable_codes() -> None:
    assert {reason.value for reason in RejectReason} >= {
        "missing_header",
        "stale_timestamp",
        "bad_signature",
        "body_too_large",
        "bad_token",
        "unknown_key",
    }


def test_webhook_rejected_exposes_reason_and_detail() -> None:
    exc = WebhookRejected(RejectReason.BAD_TOKEN, "wrong key")
    assert exc.reason is RejectReason.BAD_TOKEN
    assert exc.status_code == 403
    assert str(exc) == "bad_token: wrong key"
