"""Copying a run's stored files from the object store to a local folder.

Each object lands at `{folder}/{bucket}/{object key}`, written under a temporary name,
checked against the size and SHA-256 its completion event announced, and only then renamed
into place; a file already there with the right checksum is not fetched again, so a
download can be repeated or resumed. The blocking `minio` client runs in a thread pool of
known size.
"""

import asyncio
import hashlib
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Self

from minio import Minio
from minio.error import MinioException
from urllib3.exceptions import HTTPError as Urllib3Error

from genrelay.producers.bulk.manifest import DownloadFailure, ObjectRef
from genrelay.schemas.completions import Artifact

DEFAULT_THREADS = 8

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class S3Config:
    """How to reach the object store (`GENRELAY_S3_*` variables or flags)."""

    endpoint: str
    access_key: str
    secret_key: str
    secure: bool = False
    region: str = "us-east-1"  # named, so that no request is spent looking it up

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Self:
        """Read `GENRELAY_S3_ENDPOINT`, `_ACCESS_KEY`, `_SECRET_KEY`, `_SECURE`, `_REGION`."""
        return cls(
            endpoint=env.get("GENRELAY_S3_ENDPOINT", "127.0.0.1:9000"),
            access_key=env.get("GENRELAY_S3_ACCESS_KEY", ""),
            secret_key=env.get("GENRELAY_S3_SECRET_KEY", ""),
            secure=env.get("GENRELAY_S3_SECURE", "false").lower() in ("1", "true", "yes"),
            region=env.get("GENRELAY_S3_REGION", "us-east-1"),
        )

    def client(self) -> Minio:
        """A `minio` client for this store."""
        return Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=self.secure,
            region=self.region,
        )


@dataclass(frozen=True, slots=True)
class DownloadReport:
    """Where each copied object is, and which could not be copied."""

    downloaded: dict[ObjectRef, Path]
    failures: list[DownloadFailure]


class _MismatchError(Exception):
    """The bytes read differ from what the completion event announced."""


def local_path(folder: Path, artifact: Artifact) -> Path:
    """Where `artifact` is copied to; raise ValueError for a key that would leave `folder`."""
    parts = PurePosixPath(artifact.bucket, artifact.key).parts
    if artifact.key.startswith("/") or ".." in parts:
        raise ValueError(f"object key {artifact.key!r} does not map to a local path")
    return folder.joinpath(*parts)


async def download_artifacts(
    client: Minio,
    folder: Path,
    artifacts: Iterable[tuple[str, Artifact]],
    *,
    threads: int = DEFAULT_THREADS,
) -> DownloadReport:
    """Copy each `(idempotency key, artifact)` into `folder`; failures are reported, not raised."""
    report = DownloadReport({}, [])
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="genrelay-bulk-s3") as pool:

        async def one(key: str, artifact: Artifact) -> None:
            try:
                path = local_path(folder, artifact)
                await loop.run_in_executor(pool, _fetch, client, artifact, path)
            except (ValueError, _MismatchError, MinioException, Urllib3Error, OSError) as exc:
                report.failures.append(DownloadFailure(key, artifact, str(exc)))
            else:
                report.downloaded[(artifact.bucket, artifact.key)] = path

        await asyncio.gather(*(one(key, artifact) for key, artifact in artifacts))
    return report


def _fetch(client: Minio, artifact: Artifact, path: Path) -> None:
    if path.is_file() and _digest(path) == (artifact.size, artifact.sha256):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.part")
    response = client.get_object(artifact.bucket, artifact.key)
    try:
        digest = hashlib.sha256()
        size = 0
        with partial.open("wb") as file:
            for chunk in response.stream(_CHUNK):
                file.write(chunk)
                digest.update(chunk)
                size += len(chunk)
    finally:
        response.close()
        response.release_conn()
    if (size, digest.hexdigest()) != (artifact.size, artifact.sha256):
        partial.unlink(missing_ok=True)
        raise _MismatchError(
            f"read {size} bytes with SHA-256 {digest.hexdigest()}; the completion event "
            f"announced {artifact.size} bytes with SHA-256 {artifact.sha256}"
        )
    os.replace(partial, path)


def _digest(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return path.stat().st_size, digest.hexdigest()
