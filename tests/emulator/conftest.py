"""Fixtures for the emulator tests: one emulator per session, reset before every test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from genrelay.emulator import EmulatorServer, EmulatorSettings
from tests.emulator.helpers import KEY, WebhookReceiver


@pytest.fixture(scope="session")
async def emulator_server() -> AsyncIterator[EmulatorServer]:
    settings = EmulatorSettings(
        api_keys=[KEY],
        seed=7,
        webhook_backoff_ms=10,
        webhook_timeout_s=2,
        sse_ping_interval_s=0.05,
    )
    async with EmulatorServer(settings) as server:
        yield server


@pytest.fixture
async def fal(emulator_server: EmulatorServer) -> AsyncIterator[EmulatorServer]:
    """The session's emulator, freshly reset (settings, requests, counters, faults)."""
    await emulator_server.reset()
    yield emulator_server
    assert emulator_server.emulator.crash is None


@pytest.fixture
async def client(fal: EmulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client authorised against the emulator."""
    headers = {"Authorization": f"Key {KEY}"}
    async with httpx.AsyncClient(base_url=fal.base_url, headers=headers, timeout=10) as http:
        yield http


@pytest.fixture(scope="session")
async def receiver_server() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture
def receiver(fal: EmulatorServer, receiver_server: WebhookReceiver) -> WebhookReceiver:
    """A webhook receiver that records deliveries and answers 200 unless told otherwise."""
    receiver_server.reset()
    return receiver_server
