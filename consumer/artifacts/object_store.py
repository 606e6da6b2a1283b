"""Where output files live for good: an S3-compatible object store behind a small Protocol.

``MinioStore`` drives the blocking ``minio`` client from a thread pool of known size;
``MemoryStore`` is the in-memory fake the unit tests use. Both answer the same way to the
same calls, so one test suite runs against either.

Keys are deterministic (``artifacts.object_key``), so a retried upload overwrites the same
bytes. The content's SHA-256 is stored in the object's metadata, and checked against the
one the downloader computed, so a file damaged on local disk is never stored as good.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, BinaryIO, Protocol, Self, TypeVar, cast

import certifi
import urllib3
from minio import Minio
from minio.error import MinioException, S3Error
from urllib3.exceptions import HTTPError as Urllib3Error

from genrelay.consumer.errors import ClosedError, ObjectMissing, StoreError, StoreRefused

SHA256_METADATA = "sha256"

_RETRY_STATUSES = (500, 502, 503, 504)
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchBucket"})
# Answers a retry cannot change: our credentials may not write here, the bucket belongs to
# someone else, a quota is spent, the object is refused. (Throttling, 5xx, disk-full and a
# bucket deleted under us stay transient.)
_REFUSED_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "AccountProblem",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidBucketName",
        "BucketAlreadyExists",
        "EntityTooLarge",
        "QuotaExceeded",
        "XMinioAdminBucketQuotaExceeded",
        "InvalidObjectName",
        "KeyTooLongError",
    }
)
_BUCKET_TAKEN_CODES = frozenset({"BucketAlreadyOwnedByYou", "BucketAlreadyExists"})
_HASH_CHUNK = 1 << 20
_T = TypeVar("_T")


@dataclass(frozen=True)
class StoredObject:
    """An object as the store holds it. ``sha256`` is None for objects we did not write."""

    bucket: str
    key: str
    size: int
    sha256: str | None
    content_type: str
    etag: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


class ObjectStore(Protocol):
    """An S3-like store. Every method raises only ``StoreError`` (and subclasses)."""

    async def ensure_bucket(self, bucket: str) -> None:
        """Create ``bucket`` unless it exists."""
        ...

    async def put_file(
        self,
        bucket: str,
        key: str,
        file: IO[bytes],
        size: int,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> StoredObject:
        """Upload ``size`` bytes from the seekable ``file``'s position, replacing any object.

        The content's SHA-256 is stored in the metadata; if ``metadata`` already claims one
        (the downloader's), a mismatch raises ``StoreError`` before anything is written.
        """
        ...

    async def stat(self, bucket: str, key: str) -> StoredObject | None:
        """The object at ``key``, or None if there is none."""
        ...

    async def get_bytes(self, bucket: str, key: str) -> bytes:
        """The object's content; ``ObjectMissing`` if there is none."""
        ...

    async def aclose(self) -> None:
        """Release threads and connections; safe to call twice."""
        ...


class MinioStore:
    """``ObjectStore`` on any S3-compatible server, through the blocking ``minio`` client."""

    def __init__(
        self,
        endpoint: str,
        *,
        access_key: str,
        secret_key: str,
        secure: bool = True,
        region: str = "us-east-1",
        max_workers: int = 8,
    ) -> None:
        # One pooled connection per worker thread: none waits for, or discards, a connection.
        self._http = urllib3.PoolManager(
            maxsize=max_workers,
            timeout=urllib3.Timeout(connect=10.0, read=120.0),
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
            retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=_RETRY_STATUSES),
        )
        # A known region saves a GetBucketLocation round trip before each bucket's first use.
        self._client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=self._http,
        )
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="genrelay-minio")
        self._known_buckets: set[str] = set()
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def ensure_bucket(self, bucket: str) -> None:
        """Create ``bucket`` unless it exists; remembered, so later calls cost nothing."""
        if bucket in self._known_buckets:
            return
        await self._run(self._ensure_bucket, bucket)
        self._known_buckets.add(bucket)

    def _ensure_bucket(self, bucket: str) -> None:
        if self._client.bucket_exists(bucket):
            return
        try:
            self._client.make_bucket(bucket)
        except S3Error as exc:
            # Another replica created it between our two calls.
            if exc.code not in _BUCKET_TAKEN_CODES:
                raise

    async def put_file(
        self,
        bucket: str,
        key: str,
        file: IO[bytes],
        size: int,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> StoredObject:
        """Upload ``size`` bytes from the seekable ``file``'s position, replacing any object."""
        return await self._run(self._put, bucket, key, file, size, content_type, metadata or {})

    def _put(
        self,
        bucket: str,
        key: str,
        file: IO[bytes],
        size: int,
        content_type: str,
        metadata: Mapping[str, str],
    ) -> StoredObject:
        sha256 = _checked_sha256(bucket, key, file, size, metadata)
        result = self._client.put_object(
            bucket,
            key,
            cast(BinaryIO, file),
            size,
            content_type=content_type,
            metadata={**metadata, SHA256_METADATA: sha256},
            # One thread per upload: the pool's size is then the store's whole footprint.
            num_parallel_uploads=1,
        )
        return StoredObject(bucket, key, size, sha256, content_type, result.etag or "")

    async def stat(self, bucket: str, key: str) -> StoredObject | None:
        """The object at ``key``, or None if there is none."""
        try:
            found = await self._run(self._client.stat_object, bucket, key, reading=True)
        except ObjectMissing:
            return None
        metadata = found.metadata or {}
        return StoredObject(
            bucket=bucket,
            key=key,
            size=found.size or 0,
            sha256=metadata.get(f"x-amz-meta-{SHA256_METADATA}"),
            content_type=found.content_type or "",
            etag=found.etag or "",
        )

    async def get_bytes(self, bucket: str, key: str) -> bytes:
        """The object's content; ``ObjectMissing`` if there is none."""
        return await self._run(self._read, bucket, key, reading=True)

    def _read(self, bucket: str, key: str) -> bytes:
        response = self._client.get_object(bucket, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    async def aclose(self) -> None:
        """Wait for running calls, then stop the threads; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        self._http.clear()

    async def _run(self, call: Callable[..., _T], *args: object, reading: bool = False) -> _T:
        if self._closed:
            raise ClosedError("MinioStore is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, call, *args)
        except S3Error as exc:
            # Reading from a missing bucket finds no object; writing to one is an error.
            if reading and exc.code in _MISSING_CODES:
                raise ObjectMissing(f"{exc.bucket_name}/{exc.object_name}: {exc.code}") from exc
            if exc.code == "NoSuchBucket" and exc.bucket_name:
                self._known_buckets.discard(exc.bucket_name)  # deleted under us: create again
            if exc.code in _REFUSED_CODES:
                raise StoreRefused(f"{exc.code}: {exc.message}") from exc
            raise StoreError(f"{exc.code}: {exc.message}") from exc
        except (MinioException, Urllib3Error, OSError) as exc:
            raise StoreError(repr(exc)) from exc


# Hashing the very bytes about to be stored, then rewinding, makes the stored checksum true
# of the object even if the local copy was damaged after the download verified it.
def _checked_sha256(
    bucket: str, key: str, file: IO[bytes], size: int, metadata: Mapping[str, str]
) -> str:
    start = file.tell()
    digest = hashlib.sha256()
    remaining = size
    while remaining > 0:
        chunk = file.read(min(remaining, _HASH_CHUNK))
        if not chunk:
            raise StoreError(f"{bucket}/{key}: the file holds {size - remaining} of {size} bytes")
        digest.update(chunk)
        remaining -= len(chunk)
    file.seek(start)
    claimed = metadata.get(SHA256_METADATA)
    if claimed is not None and claimed != digest.hexdigest():
        raise StoreError(f"{bucket}/{key}: content does not match its claimed SHA-256")
    return digest.hexdigest()


@dataclass(frozen=True)
class _MemoryObject:
    data: bytes
    content_type: str
    metadata: Mapping[str, str]


class MemoryStore:
    """An ``ObjectStore`` in a dict, for tests; behaves like S3 for the calls genrelay makes."""

    def __init__(self) -> None:
        self._buckets: dict[str, dict[str, _MemoryObject]] = {}
        self._closed = False

    async def ensure_bucket(self, bucket: str) -> None:
        """Create ``bucket`` unless it exists."""
        self._check_open()
        self._buckets.setdefault(bucket, {})

    async def put_file(
        self,
        bucket: str,
        key: str,
        file: IO[bytes],
        size: int,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> StoredObject:
        """Store ``size`` bytes from the seekable ``file``'s position, replacing any object."""
        objects = self._bucket(bucket)
        if not all(value.isascii() for value in (metadata or {}).values()):
            raise ValueError("object metadata must be US-ASCII, as the minio client demands")
        sha256 = _checked_sha256(bucket, key, file, size, metadata or {})
        data = file.read(size)
        stored = _MemoryObject(data, content_type, {**(metadata or {}), SHA256_METADATA: sha256})
        objects[key] = stored
        return self._described(bucket, key, stored)

    async def stat(self, bucket: str, key: str) -> StoredObject | None:
        """The object at ``key``, or None if there is none."""
        self._check_open()
        found = self._buckets.get(bucket, {}).get(key)
        return None if found is None else self._described(bucket, key, found)

    async def get_bytes(self, bucket: str, key: str) -> bytes:
        """The object's content; ``ObjectMissing`` if there is none."""
        self._check_open()
        found = self._buckets.get(bucket, {}).get(key)
        if found is None:
            raise ObjectMissing(f"{bucket}/{key}")
        return found.data

    async def aclose(self) -> None:
        """Mark the store closed; safe to call twice."""
        self._closed = True

    def _bucket(self, bucket: str) -> dict[str, _MemoryObject]:
        self._check_open()
        if bucket not in self._buckets:
            raise StoreError(f"NoSuchBucket: {bucket}")
        return self._buckets[bucket]

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("MemoryStore is closed")

    @staticmethod
    def _described(bucket: str, key: str, stored: _MemoryObject) -> StoredObject:
        return StoredObject(
            bucket=bucket,
            key=key,
            size=len(stored.data),
            sha256=stored.metadata.get(SHA256_METADATA),
            content_type=stored.content_type,
            # S3's ETag for a single-part upload is the MD5 of the content.
            etag=hashlib.md5(stored.data).hexdigest(),
        )
