"""The Toxiproxy client against a real server: faults land where a scenario says they do."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from genrelay.chaos.toxiproxy import Proxy, Toxic, Toxiproxy, ToxiproxyError
from genrelay.deploy.local.processes import free_port
from genrelay.emulator.server import AsgiServer

pytestmark = pytest.mark.integration


class Counting:
    """An HTTP server that counts the requests it received."""

    def __init__(self) -> None:
        self.received = 0

    def app(self) -> Starlette:
        async def answer(request: Request) -> PlainTextResponse:
            self.received += 1
            return PlainTextResponse("x" * 2000)

        return Starlette(routes=[Route("/", answer, methods=["GET", "POST"])])


@pytest.fixture
async def counting() -> AsyncIterator[tuple[Counting, str]]:
    server = Counting()
    async with AsgiServer(server.app()) as http:
        yield server, http.base_url.removeprefix("http://")


@pytest.fixture
async def proxy(toxiproxy: Toxiproxy, counting: tuple[Counting, str]) -> AsyncIterator[Proxy]:
    created = await toxiproxy.create(
        f"test-{free_port()}", listen=f"127.0.0.1:{free_port()}", upstream=counting[1]
    )
    yield created
    await toxiproxy.delete(created)


async def _post(url: str) -> httpx.Response:
    # No pooled connections: each request meets the proxy's toxics afresh.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=5.0, limits=limits) as client:
        return await client.post(url, content=b"pay me once")


async def test_a_proxy_passes_traffic_until_a_toxic_is_added(
    toxiproxy: Toxiproxy, proxy: Proxy, counting: tuple[Counting, str]
) -> None:
    server, _ = counting
    assert (await _post(proxy.url)).status_code == 200
    assert server.received == 1
    assert await toxiproxy.toxics(proxy) == []


async def test_downstream_reset_cuts_the_answer_after_the_server_got_the_request(
    toxiproxy: Toxiproxy, proxy: Proxy, counting: tuple[Counting, str]
) -> None:
    server, _ = counting
    async with toxiproxy.toxic(proxy, Toxic.reset_peer(stream="downstream")):
        with pytest.raises(httpx.TransportError):
            await _post(proxy.url)
        assert server.received == 1  # received, but the client cannot know it
    assert (await _post(proxy.url)).status_code == 200
    assert await toxiproxy.toxics(proxy) == []


async def test_upstream_reset_stops_the_request_before_the_server(
    toxiproxy: Toxiproxy, proxy: Proxy, counting: tuple[Counting, str]
) -> None:
    server, _ = counting
    async with toxiproxy.toxic(proxy, Toxic.reset_peer(stream="upstream")):
        with pytest.raises(httpx.TransportError):
            await _post(proxy.url)
    assert server.received == 0


async def test_limit_data_truncates_the_answer(
    toxiproxy: Toxiproxy, proxy: Proxy, counting: tuple[Counting, str]
) -> None:
    async with toxiproxy.toxic(proxy, Toxic.limit_data(64)):
        with pytest.raises(httpx.TransportError):
            await _post(proxy.url)


async def test_reset_removes_every_toxic_and_a_toxic_left_is_listed(
    toxiproxy: Toxiproxy, proxy: Proxy
) -> None:
    name = await toxiproxy.add(proxy, Toxic.latency(100, 10))
    assert [t["name"] for t in await toxiproxy.toxics(proxy)] == [name]
    await toxiproxy.reset()
    assert await toxiproxy.toxics(proxy) == []


async def test_api_errors_are_translated(toxiproxy: Toxiproxy) -> None:
    ghost = Proxy("no-such-proxy", "127.0.0.1:1", "127.0.0.1:2")
    with pytest.raises(ToxiproxyError, match="404"):
        await toxiproxy.add(ghost, Toxic.timeout(0))


def test_toxics_describe_themselves_briefly() -> None:
    assert Toxic.reset_peer().describe() == "reset_peer downstream"
    assert Toxic.latency(400, 300).describe() == "latency 400±300ms downstream"
    assert Toxic.bandwidth(16).describe() == "bandwidth 16KB/s upstream"
    assert Toxic.reset_peer(stream="upstream", toxicity=0.3).describe() == (
        "reset_peer upstream p=0.3"
    )
