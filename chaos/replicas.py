"""Relay replicas in one consumer group, killed on purpose and restarted when they die.

A replica killed by a scenario stays down until the scenario restarts it. A replica that
exits on its own is a crash: it is recorded with the tail of its log and restarted, as a
container orchestrator would, so one crash does not end the run but is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from genrelay.consumer.service.config import Settings
from genrelay.deploy.local.processes import StackStartError, log_tail
from genrelay.deploy.local.replicas import RelayProcess

START_TIMEOUT = 60.0


@dataclass(frozen=True)
class Crash:
    """A replica that exited without being told to, or could not be started again."""

    replica: str
    what: str
    log_path: Path
    log_tail: str


class ReplicaSet:
    """`len(settings)` relay processes; `async with` starts them all and stops them all."""

    def __init__(self, settings: Sequence[Settings], log_dir: Path) -> None:
        self._settings = list(settings)
        self._log_dir = log_dir
        self._procs: list[RelayProcess | None] = [None] * len(self._settings)
        self._locks = [asyncio.Lock() for _ in self._settings]
        self._down: set[int] = set()
        self.kills = 0
        self.pauses = 0
        self.crashes: list[Crash] = []

    def __len__(self) -> int:
        return len(self._settings)

    def name(self, index: int) -> str:
        return f"relay-{index}"

    async def __aenter__(self) -> ReplicaSet:
        try:
            await asyncio.gather(*(self._launch(i) for i in range(len(self))))
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _launch(self, index: int) -> None:
        proc = RelayProcess(self._settings[index], self._log_dir, name=self.name(index))
        self._procs[index] = proc
        try:
            await proc.start(timeout=START_TIMEOUT)
        except (StackStartError, TimeoutError) as exc:
            await asyncio.to_thread(proc.kill)
            self._record(index, proc, f"could not start: {str(exc).splitlines()[0]}")
            # Nothing of it runs now; the supervisor tries again.
            self._procs[index] = None
            raise

    def _record(self, index: int, proc: RelayProcess, what: str) -> None:
        path = proc.process.log_path
        self.crashes.append(Crash(self.name(index), what, path, log_tail(path, 20)))

    async def kill(self, index: int) -> None:
        """kill -9 one replica (its whole process group); it stays down until `restart`."""
        async with self._locks[index]:
            proc = self._procs[index]
            self._down.add(index)
            if proc is not None:
                await asyncio.to_thread(proc.kill)
            self.kills += 1

    async def freeze(self, index: int, frozen: bool) -> None:
        """SIGSTOP one replica (it keeps its sockets but runs nothing), or SIGCONT it again."""
        async with self._locks[index]:
            proc = self._procs[index]
            if frozen:
                self._down.add(index)  # not a crash: the supervisor leaves it alone
                self.pauses += 1
            else:
                self._down.discard(index)
            if proc is not None:
                proc.process.freeze(frozen)

    async def restart(self, index: int) -> None:
        """Start a killed replica again with the same settings; waits until it is ready."""
        async with self._locks[index]:
            self._down.discard(index)
            with contextlib.suppress(StackStartError, TimeoutError):
                # A failed start is recorded; the supervisor keeps trying.
                await self._launch(index)

    async def supervise(self, interval: float = 0.5) -> None:
        """Run until cancelled: restart every replica that exited on its own."""
        while True:
            for index, proc in enumerate(self._procs):
                if index in self._down or self._locks[index].locked():
                    continue
                if proc is not None:
                    code = proc.process.exit_code()
                    if code is None:
                        continue
                    self._record(index, proc, f"exited with code {code}")
                async with self._locks[index]:
                    with contextlib.suppress(StackStartError, TimeoutError):
                        await self._launch(index)
            await asyncio.sleep(interval)

    async def stop(self) -> None:
        """Stop every replica gracefully (SIGTERM, drain, then SIGKILL); safe to call twice."""
        running = [p for p in self._procs if p is not None]
        await asyncio.gather(*(asyncio.to_thread(p.stop) for p in running))
