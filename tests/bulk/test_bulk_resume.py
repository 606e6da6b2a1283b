"""Acceptance, on the real broker, real MinIO and the emulator: a 2,000-line bulk run that is
interrupted halfway and run again pays once per line and reports every stored file."""

from __future__ import annotations

import asyncio
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from minio import Minio

from genrelay.deploy.local.stack import StackInfo
from genrelay.emulator.server import EmulatorServer
from genrelay.producers.bulk import cli
from genrelay.producers.bulk.keys import default_bulk_id
from genrelay.producers.bulk.state import Counts, RunState
from tests.bulk.helpers import (
    eventually,
    parse,
    printed,
    quiet,
    read_jsonl,
    relay_for_bulk,
    stack_flags,
    write_jsonl,
)
from tests.relay.harness import TopicReader, completions_by_key, running

pytestmark = pytest.mark.integration

LINES = 2000


async def test_interrupted_run_resumes_without_paying_twice(
    stack: StackInfo, emulator: EmulatorServer, tmp_path: Path
) -> None:
    settings = relay_for_bulk(stack, emulator)
    source = write_jsonl(
        tmp_path / "prompts.jsonl",
        [
            {
                "endpoint": "fal-ai/flux/schnell",
                "input": {"prompt": f"lighthouse {n}", "image_size": {"width": 64, "height": 64}},
            }
            for n in range(LINES)
        ],
    )
    state_dir = tmp_path / "state"
    submit = ["bulk", "submit", str(source), "--rate", "400/s", "--state-dir", str(state_dir)]
    args = parse([*submit, *stack_flags(stack, settings)])
    state = RunState(state_dir, default_bulk_id(source.read_bytes()))

    async with running(settings):
        first = asyncio.create_task(cli.run(args, output=quiet()))
        await eventually(lambda: _acknowledged(state) >= LINES // 2, task=first)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        interrupted = state.snapshot().counts()
        assert LINES // 2 <= interrupted.submitted < LINES

        resumed = quiet()
        assert await cli.run(args, output=resumed) == 0
        assert f"{LINES} request(s), {interrupted.submitted} sent before" in printed(resumed)

        async with TopicReader(stack.kafka_bootstrap, settings.topic_completions) as reader:
            await reader.until(lambda records: len(completions_by_key(records)) >= LINES)

    assert len(emulator.submissions()) == LINES
    assert state.snapshot().counts() == Counts(
        total=LINES, submitted=LINES, completed=LINES, failed=0, cancelled=0, rejected=0
    )
    manifest = read_jsonl(source.with_name("prompts.manifest.jsonl"))
    assert [row["line"] for row in manifest] == list(range(1, LINES + 1))
    assert {row["status"] for row in manifest} == {"succeeded"}
    assert set(completions_by_key(reader.records)) == {row["idempotency_key"] for row in manifest}
    assert read_jsonl(source.with_name("prompts.errors.jsonl")) == []
    _assert_objects_match(stack, [obj for row in manifest for obj in row["objects"]])


def _acknowledged(state: RunState) -> int:
    log = state.directory / "acked.log"
    return log.read_bytes().count(b"\n") if log.exists() else 0


def _assert_objects_match(stack: StackInfo, objects: list[dict[str, Any]]) -> None:
    assert len(objects) == LINES
    client = Minio(
        stack.s3_endpoint,
        access_key=stack.s3_access_key,
        secret_key=stack.s3_secret_key,
        secure=False,
    )

    def read(obj: dict[str, Any]) -> tuple[int, str]:
        response = client.get_object(obj["bucket"], obj["key"])
        try:
            data = response.read()
        finally:
            response.close()
            response.release_conn()
        return len(data), hashlib.sha256(data).hexdigest()

    with ThreadPoolExecutor(max_workers=8) as pool:
        stored = list(pool.map(read, objects))
    assert stored == [(obj["size"], obj["sha256"]) for obj in objects], json.dumps(objects[:1])
