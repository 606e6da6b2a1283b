"""The relay's two HTTP listeners.

- **Public** (`GENRELAY_HTTP_HOST`/`_PORT`): what fal and the orchestrator must reach, and
  nothing else: `POST /webhooks/fal`, `/healthz`, `/readyz`.
- **Admin** (`GENRELAY_ADMIN_HOST`/`_PORT`, loopback by default): the status page,
  `/status.json`, `/metrics`, `/openapi.json` (and the probes). Bound beyond loopback it
  requires `Authorization: Bearer <GENRELAY_ADMIN_TOKEN>` on every request.

Keeping them apart means a public webhook address never exposes customers' keys, endpoints
or metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac

import uvicorn
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send


class BearerToken:
    """ASGI middleware: every HTTP request must carry the token (compared in constant time)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self._app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._allowed(scope):
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"www-authenticate", b'Bearer realm="genrelay admin"'),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b'{"error":"unauthorized"}'})
            return
        await self._app(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        given = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                given = value
                break
        return hmac.compare_digest(given, self._expected)


def admin_app(app: Starlette, token: str | None) -> ASGIApp:
    """The admin surface; behind the bearer token when one is set."""
    return BearerToken(app, token) if token else app


class Listener:
    """One uvicorn server on the running event loop."""

    def __init__(self, app: ASGIApp, host: str, port: int) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            lifespan="off",
            # Our logging handler formats uvicorn's records too (JSON, secrets redacted).
            log_config=None,
        )
        self._server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None
        self.port: int | None = None

    async def start(self) -> int:
        """Serve; returns the port bound (useful when 0 asked for any free one)."""
        server = self._server
        task = asyncio.get_running_loop().create_task(server.serve())
        while not server.started:
            if task.done():
                await task
                raise RuntimeError("the HTTP server stopped during start")
            await asyncio.sleep(0.02)
        self._task = task
        self.port = int(server.servers[0].sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        """Stop serving; its port is free again once this returns."""
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._task), timeout=10)
        self._task = None
