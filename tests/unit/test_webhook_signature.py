"""Webhook proof: fal's Ed25519 signature, the JWKS cache behind it, and our URL token."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from genrelay.consumer.errors import KeysUnavailable, RejectReason, WebhookRejected
from genrelay.consumer.provider.webhook_signature import (
    ATTEMPT_PARAM,
    KEY_PARAM,
    TOKEN_PARAM,
    JwksCache,
    WebhookToken,
    verify_delivery,
    verify_fal_webhook,
)

# The self-made vector of reference/fal-api.md §5.3.
VECTOR_X = "iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w"
VECTOR_BODY = (
    b'{"request_id":"req-1","gateway_request_id":"req-1","status":"OK","payload":{"images":[]}}'
)
VECTOR_HEADERS = {
    "X-Fal-Webhook-Request-Id": "req-1",
    "X-Fal-Webhook-User-Id": "user-1",
    "X-Fal-Webhook-Timestamp": "1700000000",
    "X-Fal-Webhook-Signature": (
        "e0e6365143af483cc61132397715a3d27f9289b4788aecbb5b8493cb8723c2ba"
        "01966ad629db5525a4102aa98b5f84e8e0d14742df0007f17f1f24380259ef08"
    ),
}
NOW = 1_700_000_000.0
JWKS_URL = "https://keys.example/.well-known/jwks.json"


def public_key(x: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(x + "=" * (-len(x) % 4)))


def jwk(key: Ed25519PrivateKey) -> dict[str, str]:
    raw = key.public_key().public_bytes_raw()
    return {"kty": "OKP", "crv": "Ed25519", "x": base64.urlsafe_b64encode(raw).decode().rstrip("=")}


def signed(key: Ed25519PrivateKey, body: bytes, *, timestamp: int = int(NOW)) -> dict[str, str]:
    message = f"req-7\nuser-7\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()
    return {
        "x-fal-webhook-request-id": "req-7",
        "x-fal-webhook-user-id": "user-7",
        "x-fal-webhook-timestamp": str(timestamp),
        "x-fal-webhook-signature": key.sign(message).hex(),
    }


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Jwks:
    """A JWKS endpoint whose key set (or failure) the test controls."""

    def __init__(self, *keys: Ed25519PrivateKey) -> None:
        self.keys = list(keys)
        self.fetches = 0
        self.failing = False
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.fetches += 1
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            return httpx.Response(503)
        extra = {"kty": "RSA", "n": "AQAB", "e": "AQAB"}
        return httpx.Response(200, json={"keys": [extra, *(jwk(k) for k in self.keys)]})


def cache_for(jwks: Jwks, clock: Clock, **options: float) -> JwksCache:
    client = httpx.AsyncClient(transport=httpx.MockTransport(jwks))
    return JwksCache(client, url=JWKS_URL, clock=clock, **options)


# --- the signature ------------------------------------------------------------------------


def test_reference_vector_verifies() -> None:
    verify_fal_webhook(VECTOR_HEADERS, VECTOR_BODY, keys=[public_key(VECTOR_X)], now=NOW)


def test_reference_vector_key_is_the_documented_seed() -> None:
    seed_key = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
    assert jwk(seed_key)["x"] == VECTOR_X


def test_a_changed_body_breaks_the_signature() -> None:
    with pytest.raises(WebhookRejected) as caught:
        verify_fal_webhook(
            VECTOR_HEADERS,
            VECTOR_BODY.replace(b"OK", b"ERROR"),
            keys=[public_key(VECTOR_X)],
            now=NOW,
        )
    assert caught.value.reason is RejectReason.BAD_SIGNATURE
    assert caught.value.status_code == 401


def test_a_reserialised_body_breaks_the_signature() -> None:
    spaced = VECTOR_BODY.replace(b",", b", ")
    with pytest.raises(WebhookRejected, match="bad_signature"):
        verify_fal_webhook(VECTOR_HEADERS, spaced, keys=[public_key(VECTOR_X)], now=NOW)


def test_any_key_of_the_set_may_have_signed() -> None:
    others = [Ed25519PrivateKey.generate().public_key() for _ in range(3)]
    verify_fal_webhook(VECTOR_HEADERS, VECTOR_BODY, keys=[*others, public_key(VECTOR_X)], now=NOW)


def test_a_signature_by_an_unknown_key_is_refused() -> None:
    stranger = Ed25519PrivateKey.generate()
    with pytest.raises(WebhookRejected, match="bad_signature"):
        verify_fal_webhook(signed(stranger, b"{}"), b"{}", keys=[public_key(VECTOR_X)], now=NOW)


@pytest.mark.parametrize("skew", [-300, 0, 300])
def test_timestamp_within_tolerance_is_accepted(skew: int) -> None:
    verify_fal_webhook(VECTOR_HEADERS, VECTOR_BODY, keys=[public_key(VECTOR_X)], now=NOW + skew)


@pytest.mark.parametrize("skew", [-301, 301, 86_400])
def test_stale_or_future_timestamp_is_refused(skew: int) -> None:
    with pytest.raises(WebhookRejected) as caught:
        verify_fal_webhook(VECTOR_HEADERS, VECTOR_BODY, keys=[public_key(VECTOR_X)], now=NOW + skew)
    assert caught.value.reason is RejectReason.STALE_TIMESTAMP


@pytest.mark.parametrize("missing", list(VECTOR_HEADERS))
def test_each_header_is_required(missing: str) -> None:
    headers = {name: value for name, value in VECTOR_HEADERS.items() if name != missing}
    with pytest.raises(WebhookRejected) as caught:
        verify_fal_webhook(headers, VECTOR_BODY, keys=[public_key(VECTOR_X)], now=NOW)
    assert caught.value.reason is RejectReason.MISSING_HEADER
    assert caught.value.status_code == 400


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Fal-Webhook-Timestamp", "1700000000.5"),
        ("X-Fal-Webhook-Timestamp", "-1"),
        ("X-Fal-Webhook-Signature", "zz" * 64),
        ("X-Fal-Webhook-Signature", "ab" * 63),
    ],
)
def test_malformed_header_is_refused(header: str, value: str) -> None:
    headers = {**VECTOR_HEADERS, header: value}
    with pytest.raises(WebhookRejected) as caught:
        verify_fal_webhook(headers, VECTOR_BODY, keys=[public_key(VECTOR_X)], now=NOW)
    assert caught.value.reason is RejectReason.MALFORMED_HEADER


def test_header_names_are_matched_case_insensitively() -> None:
    lowered = {name.lower(): value for name, value in VECTOR_HEADERS.items()}
    verify_fal_webhook(lowered, VECTOR_BODY, keys=[public_key(VECTOR_X)], now=NOW)


# --- the JWKS cache -----------------------------------------------------------------------


async def test_keys_are_fetched_once_and_cached_for_the_ttl() -> None:
    key = Ed25519PrivateKey.generate()
    jwks, clock = Jwks(key), Clock()
    cache = cache_for(jwks, clock, ttl=3600)

    first = await cache.keys()
    clock.now = 3599
    assert await cache.keys() is first
    assert jwks.fetches == 1
    assert [k.public_bytes_raw() for k in first] == [key.public_key().public_bytes_raw()]

    clock.now = 3600
    await cache.keys()
    assert jwks.fetches == 2


def test_ttl_beyond_a_day_is_refused() -> None:
    with pytest.raises(ValueError, match="ttl"):
        JwksCache(httpx.AsyncClient(), ttl=24 * 3600 + 1)


async def test_concurrent_callers_share_one_fetch() -> None:
    jwks, clock = Jwks(Ed25519PrivateKey.generate()), Clock()
    jwks.gate = asyncio.Event()
    cache = cache_for(jwks, clock)

    callers = [asyncio.create_task(cache.keys()) for _ in range(20)]
    await jwks.entered.wait()
    jwks.gate.set()
    results = await asyncio.gather(*callers)

    assert jwks.fetches == 1
    assert all(result is results[0] for result in results)


async def test_a_failed_refresh_keeps_the_previous_keys() -> None:
    jwks, clock = Jwks(Ed25519PrivateKey.generate()), Clock()
    cache = cache_for(jwks, clock, ttl=3600)
    before = await cache.keys()

    jwks.failing = True
    clock.now = 7200
    assert await cache.keys() is before
    assert jwks.fetches == 2


async def test_an_outage_is_not_hammered() -> None:
    jwks, clock = Jwks(Ed25519PrivateKey.generate()), Clock()
    jwks.failing = True
    cache = cache_for(jwks, clock, min_refresh_interval=60)

    for _ in range(5):
        with pytest.raises(KeysUnavailable):
            await cache.keys()
    assert jwks.fetches == 1

    jwks.failing = False
    clock.now = 60
    assert len(await cache.keys()) == 1


async def test_rotated_key_is_picked_up_by_one_forced_refresh() -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    jwks, clock = Jwks(old), Clock()
    cache = cache_for(jwks, clock, min_refresh_interval=60)
    await cache.keys()

    jwks.keys = [new]
    clock.now = 61
    await verify_delivery(signed(new, b"{}"), b"{}", jwks=cache, now=NOW)
    assert jwks.fetches == 2


async def test_bad_signatures_cannot_make_us_hammer_the_jwks() -> None:
    jwks, clock = Jwks(Ed25519PrivateKey.generate()), Clock()
    cache = cache_for(jwks, clock, min_refresh_interval=60)
    forged = signed(Ed25519PrivateKey.generate(), b"{}")
    await cache.keys()

    clock.now = 61
    for _ in range(10):
        with pytest.raises(WebhookRejected, match="bad_signature"):
            await verify_delivery(forged, b"{}", jwks=cache, now=NOW)
    assert jwks.fetches == 2


async def test_malformed_deliveries_never_reach_the_jwks() -> None:
    jwks, clock = Jwks(Ed25519PrivateKey.generate()), Clock()
    cache = cache_for(jwks, clock)
    with pytest.raises(WebhookRejected, match="missing_header"):
        await verify_delivery({}, b"{}", jwks=cache, now=NOW)
    assert jwks.fetches == 0


async def test_genuine_delivery_verifies_through_the_cache() -> None:
    key = Ed25519PrivateKey.generate()
    cache = cache_for(Jwks(key), Clock())
    await verify_delivery(signed(key, b'{"a":1}'), b'{"a":1}', jwks=cache, now=NOW)


# --- the URL token ------------------------------------------------------------------------

SECRET = b"s" * 32


def query_of(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


@pytest.mark.parametrize("key", ["order-42/hero", "a&b=c", "ключ", "../x"])
def test_webhook_url_carries_the_key_its_attempt_and_a_token_that_checks(key: str) -> None:
    tokens = WebhookToken(SECRET)
    query = query_of(tokens.build_webhook_url("https://relay.example/webhooks/fal", key, 3))
    assert query[KEY_PARAM] == key
    assert tokens.check_token(query[KEY_PARAM], query[ATTEMPT_PARAM], query[TOKEN_PARAM]) == 3


def test_genuine_delivery_replayed_to_another_keys_url_is_refused() -> None:
    tokens = WebhookToken(SECRET)
    url = tokens.build_webhook_url("https://relay.example/h", "key-a", 1)
    with pytest.raises(WebhookRejected) as caught:
        tokens.check_token("key-b", "1", query_of(url)[TOKEN_PARAM])
    assert caught.value.reason is RejectReason.BAD_TOKEN


@pytest.mark.parametrize("attempt", ["2", "0", "-1", "1 ", "\uff11", "9" * 12])
def test_a_token_is_good_for_its_own_attempt_only(attempt: str) -> None:
    tokens = WebhookToken(SECRET)
    token = query_of(tokens.build_webhook_url("https://relay.example/h", "k", 1))[TOKEN_PARAM]
    with pytest.raises(WebhookRejected) as caught:
        tokens.check_token("k", attempt, token)
    assert caught.value.reason is RejectReason.BAD_TOKEN


def test_token_depends_on_the_secret() -> None:
    assert WebhookToken(SECRET).token("k", 1) != WebhookToken(b"t" * 32).token("k", 1)


def test_existing_query_of_the_base_url_is_kept() -> None:
    url = WebhookToken(SECRET).build_webhook_url("https://relay.example/h?region=eu", "k", 1)
    assert query_of(url)["region"] == "eu"
    assert query_of(url)[KEY_PARAM] == "k"


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        WebhookToken(b"short")
