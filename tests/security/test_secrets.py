"""Secrets never appear in logs, events, dead letters, error messages, HTTP answers or reprs.

Already covered: `tests/telemetry/test_logs.py` (`test_secrets_are_redacted_wherever_they_
appear`: the redactor on messages, arguments, extras, tracebacks and URL-encoded forms);
`tests/unit/test_artifacts.py` (`test_a_client_carrying_credentials_is_refused`).

Added here: one relay run with distinctive secrets (fal key, webhook secret, S3 access and
secret keys) that provokes the errors most likely to carry them: fal refusing the key (401),
the object store refusing the S3 secret, bad webhooks, malformed records. Everything it
produced is searched: JSON log lines as `configure_logging` writes them, an unredacted copy
of every log record (arguments and extras included; uvicorn's and libraries' too), the
completion, progress, ledger and dead-letter topics, the HTTP answers, and `Settings` reprs.
The emulator runs in its own process so that only the relay's logs are captured.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from minio.credentials.providers import StaticProvider
from minio.minioadmin import MinioAdmin

from genrelay.bench.workload import read_topic as read_whole_topic
from genrelay.consumer.provider.webhook_receiver import WEBHOOK_PATH
from genrelay.consumer.provider.webhook_signature import WebhookToken
from genrelay.consumer.service.config import Settings
from genrelay.consumer.service.logs import configure_logging
from genrelay.deploy.local.stack import StackInfo
from genrelay.emulator.signing import Keyring
from tests.relay.harness import (
    TopicReader,
    completions_by_key,
    produce,
    relay_settings,
    running,
    submit_record,
)
from tests.security.conftest import Service
from tests.security.helpers import SEED, USER_ID, fal_body
from tests.waiting import eventually

pytestmark = pytest.mark.integration

RUN = uuid.uuid4().hex
FAL_KEY = f"falkey-{RUN}"
WEBHOOK_SECRET = f"whsecret-{RUN}"
S3_ACCESS_KEY = f"GRSEC{RUN[:16].upper()}"
S3_SECRET_KEY = f"s3secret/{RUN}+x"  # '/' and '+' appear escaped in URLs
SECRETS = {
    "fal_key": FAL_KEY,
    "webhook_secret": WEBHOOK_SECRET,
    "s3_access_key": S3_ACCESS_KEY,
    "s3_secret_key": S3_SECRET_KEY,
}
REFUSED_KEY = "secrets/refused-by-fal"
UNSTORED_KEY = "secrets/refused-by-s3"


class EverythingFormatter(logging.Formatter):
    """The formatted line plus every attribute of the record, arguments and extras included."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{super().format(record)} {vars(record)!r}"


@dataclass
class Captured:
    """What one relay run produced, each piece named for the report of a failure."""

    texts: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, data: bytes | str | None) -> None:
        text = data.decode(errors="replace") if isinstance(data, bytes) else data or ""
        self.texts[name] = self.texts.get(name, "") + text + "\n"

    def found(self, values: dict[str, str]) -> dict[str, set[str]]:
        """Which of `values` (or their URL-encoded forms) appear in which capture."""
        return {
            name: hits
            for name, text in self.texts.items()
            if (hits := {label for label, v in values.items() if v in text or quote(v, "") in text})
        }


@pytest.fixture(scope="module")
async def captured(service: Service) -> Captured:
    result = Captured()
    plain = io.StringIO()
    json_lines = io.StringIO()
    async with fal_emulator() as fal, s3_user(service.stack):
        with capturing_logs(plain, json_lines):
            await provoke(service, fal, result, plain)
    result.add("log (JSON, as configured)", json_lines.getvalue())
    result.add("log (every record, unredacted)", plain.getvalue())
    return result


@contextlib.contextmanager
def capturing_logs(plain: io.StringIO, json_lines: io.StringIO) -> Iterator[None]:
    """Every record at any level: unredacted into `plain`, as configured into `json_lines`."""
    root = logging.getLogger()
    level = root.level
    # Added first: configure_logging's handler redacts records in place as it formats them.
    unredacted = logging.StreamHandler(plain)
    unredacted.setFormatter(EverythingFormatter())
    root.addHandler(unredacted)
    handler = configure_logging("DEBUG", json=True, secrets=SECRETS.values(), stream=json_lines)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.removeHandler(unredacted)
        root.setLevel(level)


@dataclass
class FalEmulator:
    base_url: str
    http: aiohttp.ClientSession

    async def accept_keys(self, *keys: str) -> None:
        url = f"{self.base_url}/_emulator/config"
        async with self.http.patch(url, json={"api_keys": list(keys)}) as response:
            assert response.status == 200


@contextlib.asynccontextmanager
async def fal_emulator() -> AsyncIterator[FalEmulator]:
    """The emulator in a child process (its logs are not ours), accepting no key yet."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "genrelay.emulator",
        "--api-keys",
        "somebody-elses-key",
        "--signing-seed-hex",
        SEED.hex(),
        "--log-level",
        "WARNING",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        base_url = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip()
        async with aiohttp.ClientSession() as http:
            yield FalEmulator(base_url, http)
    finally:
        process.terminate()
        await process.wait()


@contextlib.asynccontextmanager
async def s3_user(stack: StackInfo) -> AsyncIterator[None]:
    """A MinIO user whose access key is `S3_ACCESS_KEY`, with a secret other than ours: the
    relay's uploads are then refused for their signature."""
    admin = MinioAdmin(
        endpoint=stack.s3_endpoint,
        credentials=StaticProvider(stack.s3_access_key, stack.s3_secret_key),
        secure=False,
    )
    await asyncio.to_thread(admin.user_add, S3_ACCESS_KEY, f"the-real-one-{RUN}")
    try:
        yield
    finally:
        await asyncio.to_thread(admin.user_remove, S3_ACCESS_KEY)


