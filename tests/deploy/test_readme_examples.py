"""The README's local-stack examples, run as written against `genrelay local`: a first request
with `submit --wait`, then a bulk run that downloads its files; the console stays compact and
the full log is where the console says."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.waiting import eventually

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
VENV_BIN = Path(sys.executable).parent


def readme_command(starts_with: str) -> list[str]:
    """The README's one command line that starts with `starts_with` (continuations joined)."""
    lines = README.read_text().replace("\\\n", " ").splitlines()
    found = [line.strip() for line in lines if line.strip().startswith(starts_with)]
    assert len(found) == 1, found
    words = shlex.split(found[0].split(" #")[0])
    # `.venv/bin/genrelay` and `genrelay` are this interpreter's command, wherever it lives.
    return [str(VENV_BIN / "genrelay"), *words[1:]]


async def _run(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    async with asyncio.timeout(240):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
async def local_stack(tmp_path: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """`genrelay local`, as `deploy/local/run.sh` starts it, in a fresh working directory."""
    process = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "genrelay"),
        "local",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        await eventually(lambda: (tmp_path / ".genrelay" / "stack.json").exists(), timeout=180)
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            async with asyncio.timeout(60):
                await process.wait()


async def test_the_readme_examples_work_as_written_on_the_local_stack(
    local_stack: asyncio.subprocess.Process, tmp_path: Path
) -> None:
    code, out, err = await _run(readme_command(".venv/bin/genrelay submit --wait"), tmp_path)
    assert code == 0, err[-2000:]
    assert '"status": "succeeded"' in out or '"status":"succeeded"' in out, out[-2000:]

    prompts = [{"prompt": f"a lighthouse at dawn, take {n}", "seed": n} for n in range(4)]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    code, out, err = await _run(readme_command("genrelay bulk submit prompts.jsonl"), tmp_path)
    assert code == 0, err[-2000:]
    assert "Retrying" not in err  # no retry floods from libraries
    files = [f for f in (tmp_path / "out").rglob("*") if f.is_file()]
    assert len(files) == len(prompts)
    assert all(f.read_bytes().startswith(b"\x89PNG") for f in files)

    local_stack.send_signal(signal.SIGINT)
    async with asyncio.timeout(60):
        console_out, console_err = await local_stack.communicate()
    console = console_out.decode() + console_err.decode()
    assert local_stack.returncode == 0, console[-2000:]
    assert "full logs in .genrelay/local.log" in console
    # The console is compact: the Kafka client's chatter and start-up errors are in the file.
    assert "aiokafka" not in console
    assert "GroupCoordinator" not in console
    assert len(console.splitlines()) < 40, console
    log = (tmp_path / ".genrelay" / "local.log").read_text()
    assert "aiokafka" in log
    assert "ledger partitions" in log  # the relay's own INFO lines
