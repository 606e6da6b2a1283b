"""Relay replicas as child processes: for fault tests (kill -9), the benchmark and `chaos`."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import httpx

from genrelay.consumer.service.config import Settings
from genrelay.deploy.local.processes import ManagedProcess


class RelayProcess:
    """`python -m genrelay.consumer` with the given settings (and optional failpoint)."""

    def __init__(
        self,
        settings: Settings,
        log_dir: Path,
        *,
        name: str = "relay",
        failpoint: str | None = None,
    ) -> None:
        env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
        env.pop("GENRELAY_FAILPOINT", None)
        if failpoint:
            env["GENRELAY_FAILPOINT"] = failpoint
        self.settings = settings
        self.process = ManagedProcess(
            name,
            [sys.executable, "-m", "genrelay.consumer"],
            log_dir / f"{name}-{time.monotonic_ns()}.log",
            env=env,
        )

    async def start(self, timeout: float = 60.0) -> None:
        """Start and wait until the replica reports ready (partitions restored)."""
        self.process.start()
        url = f"http://127.0.0.1:{self.settings.http_port}/readyz"
        async with httpx.AsyncClient(timeout=1.0) as client, asyncio.timeout(timeout):
            while True:
                if self.process.exit_code() is not None:
                    raise self.process.fail("exited during start")
                try:
                    if (await client.get(url)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)

    async def exited(self, timeout: float = 60.0) -> int:
        """Wait for the process to end by itself (a failpoint fired); returns its exit code."""
        async with asyncio.timeout(timeout):
            # Polling is deliberate: the state belongs to another process.
            while (code := self.process.exit_code()) is None:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        return code

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def kill(self) -> None:
        self.process.kill()

    def stop(self) -> None:
        self.process.stop(grace=30)
