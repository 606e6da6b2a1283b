from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from genrelay.emulator.server import EmulatorServer
from genrelay.emulator.settings import EmulatorSettings


@pytest.fixture
async def emulator() -> AsyncIterator[EmulatorServer]:
    async with EmulatorServer(EmulatorSettings()) as server:
        yield server
