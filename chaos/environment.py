"""The servers a chaos run talks to: Kafka, MinIO and Toxiproxy, all on 127.0.0.1.

`ChaosStack` starts its own: a Kafka node with a second listener whose advertised address is a
Toxiproxy port, MinIO, and Toxiproxy. A Kafka broker tells each client where to connect next
(its advertised listener), so a proxy in front of the bootstrap address alone would be
bypassed after the first metadata call. Clients that bootstrap on the `PROXIED` listener are
told to come back through the proxy; the runner's own producer and readers use the plain
listener, so the faults never blind the observer.

`Servers.borrow(local_stack)` uses an already running `LocalStack` instead (the test suite's
session stack): no Kafka proxy then, and scenarios that stop a server are refused.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from genrelay.chaos.toxiproxy import Proxy, Toxiproxy, ToxiproxyServer
from genrelay.deploy.local.processes import StackStartError, free_port
from genrelay.deploy.local.stack import (
    S3_ACCESS_KEY,
    KafkaNode,
    LocalStack,
    MinioNode,
)

KAFKA_PROXY_NAME = "kafka"


@dataclass(frozen=True)
class Servers:
    """Kafka and MinIO for a run, and what the run may do to them."""

    kafka: KafkaNode
    minio: MinioNode
    # The proxy Kafka's `PROXIED` listener is advertised at, and that listener's bootstrap.
    kafka_proxy: Proxy | None = None
    # Whether scenarios may stop and restart these servers.
    owned: bool = False

    @classmethod
    def borrow(cls, stack: LocalStack) -> Servers:
        """A running stack someone else owns: its servers are never stopped."""
        return cls(stack.kafka, stack.minio)

    @property
    def direct_bootstrap(self) -> str:
        """Kafka without any proxy: for the runner's producer and readers."""
        return self.kafka.bootstrap

    @property
    def relay_bootstrap(self) -> str:
        """Where relays bootstrap: through the proxy when there is one."""
        return self.kafka_proxy.listen if self.kafka_proxy else self.kafka.bootstrap

    @property
    def s3_access_key(self) -> str:
        return S3_ACCESS_KEY

    @property
    def s3_secret_key(self) -> str:
        return self.minio.secret_key


def _proxied_kafka(workdir: Path, proxy_port: int) -> tuple[KafkaNode, int]:
    """A Kafka node with a `PROXIED` listener advertised at `proxy_port`; returns it and the
    listener's real port (the proxy's upstream)."""
    plain, proxied, controller = free_port(), free_port(), free_port()
    overrides = {
        "listeners": (
            f"PLAINTEXT://127.0.0.1:{plain},PROXIED://127.0.0.1:{proxied},"
            f"CONTROLLER://127.0.0.1:{controller}"
        ),
        "advertised.listeners": (f"PLAINTEXT://127.0.0.1:{plain},PROXIED://127.0.0.1:{proxy_port}"),
        "listener.security.protocol.map": (
            "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,PROXIED:PLAINTEXT"
        ),
        # The listeners above name their own controller port, so the quorum must use it too.
        "controller.quorum.voters": f"1@127.0.0.1:{controller}",
    }
    return KafkaNode(workdir, port=plain, overrides=overrides), proxied


class ChaosStack:
    """Kafka (with a proxied listener), MinIO and Toxiproxy; an async context manager.

    Data lives in a temporary directory removed on exit unless `keep_dir` is set.
    """

    def __init__(self, root: Path | None = None, *, keep_dir: bool = False) -> None:
        self._own_root = root is None
        self.root = root or Path(tempfile.mkdtemp(prefix="genrelay-chaos-"))
        self.keep_dir = keep_dir
        self.toxiproxy = ToxiproxyServer(self.root)
        self._kafka_proxy_port = free_port()
        self.kafka, self._proxied_port = _proxied_kafka(self.root / "kafka", self._kafka_proxy_port)
        self.minio = MinioNode(self.root / "minio")
        self._kafka_proxy: Proxy | None = None

    @property
    def servers(self) -> Servers:
        if self._kafka_proxy is None:
            raise RuntimeError("the chaos stack is not running")
        return Servers(self.kafka, self.minio, self._kafka_proxy, owned=True)

    def client(self) -> Toxiproxy:
        """A Toxiproxy API client (close it after use)."""
        return self.toxiproxy.client()

    async def start(self) -> None:
        try:
            await self._start_all()
        except BaseException:
            self.stop()
            raise

    async def _start_all(self) -> None:
        await self.toxiproxy.start()
        # The proxy must exist before the broker answers metadata that points at it.
        async with self.client() as api:
            self._kafka_proxy = await api.create(
                KAFKA_PROXY_NAME,
                listen=f"127.0.0.1:{self._kafka_proxy_port}",
                upstream=f"127.0.0.1:{self._proxied_port}",
            )
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.kafka.start())
                group.create_task(self.minio.start())
        except* StackStartError as failed:
            raise failed.exceptions[0] from None

    def stop(self) -> None:
        """Stop every server; safe to call twice."""
        self.kafka.stop()
        self.minio.stop()
        self.toxiproxy.stop()
        if self._own_root and not self.keep_dir:
            shutil.rmtree(self.root, ignore_errors=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)
