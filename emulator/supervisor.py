"""Background tasks with an owner: every task is tracked, and a crash is kept, logged and
re-raised by `close()` instead of vanishing with a garbage-collected task."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class EmulatorCrashedError(RuntimeError):
    """A background task of the emulator failed; the original error is the cause."""


class Supervisor:
    """Owns a set of tasks; `close()` cancels the rest and reports the first crash."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._tasks: set[asyncio.Task[None]] = set()
        self._crash: BaseException | None = None
        self._closed = False

    @property
    def crash(self) -> BaseException | None:
        return self._crash

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        if self._closed:
            coro.close()
            raise RuntimeError(f"{self._name} is closed")
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error("%s: task %s crashed", self._name, task.get_name(), exc_info=error)
            if self._crash is None:
                self._crash = error

    async def cancel_all(self) -> None:
        """Cancel every running task and wait until they are gone."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        """Cancel what is left and raise if any task crashed. Safe to call twice."""
        self._closed = True
        await self.cancel_all()
        if self._crash is not None:
            crash, self._crash = self._crash, None
            raise EmulatorCrashedError(f"{self._name}: a background task crashed") from crash
