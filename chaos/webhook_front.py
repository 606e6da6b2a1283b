"""A stand-in for the load balancer in front of the replicas' webhook receivers.

Deliveries are spread round-robin; a replica that refuses or drops the connection (killed,
restarting) is skipped and the next one takes the delivery, as a load balancer with passive
health checks would. With every replica down the provider gets a 502 and retries later.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Sequence

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from genrelay.emulator.server import AsgiServer

_HOP_BY_HOP = frozenset({"host", "content-length", "connection", "transfer-encoding"})


def front_app(backends: Sequence[str], client: httpx.AsyncClient) -> Starlette:
    """The ASGI app forwarding `POST /webhooks/fal` to the first backend that answers."""
    turn = itertools.count()

    async def forward(request: Request) -> Response:
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        start = next(turn)
        for offset in range(len(backends)):
            backend = backends[(start + offset) % len(backends)]
            url = f"{backend}{request.url.path}?{request.url.query}"
            try:
                answer = await client.post(url, content=body, headers=headers)
            except httpx.TransportError:
                continue  # that replica is down: the next one takes the delivery
            return Response(answer.content, answer.status_code, media_type="application/json")
        return Response(b"no replica", status_code=502)

    return Starlette(routes=[Route("/webhooks/fal", forward, methods=["POST"])])


@contextlib.asynccontextmanager
async def webhook_front(backends: Sequence[str]) -> AsyncIterator[str]:
    """Serve the front on a free port of 127.0.0.1; yields its base URL."""
    async with (
        httpx.AsyncClient(timeout=10.0) as client,
        AsgiServer(front_app(list(backends), client)) as server,
    ):
        yield server.base_url
