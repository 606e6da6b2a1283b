"""Running one relay replica as a process: settings from the environment, JSON logs, signals."""

from __future__ import annotations

import asyncio
import signal

from genrelay.consumer.service.config import Settings
from genrelay.consumer.service.logs import configure_logging
from genrelay.consumer.service.relay import Relay


async def run_relay() -> int:
    """Run one replica until SIGINT or SIGTERM; the exit code."""
    settings = Settings()
    # An S3 access key id is not a secret (it names the user); the secret key is.
    secrets = [settings.fal_key, settings.webhook_secret, settings.s3_secret_key]
    secrets.append(settings.admin_token)
    configure_logging(
        settings.log_level, json=settings.log_json, secrets=[s.get_secret_value() for s in secrets]
    )
    async with Relay(settings) as relay:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, relay.stop)
        await relay.run()
    return 0
