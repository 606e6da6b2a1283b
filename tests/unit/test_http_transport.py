"""The aiohttp-based transport keeps "never sent" and "maybe sent" apart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from genrelay.consumer.provider.http_transport import pooled_client
from genrelay.deploy.local.processes import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/submit"


async def _read_request(reader: asyncio.StreamReader) -> None:
    await reader.readuntil(b"\r\n\r\n")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with pooled_client(timeout=httpx.Timeout(2.0, connect=1.0)) as http:
        yield http


async def test_refused_connection_is_a_connect_error(client: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.ConnectError):
        await client.post(f"http://127.0.0.1:{free_port()}/submit", json={})


async def test_disconnect_after_the_request_was_read_is_maybe_sent(
    client: httpx.AsyncClient,
) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.close()

    server, url = await _serve(hang_up)
    async with server:
        with pytest.raises(httpx.TransportError) as failure:
            await client.post(url, json={"prompt": "x"})
    assert not isinstance(failure.value, httpx.ConnectError | httpx.ConnectTimeout)
    assert isinstance(failure.value, httpx.ReadError | httpx.RemoteProtocolError)


async def test_no_answer_in_time_is_a_read_timeout(client: httpx.AsyncClient) -> None:
    release = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await release.wait()
        writer.close()

    server, url = await _serve(silent)
    async with server:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(url, json={})
        release.set()


async def test_body_cut_short_is_maybe_sent(client: httpx.AsyncClient) -> None:
    async def truncated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"request_id"')
        await writer.drain()
        writer.close()

    server, url = await _serve(truncated)
    async with server:
        with pytest.raises(httpx.TransportError) as failure:
            await client.post(url, json={})  # reads the whole body
    assert not isinstance(failure.value, httpx.ConnectError | httpx.ConnectTimeout)


async def test_a_normal_exchange_works(client: httpx.AsyncClient) -> None:
    async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    server, url = await _serve(ok)
    async with server:
        response = await client.post(url, json={})
    assert response.status_code == 200
    assert response.json() == {}


async def test_no_cookie_set_by_one_answer_goes_out_with_the_next(
    client: httpx.AsyncClient,
) -> None:
    seen: list[bytes] = []

    async def sets_a_cookie(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            seen.append(head)
            writer.write(
                b"HTTP/1.1 200 OK\r\nSet-Cookie: tenant=a; Path=/\r\nContent-Length: 2\r\n\r\n{}"
            )
            await writer.drain()
        writer.close()

    server, url = await _serve(sets_a_cookie)
    # By host name: aiohttp's own jar keeps no cookies for bare IP addresses.
    url = url.replace("127.0.0.1", "localhost")
    async with server:
        first = await client.get(url)
        second = await client.get(url)
    assert first.headers["set-cookie"] == "tenant=a; Path=/"
    assert second.status_code == 200
    assert len(seen) == 2
    assert b"cookie:" not in seen[1].lower()
    assert not client.cookies
