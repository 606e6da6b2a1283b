"""Shared test helpers: condition waits, submit shortcuts and a webhook receiver."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from genrelay.emulator.server import AsgiServer, EmulatorServer
from genrelay.emulator.signing import public_key_from_jwk, verify

KEY = "test-key"
FLUX = "fal-ai/flux/schnell"
VIDEO = "fal-ai/fake-video"
TINY = {"image_size": {"width": 32, "height": 32}}


async def eventually(
    predicate: Callable[[], Any] | Callable[[], Awaitable[Any]],
    timeout: float = 5.0,
    what: str = "condition",
) -> Any:
    """Poll `predicate` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        await asyncio.sleep(0.005)


async def submit(
    client: httpx.AsyncClient,
    body: dict[str, Any] | None = None,
    endpoint: str = FLUX,
    **kwargs: Any,
) -> dict[str, Any]:
    """Submit and return the (200) submit response body."""
    arguments = {"prompt": "a lighthouse at dawn", **TINY} if body is None else body
    response = await client.post(f"/{endpoint}", json=arguments, **kwargs)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


async def completed(client: httpx.AsyncClient, handle: dict[str, Any]) -> dict[str, Any]:
    """Poll the status until COMPLETED (HTTP 200) and return that status body."""

    async def done() -> dict[str, Any] | None:
        response = await client.get(handle["status_url"])
        if response.status_code == 200:
            body: dict[str, Any] = response.json()
            return body
        assert response.status_code == 202, response.text
        return None

    status: dict[str, Any] = await eventually(done, what="completion")
    return status


def view(fal: EmulatorServer, handle: dict[str, Any]) -> dict[str, Any]:
    """The emulator's own description of a request (in process, no HTTP)."""
    described = fal.emulator.describe(handle["request_id"])
    assert described is not None
    return described


async def status_of(client: httpx.AsyncClient, handle: dict[str, Any]) -> dict[str, Any]:
    response = await client.get(handle["status_url"])
    body: dict[str, Any] = response.json()
    return body


@dataclass(frozen=True)
class Delivery:
    """One webhook POST as the receiver saw it."""

    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def verifies_with(self, keys: list[Ed25519PublicKey]) -> bool:
        return verify(
            keys,
            request_id=self.headers["x-fal-webhook-request-id"],
            user_id=self.headers["x-fal-webhook-user-id"],
            timestamp=self.headers["x-fal-webhook-timestamp"],
            signature_hex=self.headers["x-fal-webhook-signature"],
            body=self.body,
        )


class WebhookReceiver:
    """A small HTTP server that records webhook deliveries and answers with scripted codes."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.answers: deque[int] = deque()
        app = Starlette(routes=[Route("/{path:path}", self._receive, methods=["POST"])])
        self._server = AsgiServer(app)

    async def __aenter__(self) -> WebhookReceiver:
        await self._server.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._server.stop()

    def reset(self) -> None:
        self.deliveries.clear()
        self.answers.clear()

    def url(self, path: str = "/hook", query: str = "") -> str:
        return f"{self._server.base_url}{path}" + (f"?{query}" if query else "")

    async def _receive(self, request: Request) -> Response:
        body = await request.body()
        self.deliveries.append(
            Delivery(
                path=request.url.path,
                query=request.scope["query_string"].decode(),
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
            )
        )
        status = self.answers.popleft() if self.answers else 200
        return Response(b"", status)

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Delivery]:
        await eventually(lambda: len(self.deliveries) >= count, timeout, f"{count} deliveries")
        return list(self.deliveries)


async def jwks_keys(client: httpx.AsyncClient, url: str) -> list[Ed25519PublicKey]:
    """Fetch a JWKS the way a receiver would and load every key."""
    response = await client.get(url)
    assert response.status_code == 200
    return [public_key_from_jwk(jwk) for jwk in response.json()["keys"]]
