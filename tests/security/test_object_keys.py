"""Object keys never escape their prefix, whatever the idempotency key or prefix a record names.

Already covered in `tests/unit/test_artifacts.py`: `object_key` quotes the idempotency key
into one segment (`test_object_key_quotes_the_idempotency_key_into_one_segment`), "." and
".." cannot climb (`test_dot_keys_cannot_climb_out_of_the_prefix`), prefixes with empty or
dot segments are refused (`test_a_prefix_with_empty_or_dot_segments_is_refused`), the S3
length limit (`test_key_longer_than_s3_allows_is_refused`), and properties over any key
(`test_object_key_never_escapes_its_prefix`, `test_distinct_keys_never_share_a_folder`).

Added here, through the running relay and MinIO: keys built to climb out are stored under the
request's prefix and nothing lands elsewhere; and a record whose key or prefix cannot be
stored is refused without taking the relay down.
"""

from __future__ import annotations

import asyncio
import posixpath
from urllib.parse import unquote

import pytest
from aiokafka import AIOKafkaConsumer

from genrelay.consumer.service.config import Settings
from genrelay.consumer.service.relay import Relay
from genrelay.deploy.local.stack import StackInfo
from genrelay.schemas.fields import IDEMPOTENCY_KEY_MAX_LENGTH
from tests.relay.harness import (
    TopicReader,
    completions_by_key,
    produce,
    relay_settings,
    submit_record,
)
from tests.security.conftest import Service

pytestmark = pytest.mark.integration

PREFIX = "tenant-a"
CLIMBING_KEYS = [
    "../../etc/x",
    "a/../../b",
    "..",
    ".",
    "/absolute/key",
    "./x/..",
    "%2e%2e%2f%2e%2e%2fencoded",
    "..\\..\\backslashes",
    "a//b",
    "ünï/../cöde",
]


async def test_climbing_idempotency_keys_are_stored_under_the_prefix(service: Service) -> None:
    topics = service.settings.topics
    records = [
        (key.encode(), submit_record(key, f"climb {n}", output={"prefix": PREFIX}))
        for n, key in enumerate(CLIMBING_KEYS)
    ]
    await produce(service.stack.kafka_bootstrap, topics.requests, records)
    async with TopicReader(service.stack.kafka_bootstrap, topics.completions) as reader:
        await reader.until(lambda rs: set(CLIMBING_KEYS) <= set(completions_by_key(rs)), 60)

    events = completions_by_key(reader.records)
    stored: set[str] = set()
    for key in CLIMBING_KEYS:
        [event] = events[key]
        assert event["status"] == "succeeded", event["error"]
        for artifact in event["artifacts"]:
            name = artifact["key"]
            prefix, segment, file_name = name.split("/")
            assert (prefix, unquote(segment), file_name) == (PREFIX, key, "0.png")
            assert posixpath.normpath(name) == name
            stored.add(name)
    in_bucket = [o for o in await service.objects() if o.startswith(PREFIX + "/")]
    assert set(in_bucket) == stored
    assert all(name.startswith(PREFIX + "/") for name in await service.objects())


# A record whose files cannot be stored must be refused, not crash the replica. A crash is a
# poison pill: the job resumes from the ledger on whichever replica takes the partition next,
# which crashes in turn. In both cases below the generation has already been paid for.
UNSTORABLE = {
    "dot-prefix": ("dots/in-prefix", {"output": {"prefix": "../../elsewhere"}}),
    # A valid 512-character key whose percent-encoding (3 bytes per "/") is over S3's
    # 1,024-byte key limit.
    "long-key": ("/" * IDEMPOTENCY_KEY_MAX_LENGTH, {}),
}


@pytest.mark.parametrize("case", sorted(UNSTORABLE))
async def test_a_record_whose_files_cannot_be_stored_is_refused_without_a_crash(
    service: Service, case: str
) -> None:
    key, extra = UNSTORABLE[case]
    settings = relay_settings(service.stack, service.emulator)
    outcome = await first_outcome(
        service.stack, settings, key, submit_record(key, f"unstorable {case}", **extra)
    )
    assert outcome in {"dead_letter", "completion"}
    stored = await service.objects(settings.bucket)
    assert all(".." not in name.split("/") for name in stored)


async def first_outcome(stack: StackInfo, settings: Settings, key: str, record: bytes) -> str:
    """Run a relay of its own on `record`: "dead_letter" or "completion" for `key`, whichever
    comes first, or "crash: …" if the relay stops on its own."""
    topics = settings.topics
    async with Relay(settings) as relay:
        task = asyncio.get_running_loop().create_task(relay.run())
        watcher = AIOKafkaConsumer(
            topics.completions,
            topics.dead_letter,
            bootstrap_servers=stack.kafka_bootstrap,
            auto_offset_reset="earliest",
        )
        await watcher.start()
        try:
            await produce(stack.kafka_bootstrap, topics.requests, [(key.encode(), record)])
            async with asyncio.timeout(60):
                while not task.done():
                    batch = await watcher.getmany(timeout_ms=200)
                    for tp, messages in batch.items():
                        if any(message.key == key.encode() for message in messages):
                            return "dead_letter" if tp.topic == topics.dead_letter else "completion"
            return f"crash: {task.exception()!r}"
        finally:
            await watcher.stop()
            relay.stop()
            await asyncio.gather(task, return_exceptions=True)
