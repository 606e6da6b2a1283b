"""A stand-in for the load balancer in front of the replicas' webhook receivers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from genrelay.deploy.local.processes import free_port
from tests.waiting import eventually


def _front_app(backends: list[str], client: httpx.AsyncClient) -> Starlette:
    async def forward(request: Request) -> Response:
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        for backend in backends:
            url = f"{backend}{request.url.path}?{request.url.query}"
            try:
                answer = await client.post(url, content=body, headers=headers)
            except httpx.TransportError:
                continue  # that replica is down: the next one takes the delivery
            return Response(answer.content, answer.status_code, media_type="application/json")
        return Response(b"no replica", status_code=502)

    return Starlette(routes=[Route("/webhooks/fal", forward, methods=["POST"])])


@contextlib.asynccontextmanager
async def webhook_front(backends: list[str]) -> AsyncIterator[str]:
    """Serve the front on a free port; yields its base URL."""
    port = free_port()
    async with httpx.AsyncClient(timeout=10) as client:
        server = uvicorn.Server(
            uvicorn.Config(
                _front_app(backends, client),
                host="127.0.0.1",
                port=port,
                log_level="warning",
                log_config=None,  # keep uvicorn's loggers on the root handler
            )
        )
        task = asyncio.get_running_loop().create_task(server.serve())
        await eventually(lambda: server.started)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            await task
