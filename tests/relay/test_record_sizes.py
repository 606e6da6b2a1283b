"""No record can exceed what the broker accepts: a key whose state would be too large ends with
a terminal event, a record too large to copy whole is dead-lettered once, cut to fit, and the
relay keeps running."""

from __future__ import annotations

import pytest

from genrelay.bench.workload import read_topic
from genrelay.deploy.local.stack import StackInfo
from genrelay.emulator.server import EmulatorServer
from genrelay.schemas.dead_letter import REASON_HEADER, TRUNCATED_FROM_HEADER
from genrelay.schemas.topics import partition_for
from tests.relay.harness import (
    TopicReader,
    completions_by_key,
    produce,
    relay_settings,
    running,
    submit_record,
)

pytestmark = pytest.mark.integration


async def test_oversized_states_end_in_terminal_events_and_the_relay_keeps_running(
    stack: StackInfo, emulator: EmulatorServer
) -> None:
    settings = relay_settings(stack, emulator)
    # Accepted (below the record limit), but its result echoes the prompt: input plus result
    # are more than a ledger record may hold.
    big_prompt = "p" * (700 * 1024)
    # Above the record limit, and too large to copy whole into a dead letter.
    oversized = b'{"schema_version": 1, "pad": "' + b"x" * (1_048_000 - 40) + b'"}'
    async with running(settings) as relay:
        await produce(
            stack.kafka_bootstrap,
            settings.topic_requests,
            [
                (b"huge", submit_record("huge", big_prompt)),
                (b"oversized", oversized),
                (b"small", submit_record("small", "after")),
            ],
        )
        async with TopicReader(stack.kafka_bootstrap, settings.topic_completions) as reader:
            await reader.until(lambda rs: {"huge", "small"} <= completions_by_key(rs).keys())
        async with TopicReader(stack.kafka_bootstrap, settings.topic_dead_letter) as dead:
            await dead.until(lambda rs: len(rs) >= 1)
        assert not relay.task.done()
    events = completions_by_key(reader.records)
    (huge,) = events["huge"]
    assert huge["status"] == "failed"
    assert huge["error"]["type"] == "result_too_large"
    assert huge["request_id"]
    (small,) = events["small"]
    assert small["status"] == "succeeded"

    (letter,) = dead.records
    headers = dict(letter.headers)
    assert headers[REASON_HEADER] == b"oversized"
    assert int(headers[TRUNCATED_FROM_HEADER]) == len(oversized)
    assert oversized.startswith(letter.value)

    # A replica that takes over reads on from the committed offsets: nothing twice. "later"
    # shares the oversized record's partition, so by its completion that record was passed.
    later = _key_on_partition_of(b"oversized", settings.partitions)
    async with running(settings):
        await produce(
            stack.kafka_bootstrap,
            settings.topic_requests,
            [(later.encode(), submit_record(later, "later"))],
        )
        async with TopicReader(stack.kafka_bootstrap, settings.topic_completions) as reader:
            await reader.until(lambda rs: later in completions_by_key(rs))
    letters = await read_topic(stack.kafka_bootstrap, settings.topic_dead_letter)
    assert len(letters) == 1
    assert all(len(v) == 1 for v in completions_by_key(reader.records).values())


def _key_on_partition_of(key: bytes, partitions: int) -> str:
    wanted = partition_for(key, partitions)
    return next(
        f"later-{n}"
        for n in range(1000)
        if partition_for(f"later-{n}".encode(), partitions) == wanted
    )


async def test_a_result_with_inline_files_too_large_for_the_ledger_is_stored_and_announced(
    stack: StackInfo, emulator: EmulatorServer
) -> None:
    # sync_mode: fal answers with the images themselves, as data: URIs (here about 120 KB,
    # against records of at most 64 KiB).
    settings = relay_settings(stack, emulator, max_record_bytes=64 * 1024)
    inputs = {"prompt": "a cat", "num_images": 4, "image_size": "square_hd", "sync_mode": True}
    record = submit_record("inline", "a cat", input=inputs)
    async with running(settings):
        await produce(stack.kafka_bootstrap, settings.topic_requests, [(b"inline", record)])
        async with TopicReader(stack.kafka_bootstrap, settings.topic_completions) as reader:
            await reader.until(lambda rs: "inline" in completions_by_key(rs))
    (event,) = completions_by_key(reader.records)["inline"]
    assert event["status"] == "succeeded", event
    assert len(event["artifacts"]) == 4
    assert all(a["content_type"] == "image/png" and a["size"] > 0 for a in event["artifacts"])
    # The event names the stored copies; no base64 is left in it.
    assert all(image["object"].startswith("s3://") for image in event["result"]["images"])
    assert "data:" not in str(event["result"])
    assert len(emulator.submissions()) == 1
