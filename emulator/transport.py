"""A lean httpx transport for webhook deliveries over plain HTTP/1.1.

httpx's default transport (httpcore on anyio) costs over a millisecond of CPU per request, and
more under concurrency (encode/httpx#3215), which capped the emulator at a few hundred
webhooks per second. Webhook deliveries are simple (POST a small JSON body, read the status),
so this transport speaks just enough HTTP/1.1 on asyncio streams, with a keep-alive pool per
host. The httpx client API stays the same; `https://` URLs go to httpx's own transport.

Errors are translated to httpx's: `ConnectError`/`ConnectTimeout` (never sent), `ReadError`/
`ReadTimeout`/`RemoteProtocolError` (maybe sent).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

import httpx

_MAX_HEADER_LINES = 100
_MAX_BODY = 16 * 1024 * 1024


class _Connection:
    __slots__ = ("reader", "reused", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reused = False

    def close(self) -> None:
        self.writer.close()


class StreamTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over asyncio streams with per-host keep-alive; HTTPS is delegated."""

    def __init__(self, max_idle_per_host: int = 64) -> None:
        self._idle: defaultdict[tuple[str, int], list[_Connection]] = defaultdict(list)
        self._max_idle = max_idle_per_host
        self._tls = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "http":
            return await self._tls.handle_async_request(request)
        body = await request.aread()
        timeouts = request.extensions.get("timeout", {})
        key = (request.url.host, request.url.port or 80)
        while True:
            connection = self._idle[key].pop() if self._idle[key] else None
            if connection is None:
                connection = await _connect(key, timeouts.get("connect"))
            try:
                return await self._exchange(connection, key, request, body, timeouts.get("read"))
            except _StaleConnectionError:
                # The server closed an idle keep-alive connection before reading anything.
                connection.close()

    async def _exchange(
        self,
        connection: _Connection,
        key: tuple[str, int],
        request: httpx.Request,
        body: bytes,
        timeout: float | None,
    ) -> httpx.Response:
        try:
            async with asyncio.timeout(timeout):
                await _send(connection, _head(request, len(body)) + body)
                status, headers, content = await _read_response(connection)
        except TimeoutError as exc:
            connection.close()
            raise httpx.ReadTimeout(str(exc) or "timed out", request=request) from exc
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            connection.close()
            if connection.reused and isinstance(exc, _NothingReadError):
                raise _StaleConnectionError from exc
            raise httpx.RemoteProtocolError(repr(exc), request=request) from exc
        if _keep_alive(headers) and len(self._idle[key]) < self._max_idle:
            connection.reused = True
            self._idle[key].append(connection)
        else:
            connection.close()
        return httpx.Response(status, headers=headers, content=content, request=request)

    async def aclose(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
        await self._tls.aclose()


class _StaleConnectionError(Exception):
    pass


class _NothingReadError(ConnectionError):
    """The connection ended before the first byte of a response."""


async def _connect(key: tuple[str, int], timeout: float | None) -> _Connection:
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(*key)
    except TimeoutError as exc:
        raise httpx.ConnectTimeout(f"connecting to {key[0]}:{key[1]} timed out") from exc
    except OSError as exc:
        raise httpx.ConnectError(f"cannot connect to {key[0]}:{key[1]}: {exc}") from exc
    return _Connection(reader, writer)


async def _send(connection: _Connection, data: bytes) -> None:
    try:
        connection.writer.write(data)
        await connection.writer.drain()
    except OSError as exc:
        raise _NothingReadError(str(exc)) from exc


def _head(request: httpx.Request, length: int) -> bytes:
    target = request.url.raw_path.decode("ascii")
    lines = [f"{request.method} {target} HTTP/1.1"]
    host_seen = False
    for name, value in request.headers.multi_items():
        lower = name.lower()
        # We frame the body ourselves and never decode compressed replies.
        if lower in ("content-length", "transfer-encoding", "connection", "accept-encoding"):
            continue
        host_seen = host_seen or lower == "host"
        lines.append(f"{name}: {value}")
    if not host_seen:
        lines.append(f"Host: {request.url.netloc.decode('ascii')}")
    lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _read_response(connection: _Connection) -> tuple[int, list[tuple[str, str]], bytes]:
    reader = connection.reader
    try:
        status_line = await reader.readline()
    except OSError as exc:
        raise _NothingReadError(str(exc)) from exc
    if not status_line:
        raise _NothingReadError("connection closed before a response")
    version, status, *_ = status_line.decode("latin-1").split(" ", 2)
    if not version.startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1.x response: {status_line!r}")
    headers = await _read_headers(reader)
    return int(status), headers, await _read_body(reader, headers)


async def _read_headers(reader: asyncio.StreamReader) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for _ in range(_MAX_HEADER_LINES):
        line = await reader.readline()
        if line in (b"\r\n", b"\n"):
            return headers
        if not line:
            raise asyncio.IncompleteReadError(b"", None)
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    raise ValueError("too many response headers")


async def _read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]]) -> bytes:
    fields = {name.lower(): value for name, value in headers}
    if "chunked" in fields.get("transfer-encoding", "").lower():
        return await _read_chunked(reader)
    if "content-length" in fields:
        length = int(fields["content-length"])
        if length > _MAX_BODY:
            raise ValueError("response body too large")
        return await reader.readexactly(length)
    # No framing: the body runs until the server closes the connection.
    return await reader.read(_MAX_BODY)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readline()).split(b";")[0].strip(), 16)
        if size == 0:
            await _read_headers(reader)  # trailers
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


def _keep_alive(headers: list[tuple[str, str]]) -> bool:
    fields = {name.lower(): value.lower() for name, value in headers}
    framed = "content-length" in fields or "chunked" in fields.get("transfer-encoding", "")
    return framed and fields.get("connection") != "close"
