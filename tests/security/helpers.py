"""What the security tests share: genuine fal signatures, an in-process webhook receiver with
a handoff that records its calls, raw ASGI calls, topic end offsets (to show that nothing was
written), and the routes a relay serves."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

import httpx
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import Message

from genrelay.bench.workload import read_topic
from genrelay.consumer.provider.webhook_receiver import WEBHOOK_PATH, WebhookReceiver, app
from genrelay.consumer.provider.webhook_signature import (
    ATTEMPT_PARAM,
    KEY_PARAM,
    TOKEN_PARAM,
    JwksCache,
    WebhookToken,
)
from genrelay.consumer.service.relay import Relay
from genrelay.emulator.signing import Keyring
from genrelay.schemas.webhooks import WebhookDelivery
from tests.waiting import eventually

SEED = bytes(range(32))
KEYRING = Keyring(SEED)
USER_ID = "emulator-user"
WEBHOOK_SECRET = b"security-tests-webhook-secret-0123456789"

Offsets = dict[tuple[str, int], int]


def fal_body() -> bytes:
    """A well-formed fal webhook body, of request `req-1`."""
    body = {"request_id": "req-1", "gateway_request_id": "req-1", "status": "OK", "payload": {}}
    return json.dumps(body).encode()


def signed(body: bytes, request_id: str = "req-1") -> dict[str, str]:
    """The four `X-Fal-Webhook-*` headers of a genuine delivery of `body`, signed now."""
    return KEYRING.sign(request_id, USER_ID, body).headers()


def as_asgi(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """Headers as an ASGI server hands them to the app: lower-case names, raw bytes."""
    return [(name.lower().encode(), value.encode("latin-1")) for name, value in headers.items()]


class Handoffs(list[WebhookDelivery]):
    """A handoff that records what the receiver passed on, instead of producing to Kafka."""

    async def __call__(self, delivery: WebhookDelivery) -> None:
        self.append(delivery)


@dataclass
class InProcessReceiver:
    app: Starlette
    tokens: WebhookToken
    handoffs: Handoffs = field(default_factory=Handoffs)

    def query(self, key: str, *, token_for: str | None = None, attempt: int = 1) -> bytes:
        """The query string of `key`'s webhook URL for `attempt`, with the token of
        `token_for` (or `key`)."""
        token = self.tokens.token(token_for or key, attempt)
        fields = {KEY_PARAM: key, ATTEMPT_PARAM: attempt, TOKEN_PARAM: token}
        return urlencode(fields, quote_via=quote).encode()


@contextlib.asynccontextmanager
async def in_process_receiver(max_body_bytes: int = 64 * 1024) -> AsyncIterator[InProcessReceiver]:
    """The receiver's ASGI app, trusting `KEYRING`'s keys, with a recording handoff."""

    def jwks(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=KEYRING.jwks())

    async with httpx.AsyncClient(transport=httpx.MockTransport(jwks)) as client:
        tokens = WebhookToken(WEBHOOK_SECRET)
        handoffs = Handoffs()
        receiver = WebhookReceiver(
            tokens=tokens,
            jwks=JwksCache(client, url="https://jwks.test/.well-known/jwks.json"),
            handoff=handoffs,
            max_body_bytes=max_body_bytes,
        )
        yield InProcessReceiver(app(receiver), tokens, handoffs)


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


async def asgi_call(
    application: Starlette,
    *,
    method: str = "POST",
    path: str = WEBHOOK_PATH,
    query: bytes = b"",
    headers: Sequence[tuple[bytes, bytes]] = (),
    chunks: Iterable[bytes] = (),
) -> Answer:
    """One HTTP request straight into the ASGI app, headers exactly as given (no client
    normalises them). The body arrives in `chunks`, which may be endless; an exception in
    the app propagates."""
    body = iter(chunks)
    current: bytes | None = next(body, b"")
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal current
        if current is None:
            return {"type": "http.disconnect"}
        following = next(body, None)
        message: Message = {
            "type": "http.request",
            "body": current,
            "more_body": following is not None,
        }
        current = following
        return message

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": list(headers),
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 50000),
    }
    await application(scope, receive, send)
    [start] = [m for m in sent if m["type"] == "http.response.start"]
    answer = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return Answer(start["status"], answer)


async def end_offsets(bootstrap: str, topics: Iterable[str], partitions: int) -> Offsets:
    """After the last committed record of every partition of `topics` (-1 when it has none):
    equal before and after means nothing was written. Read from the records themselves, not
    from the end offsets, which also move when a transaction's marker lands, a moment after
    its writer has moved on."""
    last = {(topic, p): -1 for topic in topics for p in range(partitions)}
    for topic in topics:
        for record in await read_topic(bootstrap, topic):
            last[(topic, record.partition)] = max(last[(topic, record.partition)], record.offset)
    return last


async def settled(relay: Relay) -> None:
    """Wait until the relay runs no job, so that nothing else writes to its topics."""
    await eventually(lambda: relay.jobs.active == 0, timeout=60)


def http_app(relay: Relay, *, admin: bool = False) -> Starlette:
    """The Starlette app the relay's public (or admin) listener runs."""
    served = relay.admin_http_app if admin else relay.http_app
    assert served is not None, "the relay serves no HTTP"
    return served


def route_methods(relay: Relay, *, listener: str = "both") -> dict[str, frozenset[str]]:
    """Each path the relay serves (on the `public` or `admin` listener, or `both`), and the
    methods it answers there."""
    apps = {"public": [False], "admin": [True], "both": [False, True]}[listener]
    methods: dict[str, frozenset[str]] = {}
    for admin in apps:
        routes = http_app(relay, admin=admin).routes
        # Anything but a plain HTTP route (a mount, a websocket) would be surface unaccounted.
        assert all(type(route) is Route for route in routes), routes
        for route in routes:
            if type(route) is Route:
                path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)  # as OpenAPI names it
                methods[path] = methods.get(path, frozenset()) | (route.methods or frozenset())
    return methods
