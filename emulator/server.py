"""`EmulatorServer`: the emulator on uvicorn, in the current event loop.

    async with EmulatorServer(EmulatorSettings(run_latency="fixed:50")) as fal:
        fal.base_url      # http://127.0.0.1:<free port>
        fal.configure(failure_rate=0.1)
        fal.arm(lose_webhooks=1)

Shutdown order: streams are told to finish, uvicorn stops accepting and drains connections,
then the emulator stops its jobs, webhook deliveries and housekeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from enum import Enum
from typing import Any

import httpx
import uvicorn
from starlette.types import ASGIApp

from genrelay.emulator.accounting import Submission
from genrelay.emulator.app import build_app
from genrelay.emulator.core import Emulator
from genrelay.emulator.faults import ArmRequest
from genrelay.emulator.settings import EmulatorSettings

JSON = Any
_GRACEFUL_SHUTDOWN_S = 2


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its signal handlers: the embedding program owns signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _State(Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class AsgiServer:
    """Any ASGI app on uvicorn in the current event loop (tests use it for receivers)."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._state = _State.NEW
        self._uvicorn: _EmbeddedUvicorn | None = None
        self._serving: asyncio.Task[None] | None = None
        self.base_url = ""

    async def __aenter__(self) -> AsgiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._state is not _State.NEW:
            raise RuntimeError(f"server is {self._state.value}; create a new one")
        self._state = _State.RUNNING
        sock = _bind(self._host, self._port)
        host, port = sock.getsockname()[:2]
        self.base_url = f"http://{_url_host(host)}:{port}"
        config = uvicorn.Config(
            self._app,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
            backlog=4096,
        )
        self._uvicorn = _EmbeddedUvicorn(config)
        self._serving = asyncio.create_task(self._uvicorn.serve(sockets=[sock]))
        while not self._uvicorn.started:
            if self._serving.done():
                self._serving.result()
                raise RuntimeError("uvicorn stopped during startup")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        """Stop accepting, drain connections, return; safe to call twice."""
        if self._state is _State.STOPPED:
            return
        self._state = _State.STOPPED
        if self._uvicorn is not None and self._serving is not None:
            self._uvicorn.should_exit = True
            await self._serving


class EmulatorServer:
    """A running emulator reachable over HTTP; an async context manager."""

    def __init__(
        self,
        settings: EmulatorSettings | None = None,
        *,
        webhook_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.emulator = Emulator(settings, webhook_transport=webhook_transport)
        settings = self.emulator.settings
        self._http = AsgiServer(build_app(self.emulator), settings.host, settings.port)

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> EmulatorServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        await self.emulator.__aenter__()
        try:
            await self._http.start()
            self.emulator.bind(self._http.base_url)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop serving and close the emulator; safe to call twice."""
        self.emulator.drain()
        try:
            await self._http.stop()
        finally:
            await self.emulator.close()

    # -- where it is -----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """What `fal_client.client.QUEUE_URL_FORMAT` should be, minus the trailing slash;
        `public_base_url` when set, else where it listens."""
        return self.emulator.base_url

    @property
    def listen_url(self) -> str:
        """Where it actually listens (differs from `base_url` behind a proxy)."""
        return self._http.base_url

    @property
    def jwks_url(self) -> str:
        return f"{self.base_url}/.well-known/jwks.json"

    @property
    def settings(self) -> EmulatorSettings:
        return self.emulator.settings

    # -- knobs and accounting (the control API, in process) --------------------------------------

    def configure(self, **changes: Any) -> EmulatorSettings:
        return self.emulator.configure(**changes)

    def arm(self, request: ArmRequest | None = None, **faults: Any) -> dict[str, JSON]:
        return self.emulator.arm(request, **faults)

    def rotate_keys(self, overlap_s: float | None = None) -> dict[str, JSON]:
        return self.emulator.rotate_keys(overlap_s)

    async def reset(self) -> None:
        await self.emulator.reset()

    def stats(self) -> dict[str, JSON]:
        return self.emulator.stats()

    def submissions(
        self,
        *,
        endpoint: str | None = None,
        webhook_contains: str | None = None,
        input_contains: str | None = None,
    ) -> list[Submission]:
        return self.emulator.accounting.submissions(
            endpoint=endpoint, webhook_contains=webhook_contains, input_contains=input_contains
        )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose
    # proto says TCP, and without it Nagle adds 40 ms to every response.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
