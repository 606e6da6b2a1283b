"""A bad webhook gets a 4xx and changes nothing: not the ledger, not any topic."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from genrelay.consumer.provider.webhook_signature import WebhookToken
from genrelay.consumer.service.config import Settings
from genrelay.deploy.local.stack import StackInfo
from genrelay.emulator.server import EmulatorServer
from genrelay.emulator.settings import EmulatorSettings
from tests.relay.harness import RunningRelay, TopicReader, produce, relay_settings, running

pytestmark = pytest.mark.integration

SEED = bytes(range(32))
KEY = "hook/alpha"
OTHER_KEY = "hook/beta"


@dataclass
class Receiver:
    settings: Settings
    relay: RunningRelay
    http: httpx.AsyncClient

    def url(self, key: str, token_for: str | None = None, attempt: int = 1) -> str:
        tokens = WebhookToken(self.settings.webhook_secret.get_secret_value().encode())
        base = f"http://127.0.0.1:{self.settings.http_port}/webhooks/fal"
        url = tokens.build_webhook_url(base, token_for or key, attempt)
        return url.replace(f"key={_quote(token_for or key)}", f"key={_quote(key)}")

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return await self.http.post(url, content=body, headers=headers)


def _quote(key: str) -> str:
    return key.replace("/", "%2F")


def signed(
    body: bytes,
    *,
    request_id: str = "req-1",
    timestamp: int | None = None,
    private: Ed25519PrivateKey | None = None,
) -> dict[str, str]:
    key = private or Ed25519PrivateKey.from_private_bytes(SEED)
    ts = str(int(time.time()) if timestamp is None else timestamp)
    message = f"{request_id}\nemulator-user\n{ts}\n{hashlib.sha256(body).hexdigest()}".encode()
    return {
        "content-type": "application/json",
        "x-fal-webhook-request-id": request_id,
        "x-fal-webhook-user-id": "emulator-user",
        "x-fal-webhook-timestamp": ts,
        "x-fal-webhook-signature": key.sign(message).hex(),
    }


BODY = json.dumps(
    {
        "request_id": "req-1",
        "gateway_request_id": "req-1",
        "status": "OK",
        "payload": {"images": []},
    }
).encode()


@pytest.fixture(scope="module")
async def receiver(stack: StackInfo) -> AsyncIterator[Receiver]:
    emulator_settings = EmulatorSettings(signing_seed_hex=SEED.hex())
    async with EmulatorServer(emulator_settings) as emulator:
        settings = relay_settings(stack, emulator)
        async with running(settings) as relay, httpx.AsyncClient(timeout=10) as http:
            yield Receiver(settings, relay, http)


async def _topic_size(stack: StackInfo, topic: str) -> int:
    async with TopicReader(stack.kafka_bootstrap, topic) as reader:
        # A sentinel record marks "everything before it has been read".
        marker = f"marker-{time.monotonic_ns()}".encode()
        await produce(stack.kafka_bootstrap, topic, [(b"marker", marker)])
        await reader.until(lambda rs: any(r.value == marker for r in rs), timeout=30)
        return sum(1 for r in reader.records if r.key != b"marker")


CASES: dict[str, tuple[Callable[[Receiver], tuple[str, bytes, dict[str, str]]], int]] = {
    "bad_signature": (
        lambda r: (r.url(KEY), BODY.replace(b"OK", b"ok"), signed(BODY)),
        401,
    ),
    "stale_timestamp": (
        lambda r: (r.url(KEY), BODY, signed(BODY, timestamp=int(time.time()) - 301)),
        401,
    ),
    "unknown_signing_key": (
        lambda r: (r.url(KEY), BODY, signed(BODY, private=Ed25519PrivateKey.generate())),
        401,
    ),
    "missing_signature_header": (
        lambda r: (
            r.url(KEY),
            BODY,
            {k: v for k, v in signed(BODY).items() if k != "x-fal-webhook-signature"},
        ),
        400,
    ),
    "missing_timestamp_header": (
        lambda r: (
            r.url(KEY),
            BODY,
            {k: v for k, v in signed(BODY).items() if k != "x-fal-webhook-timestamp"},
        ),
        400,
    ),
    "unknown_request_url": (
        lambda r: (
            r.url(KEY).split("?")[0] + "?key=never-issued&attempt=1&token=abc",
            BODY,
            signed(BODY),
        ),
        403,
    ),
    "no_key_in_url": (
        lambda r: (r.url(KEY).split("?")[0], BODY, signed(BODY)),
        404,
    ),
    "oversized_body": (
        lambda r: (r.url(KEY), b"{" + b" " * (5 * 1024 * 1024) + b"}", signed(BODY)),
        413,
    ),
    "replayed_to_another_keys_url": (
        lambda r: (r.url(OTHER_KEY, token_for=KEY), BODY, signed(BODY)),
        403,
    ),
    "header_and_body_ids_differ": (
        lambda r: (r.url(KEY), BODY, signed(BODY, request_id="req-2")),
        400,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_bad_webhook_is_refused_and_changes_nothing(
    stack: StackInfo, receiver: Receiver, case: str
) -> None:
    build, status = CASES[case]
    topics = receiver.settings.topics
    before = {t: await _topic_size(stack, t) for t in (topics.webhooks, topics.ledger)}

    url, body, headers = build(receiver)
    response = await receiver.post(url, body, headers)

    assert response.status_code == status, response.text
    after = {t: await _topic_size(stack, t) for t in (topics.webhooks, topics.ledger)}
    assert after == before


async def test_genuine_webhook_is_handed_to_the_webhooks_topic(
    stack: StackInfo, receiver: Receiver
) -> None:
    before = await _topic_size(stack, receiver.settings.topics.webhooks)
    response = await receiver.post(receiver.url(KEY), BODY, signed(BODY))
    assert response.status_code == 200
    assert await _topic_size(stack, receiver.settings.topics.webhooks) == before + 1
