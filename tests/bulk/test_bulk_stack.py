"""The bulk commands on the real broker, real MinIO and the emulator: CSV in, files out,
and a run cancelled while its jobs are running."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

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
    s3_flags,
    stack_flags,
    write_jsonl,
)
from tests.relay.harness import running

pytestmark = pytest.mark.integration

ENDPOINT = "fal-ai/flux/schnell"


async def test_a_csv_run_collected_later_downloads_files_matching_the_manifest(
    stack: StackInfo, emulator: EmulatorServer, tmp_path: Path
) -> None:
    settings = relay_for_bulk(stack, emulator)
    source = tmp_path / "sale.csv"
    source.write_text(
        "prompt,seed,image_size\n"
        + "".join(f'poster {n},{n},"{{""width"": 64, ""height"": 64}}"\n' for n in range(20))
    )
    state_dir = ["--state-dir", str(tmp_path / "state")]
    flags = stack_flags(stack, settings)
    bulk_id = default_bulk_id(source.read_bytes())
    files = tmp_path / "files"

    async with running(settings):
        submit = ["bulk", "submit", str(source), "--endpoint", ENDPOINT, "--no-wait"]
        assert await cli.run(parse(submit + flags + state_dir), output=quiet()) == 0
        await eventually(lambda: len(emulator.submissions()) == 20)
        collect = ["bulk", "collect", bulk_id, "--timeout", "60", "--download", str(files)]
        assert await cli.run(parse(collect + s3_flags(stack) + state_dir), output=quiet()) == 0

    status = quiet()
    assert await cli.run(parse(["bulk", "status", bulk_id, *state_dir]), output=status) == 0
    assert "completed        20" in printed(status)
    manifest = read_jsonl(tmp_path / "sale.manifest.jsonl")
    assert [row["line"] for row in manifest] == list(range(2, 22))
    for row in manifest:
        (obj,) = row["objects"]
        assert Path(obj["path"]).is_relative_to(files)
        assert _size_and_sha256(Path(obj["path"])) == (obj["size"], obj["sha256"])
    assert {s.input["seed"] for s in emulator.submissions()} == set(range(20))
    assert {s.priority for s in emulator.submissions()} == {"low"}


async def test_cancelling_a_run_cancels_its_running_jobs(
    stack: StackInfo, emulator: EmulatorServer, tmp_path: Path
) -> None:
    emulator.configure(run_latency="fixed:120000")  # the jobs would run for two minutes
    settings = relay_for_bulk(stack, emulator)
    source = write_jsonl(tmp_path / "slow.jsonl", [{"prompt": f"slow {n}"} for n in range(10)])
    state_dir = ["--state-dir", str(tmp_path / "state")]
    flags = stack_flags(stack, settings)
    bulk_id = default_bulk_id(source.read_bytes())

    async with running(settings):
        submit = ["bulk", "submit", str(source), "--endpoint", ENDPOINT, "--no-wait"]
        assert await cli.run(parse(submit + flags + state_dir), output=quiet()) == 0
        await eventually(lambda: len(emulator.submissions()) == 10)
        assert await cli.run(parse(["bulk", "cancel", bulk_id, *state_dir]), output=quiet()) == 0
        collect = ["bulk", "collect", bulk_id, "--timeout", "60", *state_dir]
        assert await cli.run(parse(collect), output=quiet()) == 1

    counts = RunState(tmp_path / "state", bulk_id).snapshot().counts()
    assert counts == Counts(total=10, submitted=10, completed=0, failed=0, cancelled=10, rejected=0)
    assert {row["type"] for row in read_jsonl(tmp_path / "slow.errors.jsonl")} == {
        "client_cancelled"
    }
    # A cancelled run is not sent again.
    assert await cli.run(parse(submit + flags + state_dir), output=quiet()) == 2
    assert len(emulator.submissions()) == 10


def _size_and_sha256(path: Path) -> tuple[int, str]:
    data = path.read_bytes()
    return len(data), hashlib.sha256(data).hexdigest()
