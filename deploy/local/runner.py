"""`genrelay local`: the whole embedded stack on 127.0.0.1 until Ctrl-C.

Starts a real Kafka node and MinIO server, the fal-compatible emulator and one relay, then
prints and writes (`.genrelay/stack.json`) what a user needs next, so tools can find them.

The console stays compact: the summary, genrelay's own warnings and errors, and a line of
activity when something changed. Every log line of every component (the Kafka client's
chatter included) goes to `.genrelay/local.log`, whose path the console names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from genrelay.consumer.service.config import Settings
from genrelay.consumer.service.logs import SecretRedactor, configure_logging
from genrelay.consumer.service.relay import Relay
from genrelay.deploy.local.processes import free_port
from genrelay.deploy.local.stack import LocalStack, StackInfo
from genrelay.emulator.server import EmulatorServer

STACK_FILE = Path(".genrelay") / "stack.json"
LOG_FILE = Path(".genrelay") / "local.log"
# How often the console may print a line of activity (only when something changed).
ACTIVITY_SECONDS = 10.0


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


async def run_local(state_file: Path = STACK_FILE, log_file: Path = LOG_FILE) -> int:
    """Run the local stack until SIGINT or SIGTERM; returns the exit code."""
    started = time.monotonic()
    port, admin_port = free_port(), free_port()
    with compact_console(log_file) as log_to:
        print(f"genrelay local: starting; full logs in {log_file}", flush=True)
        async with LocalStack() as stack, EmulatorServer() as emulator:
            settings = relay_settings(stack.info, emulator, port, admin_port)
            log_to(_secrets(settings))
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
                ready = time.monotonic() - started
                print(f"  ready in {ready:.1f} s; see {state_file}", flush=True)
                activity = asyncio.get_running_loop().create_task(_report_activity(relay))
                try:
                    await _until_signalled()
                finally:
                    activity.cancel()
                    relay.stop()
                    await relay_task
                    await asyncio.to_thread(state_file.unlink, missing_ok=True)
    print("genrelay local stack stopped", file=sys.stderr)
    return 0


def _secrets(settings: Settings) -> list[str]:
    return [
        settings.s3_secret_key.get_secret_value(),
        settings.webhook_secret.get_secret_value(),
        settings.fal_key.get_secret_value(),
    ]


@contextlib.contextmanager
def compact_console(log_file: Path) -> Iterator[Callable[[list[str]], None]]:
    """Every record to `log_file`; to the console only genrelay's own warnings and errors.

    Yields a function that sets the secret values to redact, once they are known.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a", encoding="utf-8") as sink:
        console = _console_handler(sys.stderr)

        def redacting(values: list[str]) -> None:
            configure_logging(logging.INFO, json=False, secrets=values, stream=sink)
            for old in console.filters[:]:
                console.removeFilter(old)
            console.addFilter(_OwnWarnings())
            console.addFilter(SecretRedactor(values))

        redacting([])
        root = logging.getLogger()
        root.addHandler(console)
        try:
            yield redacting
        finally:
            root.removeHandler(console)
            console.close()


class _OwnWarnings(logging.Filter):
    """genrelay's warnings and errors; the libraries' go to the log file only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and record.name.startswith("genrelay")


def _console_handler(stream: TextIO) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    return handler


async def _report_activity(relay: Relay) -> None:
    """A line on the console when the relay's work changed, at most every few seconds."""
    last = ""
    while True:
        await asyncio.sleep(ACTIVITY_SECONDS)
        line = activity_line(relay.snapshot().to_json())
        if line != last:
            print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)
            last = line


def activity_line(status: dict[str, object]) -> str:
    """One line from the status page's data: in flight, finished and dead letters this hour."""
    trends = status.get("trends")
    points = trends if isinstance(trends, list) else []
    done = sum(int(p["completions"]) for p in points)
    failed = sum(int(p["failures"]) for p in points)
    dead = sum(int(p["dead_letters"]) for p in points)
    return (
        f"in flight {status.get('in_flight', 0)} · last hour: {done} succeeded,"
        f" {failed} failed, {dead} dead-lettered"
    )
