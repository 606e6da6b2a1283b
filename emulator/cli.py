"""Run the emulator standalone: `python -m genrelay.emulator --port 8000 --run-latency
lognormal:800:0.5`.

Every setting of `EmulatorSettings` is a flag (`failure_rate` is `--failure-rate`); flags
outrank `GENRELAY_EMULATOR_*` environment variables. The base URL is printed alone on the
first line of stdout, so scripts can read it; details go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from genrelay.emulator.server import EmulatorServer
from genrelay.emulator.settings import EmulatorSettings

_NONE = frozenset({"none", "null"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genrelay emulator",
        description="A fal-compatible queue emulator (queue API, signed webhooks, files).",
        epilog="Latencies: fixed:MS, uniform:MIN:MAX, lognormal:MEDIAN:SIGMA[:MAX]. "
        "Lists: comma-separated. Optional values accept 'none'.",
    )
    for name, field in EmulatorSettings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            metavar="VALUE",
            help=f"default: {default}",
        )
    parser.add_argument("--log-level", default="INFO", help="default: INFO")
    return parser


def settings_from(args: argparse.Namespace) -> EmulatorSettings:
    """Settings from the environment, overridden by the flags that were given."""
    overrides: dict[str, object] = {}
    for name in EmulatorSettings.model_fields:
        value = getattr(args, name)
        if value is not None:
            overrides[name] = None if value.lower() in _NONE else value
    return EmulatorSettings.model_validate(overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGINT or SIGTERM; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from(args)
    except ValidationError as exc:
        print(f"invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    try:
        asyncio.run(_serve(settings))
    except OSError as exc:
        print(f"cannot serve: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve(settings: EmulatorSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with EmulatorServer(settings) as server:
        print(server.base_url, flush=True)
        print(
            f"fal emulator on {server.base_url}\n"
            f"  fal-client: fal_client.client.QUEUE_URL_FORMAT = '{server.base_url}/'\n"
            f"  JWKS: {server.jwks_url}\n"
            f"  API keys: {', '.join(settings.api_keys)}\n"
            f"  control: {server.base_url}/_emulator/config",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()
