"""The webhook endpoint needs a valid fal signature and the URL token of the key it names.

Already covered:
- `tests/unit/test_webhook_signature.py`: each header required, malformed headers, the
  timestamp window both ways, unknown signing keys, a changed or re-serialised body, the
  token binding a URL to its key and secret (`test_genuine_delivery_replayed_to_another_
  keys_url_is_refused`, `test_token_depends_on_the_secret`), short secrets refused;
- `tests/relay/test_webhook_receiver.py`: through the running relay, a bad signature, a stale
  timestamp, an unknown signing key, missing headers, an unknown key's URL, no key, an
  oversized body, a genuine delivery replayed to another key's URL, header and body ids that
  differ: each a 4xx with the webhooks and ledger topics unchanged; a genuine delivery
  reaches the webhooks topic;
- `tests/security/test_fuzz_webhooks.py`: properties over any query, headers and body.

Added here: a genuinely signed delivery whose token is not exactly its key's (another
secret's, truncated, extended, re-cased, padded, missing, or its key smuggled after it) is
refused and never handed off, in process and through the running relay.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

import pytest

from genrelay.consumer.provider.webhook_signature import WebhookToken
from tests.security.conftest import Service
from tests.security.helpers import (
    WEBHOOK_SECRET,
    as_asgi,
    asgi_call,
    fal_body,
    in_process_receiver,
    signed,
)

ALPHA = "auth/alpha"
BETA = "auth/beta"
OTHER_DEPLOYMENT = WebhookToken(b"another-deployment-secret-0123456789abcdef")

Query = Callable[[WebhookToken], str]


ATTEMPT = ("attempt", "1")


def query(*pairs: tuple[str, str]) -> str:
    return "&".join(f"{name}={quote(value, safe='')}" for name, value in pairs)


FORGED: dict[str, tuple[Query, int]] = {
    "another-keys-token": (
        lambda t: query(("key", BETA), ATTEMPT, ("token", t.token(ALPHA, 1))),
        403,
    ),
    "another-secrets-token": (
        lambda t: query(("key", ALPHA), ATTEMPT, ("token", OTHER_DEPLOYMENT.token(ALPHA, 1))),
        403,
    ),
    "truncated-token": (
        lambda t: query(("key", ALPHA), ATTEMPT, ("token", t.token(ALPHA, 1)[:-1])),
        403,
    ),
    "extended-token": (
        lambda t: query(("key", ALPHA), ATTEMPT, ("token", t.token(ALPHA, 1) + "A")),
        403,
    ),
    "re-cased-token": (
        lambda t: query(("key", ALPHA), ATTEMPT, ("token", t.token(ALPHA, 1).swapcase())),
        403,
    ),
    "padded-token": (
        lambda t: query(("key", ALPHA), ATTEMPT, ("token", t.token(ALPHA, 1) + "=")),
        403,
    ),
    "re-cased-key": (
        lambda t: query(("key", ALPHA.upper()), ATTEMPT, ("token", t.token(ALPHA, 1))),
        403,
    ),
    "key-with-a-trailing-space": (
        lambda t: query(("key", ALPHA + " "), ATTEMPT, ("token", t.token(ALPHA, 1))),
        403,
    ),
    "key-smuggled-after-the-token": (
        lambda t: query(("key", ALPHA), ATTEMPT, ("token", t.token(ALPHA, 1)), ("key", BETA)),
        403,
    ),
    "empty-token": (lambda t: query(("key", ALPHA), ATTEMPT, ("token", "")), 404),
    "key-without-token": (lambda t: query(("key", ALPHA), ATTEMPT), 404),
    "token-without-key": (lambda t: query(ATTEMPT, ("token", t.token(ALPHA, 1))), 404),
    "token-without-attempt": (lambda t: query(("key", ALPHA), ("token", t.token(ALPHA, 1))), 404),
    "another-attempts-token": (
        lambda t: query(("key", ALPHA), ("attempt", "2"), ("token", t.token(ALPHA, 1))),
        403,
    ),
    "attempt-not-a-number": (
        lambda t: query(("key", ALPHA), ("attempt", "1.0"), ("token", t.token(ALPHA, 1))),
        403,
    ),
}


async def test_a_genuine_delivery_with_its_keys_token_is_handed_off_under_that_key() -> None:
    body = fal_body()
    async with in_process_receiver() as receiver:
        url_query = query(
            ("key", ALPHA), ATTEMPT, ("token", WebhookToken(WEBHOOK_SECRET).token(ALPHA, 1))
        )
        answer = await asgi_call(
            receiver.app, query=url_query.encode(), headers=as_asgi(signed(body)), chunks=[body]
        )
    assert answer.status == 200
    assert [delivery.idempotency_key for delivery in receiver.handoffs] == [ALPHA]


@pytest.mark.parametrize("case", sorted(FORGED))
async def test_a_genuine_delivery_without_its_keys_exact_token_is_refused(case: str) -> None:
    build, status = FORGED[case]
    body = fal_body()
    async with in_process_receiver() as receiver:
        url_query = build(WebhookToken(WEBHOOK_SECRET)).encode()
        answer = await asgi_call(
            receiver.app, query=url_query, headers=as_asgi(signed(body)), chunks=[body]
        )
    assert answer.status == status
    assert receiver.handoffs == []


@pytest.mark.integration
async def test_forged_tokens_are_refused_by_the_running_relay_and_change_nothing(
    service: Service,
) -> None:
    tokens = WebhookToken(service.settings.webhook_secret.get_secret_value().encode())
    body = fal_body()
    before = await service.written()
    statuses = {}
    for case, (build, _) in FORGED.items():
        response = await service.http.post(
            f"/webhooks/fal?{build(tokens)}", content=body, headers=signed(body)
        )
        statuses[case] = response.status_code
    assert statuses == {case: status for case, (_, status) in FORGED.items()}
    assert await service.written() == before
