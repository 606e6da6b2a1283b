"""Copying a result's files: bounded however many keys want their files at once."""

from __future__ import annotations

import asyncio
import hashlib
import io
from datetime import UTC, datetime

from opentelemetry.trace import NoOpTracer

from genrelay.consumer.artifacts.files import DownloadedFile, Downloader, FileRef
from genrelay.consumer.artifacts.object_store import MemoryStore
from genrelay.consumer.artifacts.results import ResultFiles
from genrelay.consumer.service.metrics import RelayMetrics
from genrelay.schemas.ledger import LedgerRecord, Phase

PNG = b"\x89PNG\r\n"


class HeldDownloads(Downloader):
    """Downloads that wait until released, counting how many run at once."""

    def __init__(self) -> None:
        super().__init__()
        self.running = 0
        self.most = 0
        self.gate = asyncio.Event()
        self.bound_reached = asyncio.Event()

    async def download(self, ref: FileRef) -> DownloadedFile:
        self.running += 1
        self.most = max(self.most, self.running)
        if self.running == 3:
            self.bound_reached.set()
        try:
            await self.gate.wait()
        finally:
            self.running -= 1
        return DownloadedFile(
            io.BytesIO(PNG), len(PNG), hashlib.sha256(PNG).hexdigest(), "image/png"
        )


def ready(key: str) -> LedgerRecord:
    now = datetime.now(UTC)
    return LedgerRecord(
        idempotency_key=key,
        phase=Phase.RESULT_READY,
        fingerprint="f",
        endpoint="fal-ai/flux/schnell",
        request={"idempotency_key": key},
        result={"images": [{"url": "https://v3.fal.media/a.png"}]},
        accepted_at=now,
        updated_at=now,
    )


async def test_no_more_keys_copy_files_at_once_than_the_bound() -> None:
    downloads = HeldDownloads()
    metrics = RelayMetrics()
    files = ResultFiles(
        downloads,
        MemoryStore(),
        bucket="b",
        prefix="p",
        tracer=NoOpTracer(),
        metrics=metrics,
        concurrency=3,
    )
    copies = [asyncio.create_task(files.store(ready(f"k{n}"))) for n in range(20)]
    await asyncio.wait_for(downloads.bound_reached.wait(), timeout=10)
    for _ in range(10):
        await asyncio.sleep(0)  # the other 17 had every chance to start
    assert downloads.running == 3
    downloads.gate.set()
    stored = await asyncio.gather(*copies)
    assert downloads.most == 3
    assert all(len(artifacts) == 1 for artifacts, _ in stored)
    await downloads.aclose()
    metrics.shutdown()
