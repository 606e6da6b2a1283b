"""`genrelay local`: the whole embedded stack on 127.0.0.1 until Ctrl-C.

Starts a real Kafka node and MinIO server, the fal-compatible emulator and one relay, then
prints and writes (`.genrelay/stack.json`) what a user needs next, so tools can find them.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import sys
import time
from pathlib import Path

from genrelay.consumer.service.config import Settings
from genrelay.consumer.service.relay import Relay
from genrelay.deploy.local.processes import free_port
from genrelay.deploy.local.stack import LocalStack, StackInfo
from genrelay.emulator.server import EmulatorServer

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
    lines += [
        "",
        "Submit a first request and wait for its completion event:",
        f"  .venv/bin/genrelay submit --bootstrap {info.kafka_bootstrap} --wait \\",
        '      fal-ai/flux/schnell \'{"prompt": "a lighthouse at dawn", "seed": 7}\'',
        "Completion events arrive on genrelay.completions, files in the 'genrelay' bucket.",
    ]
    return "\n".join(lines)


def relay_settings(
    info: StackInfo, emulator: EmulatorServer, port: int, admin_port: int
) -> Settings:
    """The relay's settings on the local stack: every address points at 127.0.0.1."""
    return Settings(
        kafka_bootstrap=info.kafka_bootstrap,
        fal_queue_url=emulator.base_url,
        fal_platform_url=f"{emulator.base_url}/v1",
        fal_key="emulator-key",
        fal_jwks_url=emulator.jwks_url,
        http_port=port,
        admin_port=admin_port,
        public_webhook_url=f"http://127.0.0.1:{port}",
        webhook_secret=secrets.token_urlsafe(32),
        s3_endpoint=info.s3_endpoint,
        s3_access_key=info.s3_access_key,
        s3_secret_key=info.s3_secret_key,
        download_hosts=["127.0.0.1"],
        allow_private_downloads=True,
        poll_grace_seconds=10.0,
    )


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def run_local(state_file: Path = STACK_FILE) -> int:
    """Run the local stack until SIGINT or SIGTERM; returns the exit code."""
    started = time.monotonic()
    port, admin_port = free_port(), free_port()
    async with LocalStack() as stack, EmulatorServer() as emulator:
        settings = relay_settings(stack.info, emulator, port, admin_port)
        async with Relay(settings) as relay:
            relay_task = asyncio.get_running_loop().create_task(relay.run())
            info = StackInfo(
                **{k: v for k, v in stack.info.to_json().items()},
                extra={
                    "emulator_url": emulator.base_url,
                    "webhook_url": f"http://127.0.0.1:{port}/webhooks/fal",
                    "ready_url": f"http://127.0.0.1:{port}/readyz",
                    "status_page": f"http://127.0.0.1:{admin_port}/status",
                },
            )
            await asyncio.to_thread(info.write, state_file)
            print(describe(info), flush=True)
            print(f"  ready in {time.monotonic() - started:.1f} s; see {state_file}", flush=True)
            try:
                await _until_signalled()
            finally:
                relay.stop()
                await relay_task
                await asyncio.to_thread(state_file.unlink, missing_ok=True)
    print("genrelay local stack stopped", file=sys.stderr)
    return 0
