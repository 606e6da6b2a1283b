"""The start/stop lifecycle shared by the client's Kafka resources."""

import asyncio
from abc import ABC, abstractmethod
from enum import Enum
from types import TracebackType
from typing import Self

from genrelay.producers.errors import ClientStateError


class _State(Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


class Resource(ABC):
    """An async context manager with an explicit lifecycle: new, running, closed.

    `start()` and `stop()` are idempotent; a closed resource cannot be started again, so a
    use after close fails loudly instead of silently reconnecting.
    """

    def __init__(self) -> None:
        self._state = _State.NEW
        self._transition = asyncio.Lock()

    async def start(self) -> None:
        """Connect; a second call does nothing."""
        async with self._transition:
            if self._state is _State.RUNNING:
                return
            if self._state is _State.CLOSED:
                raise ClientStateError(f"{type(self).__name__} is closed; create a new one")
            await self._open()
            self._state = _State.RUNNING

    async def stop(self) -> None:
        """Disconnect and close for good; a second call does nothing."""
        async with self._transition:
            was_running = self._state is _State.RUNNING
            self._state = _State.CLOSED
            if was_running:
                await self._close()

    def _require_running(self) -> None:
        if self._state is not _State.RUNNING:
            raise ClientStateError(f"{type(self).__name__} is {self._state.value}, not running")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    @abstractmethod
    async def _open(self) -> None:
        """Acquire the underlying connections; on failure leave nothing open."""

    @abstractmethod
    async def _close(self) -> None:
        """Release what `_open` acquired."""
