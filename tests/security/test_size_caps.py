"""Size caps on records, webhook bodies and downloads: going over one changes nothing.

Already covered:
- records: `tests/schemas/test_request_parsing.py` (the `oversized` reason code, and
  `test_a_record_exactly_at_the_limit_is_accepted`);
- webhook bodies: `tests/relay/test_webhook_receiver.py` (case `oversized_body`: a declared
  Content-Length over the cap is a 413 and no topic changes);
- downloads: `tests/unit/test_artifacts.py` (`test_declared_size_over_the_cap_is_refused_
  before_reading`, `test_content_length_over_the_cap_is_refused`, `test_body_over_the_cap_
  is_refused_while_streaming`).

Added here: the record cap through the running relay (a dead letter with the original bytes,
never paid for); a chunked webhook body, with no Content-Length to trust, cut off at the cap
(in process, endless, and over HTTP); a result file over the download cap ends the job
`failed` with `download_refused` and nothing in MinIO.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from urllib.parse import quote

import pytest

from genrelay.schemas.dead_letter import DeadLetterInfo
from tests.relay.harness import TopicReader, completions_by_key, produce, submit_record
from tests.security.conftest import MAX_RECORD_BYTES, MAX_WEBHOOK_BYTES, Service
from tests.security.helpers import as_asgi, asgi_call, fal_body, in_process_receiver, signed

pytestmark = pytest.mark.integration


async def test_record_over_the_cap_is_dead_lettered_whole_and_never_paid(
    service: Service,
) -> None:
    key = "caps/oversized-record"
    marker = "oversized-record-marker"
    record = submit_record(key, marker + "x" * MAX_RECORD_BYTES)
    assert len(record) > MAX_RECORD_BYTES
    await produce(
        service.stack.kafka_bootstrap, service.settings.topic_requests, [(key.encode(), record)]
    )

    async with TopicReader(service.stack.kafka_bootstrap, service.settings.topic_dead_letter) as dl:
        await dl.until(lambda rs: any(r.key == key.encode() for r in rs), timeout=30)
    [dead] = [r for r in dl.records if r.key == key.encode()]
    assert DeadLetterInfo.from_headers(dead.headers).reason == "oversized"
    assert dead.value == record
    assert service.emulator.submissions(input_contains=marker) == []


def endless_chunks() -> itertools.repeat[bytes]:
    return itertools.repeat(b"x" * 1024)


async def test_endless_chunked_webhook_body_is_cut_off_at_the_cap() -> None:
    async with in_process_receiver(max_body_bytes=MAX_WEBHOOK_BYTES) as receiver:
        answer = await asgi_call(
            receiver.app,
            query=receiver.query("caps/k"),
            headers=as_asgi(signed(fal_body())),
            chunks=endless_chunks(),
        )
    assert answer.status == 413
    assert receiver.handoffs == []


async def test_chunked_webhook_body_over_the_cap_is_refused_over_http(service: Service) -> None:
    key = "caps/chunked"

    async def body() -> AsyncIterator[bytes]:
        for _ in range(2 * MAX_WEBHOOK_BYTES // 1024):
            yield b" " * 1024

    before = await service.written()
    response = await service.http.post(
        service.webhook_url(key), content=body(), headers=signed(fal_body())
    )
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert response.status_code == 413
    assert response.json() == {"error": "body_too_large"}
    assert await service.written() == before


async def test_result_file_over_the_download_cap_fails_the_job_and_stores_nothing(
    service: Service,
) -> None:
    key = "caps/large-file"
    # The emulator's 512x512 PNG is about 9 KB, over the relay's 4 KB download cap.
    big = {"prompt": "big", "image_size": {"width": 512, "height": 512}}
    record = submit_record(key, "big", input=big)
    await produce(
        service.stack.kafka_bootstrap, service.settings.topic_requests, [(key.encode(), record)]
    )
    async with TopicReader(service.stack.kafka_bootstrap, service.settings.topic_completions) as c:
        await c.until(lambda rs: key in completions_by_key(rs), timeout=60)

    [event] = completions_by_key(c.records)[key]
    assert (event["status"], event["error"]["type"]) == ("failed", "download_refused")
    assert event["artifacts"] == []
    folder = quote(key, safe="")
    assert [name for name in await service.objects() if folder in name] == []
