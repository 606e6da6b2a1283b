"""Results: copy a finished job's output files into the object store before announcing them.

Each file is downloaded while its URL is valid (size-capped, SHA-256 while streaming, byte
count checked), uploaded under a deterministic key so a retry overwrites identical bytes, and
replaced in the result by its object-store reference.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

from opentelemetry.trace import Tracer

from genrelay.consumer.artifacts.files import (
    Downloader,
    FileRef,
    file_extension,
    object_key,
    replace_files,
    walk_files,
)
from genrelay.consumer.artifacts.object_store import ObjectStore
from genrelay.consumer.service import failpoints
from genrelay.consumer.service.metrics import RelayMetrics
from genrelay.consumer.service.telemetry import Step, step_span
from genrelay.schemas.completions import Artifact
from genrelay.schemas.ledger import LedgerRecord


class ResultFiles:
    """The `FileStorer` the jobs use: downloader plus object store."""

    def __init__(
        self,
        downloader: Downloader,
        store: ObjectStore,
        *,
        bucket: str,
        prefix: str,
        tracer: Tracer,
        metrics: RelayMetrics,
        concurrency: int = 32,
    ) -> None:
        self._downloader = downloader
        self._store = store
        self._bucket = bucket
        self._prefix = prefix
        self._tracer = tracer
        self._metrics = metrics
        # Bounds the files in flight whatever the slots hold: after a failover every
        # restored key may want its files at once.
        self._copying = asyncio.Semaphore(concurrency)

    async def store(self, record: LedgerRecord) -> tuple[tuple[Artifact, ...], Any]:
        """Store every file of `record.result`; returns the artifacts and the rewritten result."""
        async with self._copying:
            return await self._copy_all(record)

    async def _copy_all(self, record: LedgerRecord) -> tuple[tuple[Artifact, ...], Any]:
        target = record.request.output
        bucket = (target.bucket if target else None) or self._bucket
        prefix = (target.prefix if target else None) or self._prefix
        await self._store.ensure_bucket(bucket)
        artifacts: list[Artifact] = []
        references: dict[Any, str] = {}
        for n, ref in enumerate(walk_files(record.result, self._downloader.file_hosts)):
            artifact = await self._copy(ref, bucket, prefix, record, n)
            artifacts.append(artifact)
            references[ref.path] = f"s3://{artifact.bucket}/{artifact.key}"
        return tuple(artifacts), replace_files(record.result, references)

    async def _copy(
        self, ref: FileRef, bucket: str, prefix: str, record: LedgerRecord, n: int
    ) -> Artifact:
        key = record.idempotency_key
        started = time.perf_counter()
        with step_span(self._tracer, Step.DOWNLOAD, record.traceparent):
            downloaded = await self._downloader.download(ref)
        self._metrics.downloaded(downloaded.size, time.perf_counter() - started)
        failpoints.reached("mid_download")
        try:
            ext = file_extension(downloaded.content_type, ref.file_name)
            started = time.perf_counter()
            with step_span(self._tracer, Step.UPLOAD, record.traceparent):
                stored = await self._store.put_file(
                    bucket,
                    object_key(prefix, key, n, ext),
                    downloaded.file,
                    downloaded.size,
                    downloaded.content_type,
                    # Object metadata must be ASCII: the key is stored percent-encoded.
                    {"sha256": downloaded.sha256, "idempotency-key": quote(key, safe="")},
                )
            self._metrics.uploaded(downloaded.size, time.perf_counter() - started)
        finally:
            downloaded.close()
        return Artifact(
            bucket=stored.bucket,
            key=stored.key,
            size=downloaded.size,
            sha256=downloaded.sha256,
            content_type=downloaded.content_type,
            etag=stored.etag,
        )
