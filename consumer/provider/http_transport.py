"""An httpx transport on aiohttp's engine, with errors that keep the paid-submit rule intact.

httpx's own connection pool costs milliseconds of CPU per request once hundreds are queued,
which on two cores makes it the relay's bottleneck; `httpx-aiohttp` keeps the httpx API on
aiohttp's engine. Its error mapping, however, turns *every* `aiohttp.ClientConnectionError`
into `httpx.ConnectTimeout`, including a server that disconnected after reading the request.
`ConnectTimeout` means "never sent" to the fal adapter, so a reset after a paid submit would be
re-posted. This transport re-maps from the original aiohttp error so that only failures that
provably happened before the request left us read as connect errors:

    aiohttp.ClientConnectorError (refused, DNS)   -> httpx.ConnectError     never sent
    aiohttp.ConnectionTimeoutError (connect/pool) -> httpx.ConnectTimeout   never sent
    aiohttp.SocketTimeoutError (read)             -> httpx.ReadTimeout      maybe sent
    anything else after connecting                -> httpx.ReadError        maybe sent
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport


def _remap(exc: httpx.TransportError) -> httpx.TransportError:
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientConnectorError):
        return httpx.ConnectError(str(cause))
    if isinstance(cause, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(str(cause))
    if isinstance(cause, aiohttp.SocketTimeoutError):
        return httpx.ReadTimeout(str(cause))
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.ProxyError):
        return exc
    # Unknown, or after the connection was up: the request may have been received.
    return httpx.ReadError(str(cause or exc))


class _Stream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream) -> None:
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except httpx.TransportError as exc:
            raise _remap(exc) from exc.__cause__

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        except httpx.TransportError as exc:
            raise _remap(exc) from exc.__cause__


class SafeAiohttpTransport(AiohttpTransport):
    """`AiohttpTransport` whose errors tell "never sent" from "maybe sent" correctly."""

    def get_client(self) -> aiohttp.ClientSession:
        """The session as `AiohttpTransport` builds it, with a cookie jar that keeps nothing
        (aiohttp's own jar would keep and send cookies per host name, below httpx's)."""
        limit = self.limits.max_connections
        connector = aiohttp.TCPConnector(
            limit=100 if limit is None else limit,
            keepalive_timeout=self.limits.keepalive_expiry,
            ssl=self.ssl_context,
        )
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await super().handle_async_request(request)
        except httpx.TransportError as exc:
            raise _remap(exc) from exc.__cause__
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _Stream(response.stream)
        return response


class _NoCookies(httpx.Cookies):
    """A jar that keeps nothing a response sets."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class CookielessClient(httpx.AsyncClient):
    """An `httpx.AsyncClient` that neither keeps nor sends cookies.

    The relay's calls need none (fal authenticates by key), and a jar shared by every job
    would hand one tenant's download host the cookies another's set. Keeping none also saves
    httpx's cookie pass over each response: 4% of the relay's CPU under load.
    """

    @property
    def cookies(self) -> httpx.Cookies:
        return _NoCookies()

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        raise TypeError("this client keeps no cookies")


def pooled_client(
    *, timeout: httpx.Timeout, max_connections: int = 200, keepalive: int = 100
) -> httpx.AsyncClient:
    """An httpx client on the aiohttp engine; one per host class (provider, downloads)."""
    # Idle connections are dropped well before a server's usual 5 s keep-alive timeout, so a
    # POST never goes out on a connection the server is closing (that would read as maybe-sent).
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=keepalive, keepalive_expiry=2.0
    )
    return CookielessClient(transport=SafeAiohttpTransport(limits=limits), timeout=timeout)
