"""The relay the security tests attack: the session's Kafka and MinIO, an emulator that signs
with `helpers.SEED`, and small size caps so that going over them is cheap."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from minio import Minio

from genrelay.consumer.provider.webhook_receiver import WEBHOOK_PATH
from genrelay.consumer.provider.webhook_signature import WebhookToken
from genrelay.consumer.service.config import Settings
from genrelay.consumer.service.relay import Relay
from genrelay.deploy.local.stack import StackInfo
from genrelay.emulator.server import EmulatorServer
from genrelay.emulator.settings import EmulatorSettings
from tests.relay.harness import relay_settings, running
from tests.security.helpers import SEED, Offsets, end_offsets, settled

MAX_RECORD_BYTES = 2048
MAX_WEBHOOK_BYTES = 16 * 1024
# The emulator's 64x64 PNG (about 650 bytes) fits; its 512x512 one (about 9 KB) does not.
MAX_DOWNLOAD_BYTES = 4096


@dataclass
class Service:
    """A running relay and what the tests need to reach it."""

    stack: StackInfo
    emulator: EmulatorServer
    settings: Settings
    relay: Relay
    http: httpx.AsyncClient  # the public listener
    admin: httpx.AsyncClient  # the admin listener

    def webhook_url(self, key: str, *, token_for: str | None = None) -> str:
        """`key`'s webhook URL, carrying the token of `token_for` (default: `key`'s own)."""
        tokens = WebhookToken(self.settings.webhook_secret.get_secret_value().encode())
        token = tokens.token(token_for or key, 1)
        params = {"key": key, "attempt": "1", "token": token}
        return str(httpx.URL(WEBHOOK_PATH, params=params))

    async def written(self) -> Offsets:
        """End offsets of the webhooks and ledger topics, once no job is running."""
        await settled(self.relay)
        topics = self.settings.topics
        return await end_offsets(
            self.stack.kafka_bootstrap, [topics.webhooks, topics.ledger], self.settings.partitions
        )

    async def objects(self, bucket: str | None = None) -> list[str]:
        """Every object name in `bucket` (default: the relay's); none if it does not exist."""
        client = minio_client(self.stack)
        name = bucket or self.settings.bucket

        def names() -> list[str]:
            if not client.bucket_exists(name):
                return []
            return sorted(str(o.object_name) for o in client.list_objects(name, recursive=True))

        return await asyncio.to_thread(names)


def minio_client(stack: StackInfo) -> Minio:
    return Minio(
        stack.s3_endpoint,
        access_key=stack.s3_access_key,
        secret_key=stack.s3_secret_key,
        secure=False,
    )


@pytest.fixture(scope="package")
async def service(stack: StackInfo) -> AsyncIterator[Service]:
    async with EmulatorServer(EmulatorSettings(signing_seed_hex=SEED.hex())) as emulator:
        settings = relay_settings(
            stack,
            emulator,
            max_record_bytes=MAX_RECORD_BYTES,
            max_webhook_bytes=MAX_WEBHOOK_BYTES,
            max_download_bytes=MAX_DOWNLOAD_BYTES,
        )
        async with (
            running(settings) as relay,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.http_port}") as http,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.admin_port}") as admin,
        ):
            yield Service(stack, emulator, settings, relay.relay, http, admin)
