"""The embedded local stack: a real Kafka KRaft node and a real MinIO server on 127.0.0.1.

Used alike by the `genrelay local` run command and by the test suite's session fixtures.
The servers come from the provisioning cache (`deploy/local/provision.sh`); each start picks
free ports and a fresh data directory, readiness is decided by conditions (an admin metadata
call succeeds; `/minio/health/cluster` answers 200), and stop leaves no process behind.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from genrelay.deploy.local.processes import ManagedProcess, StackStartError, free_port

HERE = Path(__file__).resolve().parent
KAFKA_POM = HERE / "kafka" / "pom.xml"
KAFKA_LOG4J = HERE / "kafka" / "log4j2.properties"

# An id, not a secret; each MinIO node gets a random secret key of its own.
S3_ACCESS_KEY = "genrelay"


def cache_dir() -> Path:
    """Where provisioned servers live: `$GENRELAY_CACHE`, else ~/.cache/genrelay."""
    env = os.environ.get("GENRELAY_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "genrelay"


def kafka_version() -> str:
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", KAFKA_POM.read_text())
    if match is None:
        raise StackStartError(f"no <kafka.version> in {KAFKA_POM}")
    return match.group(1)


@dataclass(frozen=True)
class StackInfo:
    """Addresses and credentials of a running stack; what `.genrelay/stack.json` holds."""

    kafka_bootstrap: str
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str
    extra: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, str]:
        data = asdict(self)
        extra = data.pop("extra")
        return {**data, **extra}

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")


def _kraft_properties(port: int, controller_port: int, data_dir: Path) -> dict[str, str]:
    return {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": "1",
        # One offsets partition: the default 50 slows the first group join on a test broker.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        # Compaction must be observable on a small test ledger.
        "log.cleaner.backoff.ms": "1000",
    }


def _cluster_id() -> str:
    """A 22-character URL-safe id, as `kafka-storage random-uuid` prints.

    Like Kafka's own generator, it never starts with "-": the storage tool would read such an
    id as an option and refuse to format.
    """
    while True:
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not candidate.startswith("-"):
            return candidate


class KafkaNode:
    """A single-node Kafka (combined broker and controller, KRaft) as a child process."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        overrides: Mapping[str, str] | None = None,
        heap: str = "512m",
    ) -> None:
        self.libs = cache_dir() / f"kafka-{kafka_version()}" / "libs"
        self.workdir = workdir
        self.port = port or free_port()
        self.controller_port = free_port()
        self.heap = heap
        props = _kraft_properties(self.port, self.controller_port, workdir / "data")
        props.update(overrides or {})
        self.properties = props
        self.process = ManagedProcess(
            "kafka broker",
            self._java("kafka.Kafka", str(workdir / "server.properties")),
            workdir / "logs" / "server.out",
        )

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _java(self, main_class: str, *args: str) -> list[str]:
        return [
            "java",
            "-Xms128m",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={KAFKA_LOG4J}",
            f"-Dkafka.logs.dir={self.workdir / 'logs'}",
            "-cp",
            f"{self.libs}/*",
            main_class,
            *args,
        ]

    def _format(self) -> None:
        cluster_id = _cluster_id()
        config = self.workdir / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in self.properties.items()))
        fmt = self._java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config))
        done = subprocess.run(fmt, capture_output=True, text=True, check=False, timeout=120)
        if done.returncode != 0:
            raise StackStartError(
                f"kafka storage format failed ({done.returncode}):\n{done.stdout}{done.stderr}"
            )

    async def start(self, timeout: float = 90.0) -> None:
        """Start the node; after `stop()`, start it again on the same ports and data."""
        if not self.libs.is_dir():
            raise StackStartError(
                f"Kafka jars missing in {self.libs}; run deploy/local/provision.sh first"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        if _started_before(self.process):
            # A restart keeps the formatted log dirs: a new cluster id would orphan the data.
            self.process = _again(self.process)
        else:
            await asyncio.to_thread(self._format)
        self.process.start()
        await _wait_ready(self.process, self._metadata_ok, timeout)

    async def _metadata_ok(self) -> bool:
        # A TCP accept is not readiness (the broker listens before it has registered), but
        # probing the port first keeps the admin client from logging every refused connect.
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        writer.close()
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=2000)
        try:
            await asyncio.wait_for(admin.start(), timeout=3)
            await asyncio.wait_for(admin.describe_cluster(), timeout=3)
            return True
        except (KafkaError, OSError, TimeoutError):
            return False
        finally:
            await admin.close()

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL); `start()` brings it back."""
        self.process.stop()


class MinioNode:
    """A MinIO server on one local drive as a child process."""

    def __init__(self, workdir: Path, *, port: int | None = None) -> None:
        self.binary = cache_dir() / "bin" / "minio"
        self.workdir = workdir
        self.port = port or free_port()
        # Random, so it is never a word that log redaction would blank out elsewhere.
        self.secret_key = secrets.token_urlsafe(24)
        env = {
            **os.environ,
            "MINIO_ROOT_USER": S3_ACCESS_KEY,
            "MINIO_ROOT_PASSWORD": self.secret_key,
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
            # Small buffer pool and no root-disk check: right for a test server.
            "MINIO_CI_CD": "1",
        }
        self.process = ManagedProcess(
            "minio",
            [
                str(self.binary),
                "server",
                "--address",
                f"127.0.0.1:{self.port}",
                "--console-address",
                f"127.0.0.1:{free_port()}",
                "--quiet",
                str(workdir / "data"),
            ],
            workdir / "minio.log",
            env=env,
        )

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, timeout: float = 60.0) -> None:
        """Start the server; after `stop()`, start it again on the same port and data."""
        if not self.binary.is_file():
            raise StackStartError(
                f"MinIO binary missing at {self.binary}; run deploy/local/provision.sh first"
            )
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        if _started_before(self.process):
            self.process = _again(self.process)
        self.process.start()
        await _wait_ready(self.process, self._healthy, timeout)

    async def _healthy(self) -> bool:
        # /minio/health/cluster stays 503 until the object layer, buckets and IAM are up.
        url = f"http://{self.endpoint}/minio/health/cluster"
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                return (await client.get(url)).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); `start()` brings it back."""
        self.process.stop()