async def provoke(service: Service, fal: FalEmulator, result: Captured, plain: io.StringIO) -> None:
    stack = service.stack
    settings = relay_settings(
        stack,
        service.emulator,
        fal_queue_url=fal.base_url,
        fal_jwks_url=f"{fal.base_url}/.well-known/jwks.json",
        **SECRETS,
    )
    topics = settings.topics
    tokens = WebhookToken(WEBHOOK_SECRET.encode())
    # The relay's first attempt of a key is attempt 1: its URL carries this token.
    result.tokens = {key: tokens.token(key, 1) for key in (REFUSED_KEY, UNSTORED_KEY)}
    result.add("repr(Settings)", repr(settings))
    result.add("str(Settings)", str(settings))
    result.add("Settings.model_dump_json", settings.model_dump_json())
    async with running(settings):
        # fal refuses the key: the job fails with the provider's 401 in its error.
        await produce(stack.kafka_bootstrap, topics.requests, [record(REFUSED_KEY), bad_record()])
        async with TopicReader(stack.kafka_bootstrap, topics.completions) as done:
            await done.until(lambda rs: REFUSED_KEY in completions_by_key(rs), timeout=30)
        # fal accepts it now; the upload is refused for its S3 signature, and retried.
        await fal.accept_keys(FAL_KEY)
        await produce(stack.kafka_bootstrap, topics.requests, [record(UNSTORED_KEY)])
        await eventually(lambda: "storing files failed" in plain.getvalue(), timeout=30)
        await bad_webhooks(fal.http, settings, result)
        await garbage_request(settings.http_port)
        for path in ("/status.json", "/metrics", "/readyz"):
            async with fal.http.get(f"http://127.0.0.1:{settings.http_port}{path}") as answer:
                result.add(f"GET {path}", await answer.read())
    searched = {
        "completions": topics.completions,
        "progress": topics.progress,
        "ledger": topics.ledger,
        "dead letters": topics.dead_letter,
    }
    for role, topic in searched.items():
        for message in await read_topic(stack, settings, topic):
            result.add(f"topic {role}", message.value)
            result.add(f"topic {role}", repr(message.headers))


def record(key: str) -> tuple[bytes, bytes]:
    return key.encode(), submit_record(key, "a secret-free prompt")


def bad_record() -> tuple[bytes, bytes]:
    return b"secrets/malformed", b'{"schema_version": 1, "action": "submit"'


async def bad_webhooks(http: aiohttp.ClientSession, settings: Settings, result: Captured) -> None:
    """A wrong token, a bad signature and a malformed signed body, on the key whose upload is
    failing. Sent with aiohttp, which logs no URLs: only the relay's own logs are captured."""
    receiver = f"http://127.0.0.1:{settings.http_port}{WEBHOOK_PATH}"
    base = f"{receiver}?key={quote(UNSTORED_KEY, '')}&attempt=1"
    token = result.tokens[UNSTORED_KEY]
    body = fal_body()
    genuine = Keyring(SEED).sign("req-1", USER_ID, b"not json").headers()
    attempts = {
        "wrong token": (f"{base}&token={'A' * 43}", body, genuine),
        "bad signature": (f"{base}&token={token}", body, genuine),
        "malformed signed body": (f"{base}&token={token}", b"not json", genuine),
    }
    for name, (url, content, headers) in attempts.items():
        async with http.post(url, data=content, headers=headers) as answer:
            assert 400 <= answer.status < 500, name
            result.add(f"webhook answer ({name})", await answer.read())


async def garbage_request(port: int) -> None:
    """Bytes that are not HTTP, so that uvicorn itself logs."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    await writer.drain()
    await reader.read()  # uvicorn answers 400 and closes
    writer.close()
    await writer.wait_closed()


async def read_topic(stack: StackInfo, settings: Settings, topic: str) -> list[Any]:
    """Every record committed to `topic` so far (transaction markers take offsets too, so the
    topic is read to its end offsets by position, not by counting records)."""
    return await read_whole_topic(stack.kafka_bootstrap, topic)


def test_no_secret_appears_anywhere(captured: Captured) -> None:
    assert captured.found(SECRETS) == {}


def test_the_run_produced_what_is_searched(captured: Captured) -> None:
    # The search above means something only if the errors really happened.
    texts = captured.texts
    assert "401" in texts["topic completions"]
    assert "storing files failed" in texts["log (every record, unredacted)"]
    assert "'name': 'uvicorn.error'" in texts["log (every record, unredacted)"]
    assert "not_json" in texts["topic dead letters"]
    assert "bad_token" in texts["webhook answer (wrong token)"]
    assert "bad_signature" in texts["webhook answer (bad signature)"]


def test_webhook_tokens_never_appear_in_logs_or_events(captured: Captured) -> None:
    assert captured.found(captured.tokens) == {}
