"""The lean webhook transport: keep-alive, response framing, stale connections, errors."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from genrelay.emulator.transport import StreamTransport

Reply = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


@asynccontextmanager
async def raw_server(reply: Reply) -> AsyncIterator[tuple[str, list[bytes], list[int]]]:
    """A server that records requests; `reply` answers one and says whether to keep going."""
    requests: list[bytes] = []
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                requests.append(await _read_request(reader))
                if not await reply(reader, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", requests, connections
    finally:
        server.close()


def answer(raw: bytes, keep: bool = True) -> Reply:
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(raw)
        await writer.drain()
        return keep

    return reply


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_requests_reuse_one_keep_alive_connection() -> None:
    async with (
        raw_server(answer(OK)) as (url, requests, connections),
        httpx.AsyncClient(transport=StreamTransport()) as client,
    ):
        first = await client.post(url + "/hook?key=a%2Fb", content=b'{"a":1}')
        second = await client.post(url + "/hook", content=b"{}")

    assert (first.status_code, first.content, second.status_code) == (200, b"ok", 200)
    assert len(connections) == 1
    assert requests[0].startswith(b"POST /hook?key=a%2Fb HTTP/1.1\r\n")
    assert b"Content-Length: 7\r\n" in requests[0]
    assert requests[0].endswith(b'\r\n\r\n{"a":1}')


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.0 202 Accepted\r\n\r\nok",
    ],
)
async def test_chunked_and_unframed_bodies_are_read(raw: bytes) -> None:
    async with (
        raw_server(answer(raw, keep=False)) as (url, _, _),
        httpx.AsyncClient(transport=StreamTransport()) as client,
    ):
        response = await client.post(url, content=b"{}")

    assert (response.status_code, response.content) == (202, b"ok")


async def test_a_closed_idle_connection_is_replaced() -> None:
    async with (
        raw_server(answer(OK, keep=False)) as (url, requests, connections),
        httpx.AsyncClient(transport=StreamTransport()) as client,
    ):
        await client.post(url, content=b"1")
        response = await client.post(url, content=b"2")

    assert response.status_code == 200
    assert len(requests) == 2
    assert len(connections) == 2


async def test_connection_refused_is_a_connect_error() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        async with httpx.AsyncClient(transport=StreamTransport()) as client:
            with pytest.raises(httpx.ConnectError):
                await client.post(f"http://127.0.0.1:{port}/", content=b"{}")


async def test_a_silent_server_is_a_read_timeout() -> None:
    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await reader.read()  # silent until the client gives up and closes
        return False

    async with (
        raw_server(never) as (url, _, _),
        httpx.AsyncClient(transport=StreamTransport()) as client,
    ):
        with pytest.raises(httpx.ReadTimeout):
            await client.post(url, content=b"{}", timeout=0.1)


async def test_a_broken_reply_is_a_protocol_error() -> None:
    async with (
        raw_server(answer(b"garbage\r\n\r\n", keep=False)) as (url, _, _),
        httpx.AsyncClient(transport=StreamTransport()) as client,
    ):
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(url, content=b"{}")


async def test_https_goes_to_the_standard_transport() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        async with httpx.AsyncClient(transport=StreamTransport()) as client:
            with pytest.raises(httpx.ConnectError):
                await client.post(f"https://127.0.0.1:{port}/", content=b"{}")
