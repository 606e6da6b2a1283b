"""Results: copy a finished job's output files into the object store before announcing them.

Each file is downloaded while its URL is valid (size-capped, SHA-256 while streaming, byte
count checked), uploaded under a deterministic key so a retry overwrites identical bytes, and
replaced in the result by its object-store reference.
"""

from __future__ import annotations

from typing import Any

from genrelay.consumer import failpoints
from genrelay.consumer.artifacts import (
    Downloader,
    FileRef,
    file_extension,
    object_key,
    replace_files,
    walk_files,
)
from genrelay.consumer.object_store import ObjectStore
from genrelay.schemas.completions import Artifact
from genrelay.schemas.ledger import LedgerRecord


class ResultFiles:
    """The `FileStorer` the jobs use: downloader plus object store."""

    def __init__(
        self, downloader: Downloader, store: ObjectStore, *, bucket: str, prefix: str
    ) -> None:
        self._downloader = downloader
        self._store = store
        self._bucket = bucket
        self._prefix = prefix

    async def store(self, record: LedgerRecord) -> tuple[tuple[Artifact, ...], Any]:
        """Store every file of `record.result`; returns the artifacts and the rewritten result."""
        target = record.request.get("output") or {}
        bucket = target.get("bucket") or self._bucket
        prefix = target.get("prefix") or self._prefix
        await self._store.ensure_bucket(bucket)
        artifacts: list[Artifact] = []
        references: dict[Any, str] = {}
        for n, ref in enumerate(walk_files(record.result)):
            artifact = await self._copy(ref, bucket, prefix, record.idempotency_key, n)
            artifacts.append(artifact)
            references[ref.path] = f"s3://{artifact.bucket}/{artifact.key}"
        return tuple(artifacts), replace_files(record.result, references)

    async def _copy(self, ref: FileRef, bucket: str, prefix: str, key: str, n: int) -> Artifact:
        downloaded = await self._downloader.download(ref)
        failpoints.reached("mid_download")
        try:
            name = object_key(
                prefix, key, n, file_extension(downloaded.content_type, ref.file_name)
            )
            stored = await self._store.put_file(
                bucket,
                name,
                downloaded.file,
                downloaded.size,
                downloaded.content_type,
                {"sha256": downloaded.sha256, "idempotency-key": key},
            )
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
