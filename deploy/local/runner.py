"""`genrelay local`: the whole embedded stack on 127.0.0.1 until Ctrl-C.

Starts a real Kafka node and MinIO server, then prints and writes (`.genrelay/stack.json`)
what a user needs next, so tools can find the stack.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

from genrelay.deploy.local.stack import LocalStack, StackInfo

STACK_FILE = Path(".genrelay") / "stack.json"


def describe(info: StackInfo) -> str:
    """The human-readable summary printed once the stack is up."""
    lines = [
        "genrelay local stack is up (Ctrl-C stops everything)",
        f"  Kafka bootstrap : {info.kafka_bootstrap}",
        f"  MinIO endpoint  : http://{info.s3_endpoint}",
        f"  MinIO access key: {info.s3_access_key}",
        f"  MinIO secret key: {info.s3_secret_key}",
    ]
    lines += [f"  {name:<16}: {value}" for name, value in info.extra.items()]
    return "\n".join(lines)


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def run_local(state_file: Path = STACK_FILE) -> int:
    """Run the local stack until SIGINT or SIGTERM; returns the exit code."""
    started = time.monotonic()
    async with LocalStack() as stack:
        info = stack.info
        await asyncio.to_thread(info.write, state_file)
        print(describe(info), flush=True)
        print(f"  ready in {time.monotonic() - started:.1f} s; details in {state_file}", flush=True)
        try:
            await _until_signalled()
        finally:
            await asyncio.to_thread(state_file.unlink, missing_ok=True)
    print("genrelay local stack stopped", file=sys.stderr)
    return 0