def _started_before(process: ManagedProcess) -> bool:
    if process.pid is None:
        return False
    if process.exit_code() is None:
        raise RuntimeError(f"{process.name} is already running")
    return True


def _again(process: ManagedProcess) -> ManagedProcess:
    # A ManagedProcess runs once; the same command line and log make the next run.
    return ManagedProcess(
        process.name, process.argv, process.log_path, env=process.env, cwd=process.cwd
    )


async def _wait_ready(
    process: ManagedProcess, probe: Callable[[], Awaitable[bool]], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        code = process.exit_code()
        if code is not None:
            raise process.fail(f"exited with code {code} during start")
        if await probe():
            return
        if time.monotonic() > deadline:
            process.stop()
            raise process.fail(f"was not ready after {timeout:.0f} s")
        await asyncio.sleep(0.2)


class LocalStack:
    """Kafka and MinIO together, as one async context manager.

    ``async with LocalStack() as stack: stack.info.kafka_bootstrap`` — the servers' data lives in
    a temporary directory removed on exit (unless `keep_dir` is set).
    """

    def __init__(self, root: Path | None = None, *, keep_dir: bool = False) -> None:
        self._own_root = root is None
        self.root = root or Path(tempfile.mkdtemp(prefix="genrelay-stack-"))
        self.keep_dir = keep_dir
        self.kafka = KafkaNode(self.root / "kafka")
        self.minio = MinioNode(self.root / "minio")
        self._started = False

    @property
    def info(self) -> StackInfo:
        return StackInfo(
            kafka_bootstrap=self.kafka.bootstrap,
            s3_endpoint=self.minio.endpoint,
            s3_access_key=S3_ACCESS_KEY,
            s3_secret_key=self.minio.secret_key,
        )

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("stack already started")
        self._started = True
        try:
            await self._start_both()
        except BaseException:
            self.stop()
            raise

    async def _start_both(self) -> None:
        # MinIO starts while the JVM warms up; a failure of either cancels the other.
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.kafka.start())
                group.create_task(self.minio.start())
        except* StackStartError as failed:
            raise failed.exceptions[0] from None

    def stop(self) -> None:
        """Stop both servers; safe to call twice."""
        self.kafka.stop()
        self.minio.stop()
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
