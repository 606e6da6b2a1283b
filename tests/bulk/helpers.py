"""What the bulk tests share: the CLI parser, in-memory Kafka, a relay stand-in, waiting."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from genrelay.consumer.service.config import Settings
from genrelay.deploy.local.stack import StackInfo
from genrelay.emulator.server import EmulatorServer
from genrelay.producers.bulk import cli
from genrelay.producers.bulk.commands import KafkaTarget, Output
from genrelay.producers.client import GenrelayProducer
from genrelay.producers.completions import CompletionWatcher
from genrelay.producers.errors import PublishError
from genrelay.producers.testing import RecordingSender
from genrelay.schemas.base import to_json_bytes
from genrelay.schemas.completions import Artifact, CompletionEvent, ErrorDetail, Timings
from genrelay.schemas.topics import Topics
from tests.relay.harness import relay_settings


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse a `genrelay bulk ...` command line as the `genrelay` CLI wires it."""
    parser = argparse.ArgumentParser(prog="genrelay")
    cli.add_subcommands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def relay_for_bulk(stack: StackInfo, emulator: EmulatorServer) -> Settings:
    """Relay settings for a bulk test: its own topics and bucket, learning outcomes by polling
    (on a small machine it finishes thousands of jobs sooner than webhooks do)."""
    return relay_settings(
        stack,
        emulator,
        public_webhook_url=None,
        poll_grace_seconds=0.5,
        poll_max_interval_seconds=1.0,
    )


def stack_flags(stack: StackInfo, settings: Settings) -> list[str]:
    """The flags pointing a bulk command at the test's broker, topics and object store."""
    return [
        "--bootstrap", stack.kafka_bootstrap,
        "--requests-topic", settings.topic_requests,
        "--completions-topic", settings.topic_completions,
    ]  # fmt: skip


def s3_flags(stack: StackInfo) -> list[str]:
    """The flags pointing `--download` at the test's MinIO."""
    return [
        "--s3-endpoint", stack.s3_endpoint,
        "--s3-access-key", stack.s3_access_key,
        "--s3-secret-key", stack.s3_secret_key,
    ]  # fmt: skip


def quiet() -> Output:
    """A output that keeps what a command prints, and draws no progress bar."""
    return Output(out=io.StringIO(), show_progress=False)


def printed(output: Output) -> str:
    assert isinstance(output.out, io.StringIO)
    return output.out.getvalue()


def write_jsonl(path: Path, rows: Sequence[dict[str, Any] | str]) -> Path:
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("".join(line + "\n" for line in lines))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def completion(key: str, *, status: str = "succeeded", metadata: Any = None) -> CompletionEvent:
    """The event a relay would publish for `key`, with one stored file when it succeeded."""
    succeeded = status == "succeeded"
    artifact = Artifact(
        bucket="genrelay",
        key=f"{key.replace('/', '%2F')}/0.png",
        size=4,
        sha256="ab" * 32,
        content_type="image/png",
        etag="etag",
    )
    return CompletionEvent(
        event_id=uuid.uuid4().hex,
        idempotency_key=key,
        status=status,  # type: ignore[arg-type]
        endpoint="fal-ai/flux/schnell",
        request_id=f"req-{key}",
        artifacts=[artifact] if succeeded else [],
        result={},
        error=None if succeeded else ErrorDetail(type="boom", message="it broke", retryable=False),
        timings=Timings(queued_ms=0, running_ms=0, total_ms=0),
        attempts=1,
        # As fal bills a file: one unit, here at 0.003 USD.
        cost_units=1 if succeeded else None,
        cost_usd=0.003 if succeeded else None,
        cost_source="estimate" if succeeded else None,
        metadata=metadata or {},
        replayed=False,
    )


class CompletionLog:
    """A completion topic in memory: every reader sees every event from the beginning."""

    def __init__(self) -> None:
        self.values: list[bytes] = []
        self._grown = asyncio.Event()

    def publish(self, event: CompletionEvent) -> None:
        self.values.append(to_json_bytes(event))
        grown, self._grown = self._grown, asyncio.Event()
        grown.set()

    def reader(self) -> LogReader:
        return LogReader(self)

    async def wait_beyond(self, count: int, timeout: float) -> None:
        if len(self.values) <= count:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._grown.wait(), timeout)


class LogReader:
    """A `CompletionSource` reading a `CompletionLog` from its beginning."""

    def __init__(self, log: CompletionLog) -> None:
        self._log = log
        self._next = 0

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def fetch(self, timeout: float) -> Sequence[bytes]:
        await self._log.wait_beyond(self._next, timeout)
        values = self._log.values[self._next :]
        self._next += len(values)
        return values


class FakeRelay(RecordingSender):
    """A `RecordingSender` that answers each submit with a completion event, as a relay
    would, on `completions`; `outcome(key)` picks the status, and `fail_after` makes the
    send after that many records fail as if the broker had gone away."""

    def __init__(self, outcome: Callable[[str], str | None] = lambda key: "succeeded") -> None:
        super().__init__()
        self.completions = CompletionLog()
        self.outcome = outcome
        self.fail_after: int | None = None

    async def send(
        self, topic: str, *, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> None:
        if self.fail_after is not None and len(self.records) >= self.fail_after:
            raise PublishError("broker gone", retryable=True)
        await super().send(topic, key=key, value=value, headers=headers)
        record = json.loads(value)
        status = self.outcome(key.decode())
        if record["action"] == "submit" and status is not None:
            event = completion(key.decode(), status=status, metadata=record["metadata"])
            self.completions.publish(event)

    def sent_keys(self, action: str = "submit") -> list[str]:
        return [r.key.decode() for r in self.records if json.loads(r.value)["action"] == action]


class MemoryConnector:
    """A `Connector` whose producer sends to a `FakeRelay` and whose watcher reads from it."""

    def __init__(self, relay: FakeRelay) -> None:
        self.relay = relay
        self.targets: list[KafkaTarget] = []

    def producer(self, target: KafkaTarget) -> GenrelayProducer:
        self.targets.append(target)
        return GenrelayProducer(self.relay, topics=Topics(requests=target.requests_topic))

    def watcher(self, target: KafkaTarget) -> CompletionWatcher:
        self.targets.append(target)
        return CompletionWatcher(self.relay.completions.reader())


async def eventually(
    condition: Callable[[], bool], *, timeout: float = 60.0, task: asyncio.Task[Any] | None = None
) -> None:
    """Return once `condition()` holds; fail if `task` ends first or `timeout` s pass."""
    async with asyncio.timeout(timeout):
        while not condition():
            if task is not None and task.done():
                task.result()
                raise AssertionError("the task ended before the condition held")
            await asyncio.sleep(0.01)
