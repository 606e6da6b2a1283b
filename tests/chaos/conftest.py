"""Fixtures of the chaos tests: a Toxiproxy server for the session, and a private stack for
scenarios that stop servers (so the session's broker and MinIO are never disturbed)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from genrelay.chaos.environment import ChaosStack
from genrelay.chaos.toxiproxy import Toxiproxy, ToxiproxyServer


@pytest.fixture(scope="session")
async def toxiproxy(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Toxiproxy]:
    """A client of a Toxiproxy server started once per test session."""
    server = ToxiproxyServer(tmp_path_factory.mktemp("toxiproxy"))
    async with server, server.client() as api:
        yield api


@pytest.fixture(scope="module")
async def chaos_stack() -> AsyncIterator[ChaosStack]:
    """Kafka (behind its own Toxiproxy listener), MinIO and Toxiproxy that tests may stop."""
    async with ChaosStack() as stack:
        yield stack


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path / "relays"
