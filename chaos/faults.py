"""The hands of a scenario: each fault is injected, held, healed, and recorded with its times.

A fault's `healed` time is when the system was whole again (a restarted broker answers, a
killed replica is ready, a toxic is removed), so "time to drain after the last fault" is
measured from the moment nothing was broken any more. Every fault heals on the way out of its
block, also when the run is cancelled at its wall-clock cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from genrelay.chaos.environment import Servers
from genrelay.chaos.replicas import ReplicaSet
from genrelay.chaos.toxiproxy import Proxy, Toxic, Toxiproxy
from genrelay.emulator.server import EmulatorServer

ProxyName = Literal["provider", "minio", "kafka"]


@dataclass
class Fault:
    """One injected fault; times are seconds since the load started."""

    kind: str
    target: str
    started: float
    healed: float | None = None


@dataclass
class Progress:
    """How far the run is, for scenarios that wait for work to be in flight."""

    total: int
    produced: int = 0
    finished: int = 0


@dataclass
class Injector:
    """What scenarios use to break things; owned by the runner."""

    emulator: EmulatorServer
    servers: Servers
    replicas: ReplicaSet
    progress: Progress
    started: float
    api: Toxiproxy | None = None
    proxies: Mapping[str, Proxy] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    notes: dict[str, int] = field(default_factory=dict)

    def now(self) -> float:
        return time.monotonic() - self.started

    @contextlib.asynccontextmanager
    async def fault(self, kind: str, target: str) -> AsyncIterator[Fault]:
        """Record a fault for the duration of the block (heal inside the block)."""
        record = Fault(kind, target, self.now())
        self.faults.append(record)
        try:
            yield record
        finally:
            record.healed = self.now()

    def observed(self, kind: str, target: str, started: float, lasted: float) -> Fault:
        """Record a fault the system under test reported rather than one injected here."""
        record = Fault(kind, target, started, started + lasted)
        self.faults.append(record)
        return record

    async def until(self, condition: Callable[[], bool], timeout: float = 600.0) -> None:
        """Wait for a condition about the run (e.g. enough jobs in flight)."""
        async with asyncio.timeout(timeout):
            # Polling is deliberate: the state lives in other processes.
            while not condition():  # noqa: ASYNC110
                await asyncio.sleep(0.1)

    async def produced(self, fraction: float) -> None:
        """Wait until this fraction of the jobs is on the requests topic."""
        want = max(1, round(self.progress.total * fraction))
        await self.until(lambda: self.progress.produced >= want)

    # --- process faults -------------------------------------------------------------------

    async def kill_replica(self, index: int, down_s: float) -> None:
        """kill -9 one replica, keep it down for `down_s`, start it again."""
        async with self.fault("kill -9 relay", self.replicas.name(index)):
            await self.replicas.kill(index)
            try:
                await asyncio.sleep(down_s)
            finally:
                await self.replicas.restart(index)

    async def pause_replica(self, index: int, paused_s: float) -> None:
        """SIGSTOP one replica for `paused_s` (past the session timeout: the group moves its
        partitions), then SIGCONT: it wakes up believing it still owns them."""
        async with self.fault(f"SIGSTOP relay {paused_s:g} s", self.replicas.name(index)):
            await self.replicas.freeze(index, True)
            try:
                await asyncio.sleep(paused_s)
            finally:
                await self.replicas.freeze(index, False)

    async def outage(
        self, server: Literal["kafka", "minio"], down_s: float, *, hard: bool = False
    ) -> None:
        """Stop the broker or MinIO (SIGTERM, or SIGKILL when `hard`), keep it down for
        `down_s`, then start it on the same port and data directory and wait until it answers.
        A graceful stop takes as long as the server needs: the fault lasts that much longer."""
        if not self.servers.owned:
            raise RuntimeError(f"refusing to stop a borrowed {server}; use a ChaosStack")
        node = self.servers.kafka if server == "kafka" else self.servers.minio
        how = "kill -9" if hard else "SIGTERM"
        async with self.fault(f"{server} {how}, restart {down_s:g} s later", server):
            await asyncio.to_thread(node.process.kill if hard else node.stop)
            try:
                await asyncio.sleep(down_s)
            finally:
                await node.start()

    # --- provider faults (the emulator) ---------------------------------------------------

    async def rate_limit_storm(self, seconds: float) -> None:
        """Every submit is answered 429 for `seconds`."""
        async with self.fault(f"429 storm {seconds:g} s", "provider"):
            self.emulator.arm(reject_for_s=seconds)
            try:
                await asyncio.sleep(seconds)
            finally:
                self.emulator.emulator.faults.disarm()

    async def gateway_errors(self, count: int) -> None:
        """The next `count` submits reach fal and are paid, then a gateway in front answers 504
        without `x-fal-request-id` (they must be treated as ambiguous, never re-posted)."""
        async with self.fault(f"{count} gateway 504s after forwarding", "provider"):
            self.emulator.arm(gateway_error_submits=count)
            await self.until(lambda: self._gateway_errors() >= count, timeout=120)

    def _gateway_errors(self) -> int:
        return int(self.emulator.stats()["gateway_error_submit_responses"])

    # --- network faults (Toxiproxy) -------------------------------------------------------

    async def toxic(self, proxy: ProxyName, toxic: Toxic, seconds: float) -> None:
        """Hold a toxic on one of the run's proxies for `seconds`."""
        if self.api is None or proxy not in self.proxies:
            raise RuntimeError(f"no {proxy} proxy in this run")
        target = self.proxies[proxy]
        async with (
            self.fault(toxic.describe(), proxy),
            self.api.toxic(target, toxic),
        ):
            await asyncio.sleep(seconds)

    async def flapping(
        self, proxy: ProxyName, toxics: list[Toxic], seconds: float, period: float = 1.0
    ) -> None:
        """Hold toxics for half of every `period` during `seconds`, as one fault.

        Toxiproxy draws a toxic's `toxicity` once per connection, and a pooled client keeps
        reusing the connections that drew "clean"; re-adding the toxics draws again, so a
        partial toxicity keeps hitting live connections instead of only the first few.
        """
        if self.api is None or proxy not in self.proxies:
            raise RuntimeError(f"no {proxy} proxy in this run")
        api, target = self.api, self.proxies[proxy]
        kind = " + ".join(t.describe() for t in toxics) + f", every {period:g} s"
        async with self.fault(kind, proxy):
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                async with contextlib.AsyncExitStack() as held:
                    for toxic in toxics:
                        await held.enter_async_context(api.toxic(target, toxic))
                    await asyncio.sleep(period / 2)
                await asyncio.sleep(period / 2)

    async def toxics(self, proxy: ProxyName, toxics: list[Toxic], seconds: float) -> None:
        """Hold several toxics on one proxy at once, recorded as one fault."""
        if self.api is None or proxy not in self.proxies:
            raise RuntimeError(f"no {proxy} proxy in this run")
        api, target = self.api, self.proxies[proxy]
        kind = " + ".join(t.describe() for t in toxics)
        async with self.fault(kind, proxy), contextlib.AsyncExitStack() as held:
            for toxic in toxics:
                await held.enter_async_context(api.toxic(target, toxic))
            await asyncio.sleep(seconds)
