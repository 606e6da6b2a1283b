"""Readiness looks at the dependencies a replica needs, cheaply."""

from __future__ import annotations

import asyncio

import pytest

from genrelay.consumer.service.health import Readiness, address_of
from genrelay.deploy.local.processes import free_port


@pytest.mark.parametrize(
    ("endpoint", "default", "expected"),
    [
        ("127.0.0.1:9092", 9092, ("127.0.0.1", 9092)),
        ("kafka-1:9093,kafka-2:9093", 9092, ("kafka-1", 9093)),
        ("https://queue.fal.run", 443, ("queue.fal.run", 443)),
        ("http://127.0.0.1:8000/base", 443, ("127.0.0.1", 8000)),
        ("s3.example.com", 443, ("s3.example.com", 443)),
    ],
)
def test_addresses_are_read_from_every_endpoint_form(
    endpoint: str, default: int, expected: tuple[str, int]
) -> None:
    assert address_of(endpoint, default) == expected


async def test_an_unreachable_dependency_makes_readiness_false_and_is_cached() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    up = ("127.0.0.1", server.sockets[0].getsockname()[1])
    down = ("127.0.0.1", free_port())
    now = [0.0]
    readiness = Readiness({"up": up, "down": down}, ttl=5.0, clock=lambda: now[0])
    async with server:
        assert await readiness.dependencies() == {"up": True, "down": False}
    # Within the TTL the cached answer stands, even though "up" has gone away.
    now[0] = 4.9
    assert await readiness.dependencies() == {"up": True, "down": False}
    now[0] = 5.0
    assert await readiness.dependencies() == {"up": False, "down": False}
