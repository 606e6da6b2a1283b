"""Where output files live for good: an S3-compatible object store behind a small Protocol.

``MinioStore`` uploads files of up to 8 MiB in one PUT on aiohttp's engine, signed with the
``minio`` client's own SigV4 signer; larger files, and every other call, go through the
blocking ``minio`` client on a thread pool of known size (multipart uploads, bucket
management, reads). ``MemoryStore`` is the in-memory fake the unit tests use. Both answer
the same way to the same calls, so one test suite runs against either.

Keys are deterministic (``artifacts.object_key``), so a retried upload overwrites the same
bytes. The content's SHA-256 is stored in the object's metadata, and checked against the
one the downloader computed, so a file damaged on local disk is never stored as good.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, BinaryIO, NamedTuple, Protocol, Self, TypeVar, cast

import aiohttp
import certifi
import urllib3
from minio import Minio
from minio.credentials.credentials import Credentials
from minio.error import MinioException, S3Error
from minio.helpers import BaseURL
from minio.signer import sign_v4_s3
from minio.time import to_amz_date, utcnow
from urllib3.exceptions import HTTPError as Urllib3Error
from yarl import URL

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
# Up to this size a file is one PUT from memory on the event loop's HTTP engine: about a
# third of the CPU of the blocking client's PUT on a worker thread (urllib3, thread handoff).
# Larger files stream from disk in a multipart upload on a thread. 8 MiB is also what the
# downloader keeps in memory before it spills to disk.
_SINGLE_PUT_BYTES = 8 << 20
# Up to this size the file is read and hashed on the event loop (about 0.2 ms); larger ones
# on a thread, so that one big file never stalls every other job.
_INLINE_HASH_BYTES = 256 << 10
# As the blocking client's pool retries: three more attempts, 0.2, 0.4, 0.8 s apart.
_PUT_RETRIES = 3
_PUT_BACKOFF = 0.2
_T = TypeVar("_T")
_Headers = dict[str, str]  # what the signer returns for the single-valued headers given it


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
        put_timeout: float = 120.0,
    ) -> None:
        # One pooled connection per worker thread: none waits for, or discards, a connection.
        self._http = urllib3.PoolManager(
            maxsize=max_workers,
            timeout=urllib3.Timeout(connect=10.0, read=120.0),
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
            retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=_RETRY_STATUSES),
        )
        self._credentials = Credentials(access_key, secret_key)
        self._region = region
        self._base_url = BaseURL(("https://" if secure else "http://") + endpoint, region)
        self._secure = secure
        self._put_timeout = put_timeout
        self._session: aiohttp.ClientSession | None = None
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
        metadata = metadata or {}
        if size > _SINGLE_PUT_BYTES:
            return await self._run(self._put, bucket, key, file, size, content_type, metadata)
        if self._closed:
            raise ClosedError("MinioStore is closed")
        headers = _metadata_headers(metadata)
        try:
            if size > _INLINE_HASH_BYTES:
                checked = await asyncio.to_thread(_checked_body, bucket, key, file, size, metadata)
            else:
                checked = _checked_body(bucket, key, file, size, metadata)
        except OSError as exc:  # the local copy cannot be read
            raise StoreError(repr(exc)) from exc
        headers[f"x-amz-meta-{SHA256_METADATA}"] = checked.sha256
        headers["Content-Type"] = content_type
        # Also what S3 asks of a bucket with Object Lock, as the blocking client sends it.
        headers["Content-MD5"] = checked.md5
        etag = await self._put_bytes(bucket, key, checked.body, checked.sha256, headers)
        return StoredObject(bucket, key, size, checked.sha256, content_type, etag)

    async def _put_bytes(
        self, bucket: str, key: str, body: bytes, sha256: str, headers: dict[str, str]
    ) -> str:
        """One signed PUT, retried as the blocking client's pool would be; the ETag."""
        url = self._base_url.build(
            method="PUT", region=self._region, bucket_name=bucket, object_name=key
        )
        for attempt in range(_PUT_RETRIES + 1):
            if self._closed:
                raise ClosedError("MinioStore is closed")
            # The payload's own SHA-256 is signed, so the store refuses bytes damaged on the way.
            date = utcnow()
            signed = sign_v4_s3(
                method="PUT",
                url=url,
                region=self._region,
                headers={
                    **headers,
                    "Host": url.netloc,
                    "x-amz-content-sha256": sha256,
                    "x-amz-date": to_amz_date(date),
                },
                credentials=self._credentials,
                content_sha256=sha256,
                date=date,
            )
            last = attempt == _PUT_RETRIES
            try:
                async with (
                    # The whole attempt: aiohttp bounds no write, and a store that stops
                    # reading the body would hold it for good.
                    asyncio.timeout(self._put_timeout),
                    self._http_session().put(
                        URL(url.geturl(), encoded=True), data=body, headers=cast(_Headers, signed)
                    ) as response,
                ):
                    answer = await response.read()
                    if response.status == 200:
                        return response.headers.get("ETag", "").replace('"', "")
                    if last or response.status not in _RETRY_STATUSES:
                        raise self._answer_error(response.status, response.content_type, answer)
            except (aiohttp.ClientError, TimeoutError) as exc:
                if last:
                    raise StoreError(repr(exc)) from exc
            await asyncio.sleep(_PUT_BACKOFF * 2**attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _answer_error(self, status: int, content_type: str, answer: bytes) -> StoreError:
        """The error an S3 answer other than 200 means, as the blocking path maps it."""
        if content_type != "application/xml" or not answer:
            return StoreError(f"HTTP {status}: {answer[:200]!r}")
        try:
            element = ET.fromstring(answer)
        except ET.ParseError:
            return StoreError(f"HTTP {status}: {answer[:200]!r}")
        code = element.findtext("Code") or f"HTTP {status}"
        return self._error(code, element.findtext("Message") or "", element.findtext("BucketName"))

    def _http_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            try:
                context = ssl.create_default_context(
                    cafile=os.environ.get("SSL_CERT_FILE") or certifi.where()
                )
            except OSError as exc:  # SSL_CERT_FILE names no readable file
                raise StoreError(f"the CA bundle cannot be read: {exc!r}") from exc
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ssl=context if self._secure else False),
                timeout=aiohttp.ClientTimeout(sock_connect=10.0, sock_read=120.0),
                # The store sets no cookies worth keeping.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

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
        if self._session is not None:
            await self._session.close()
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
            raise self._error(exc.code or "", exc.message or "", exc.bucket_name) from exc
        except (MinioException, Urllib3Error, OSError) as exc:
            raise StoreError(repr(exc)) from exc

    def _error(self, code: str, message: str, bucket: str | None) -> StoreError:
        """The ``StoreError`` an S3 error code means when writing."""
        if code == "NoSuchBucket" and bucket:
            self._known_buckets.discard(bucket)  # deleted under us: create again
        if code in _REFUSED_CODES:
            return StoreRefused(f"{code}: {message}")
        return StoreError(f"{code}: {message}")


class _Body(NamedTuple):
    body: bytes
    sha256: str  # hex, as stored in the metadata and signed
    md5: str  # base64, as Content-MD5 wants it


def _checked_body(
    bucket: str, key: str, file: IO[bytes], size: int, metadata: Mapping[str, str]
) -> _Body:
    """The ``size`` bytes from ``file``'s position and their digests, checked as below."""
    body = file.read(size)
    if len(body) != size:
        raise StoreError(f"{bucket}/{key}: the file holds {len(body)} of {size} bytes")
    sha256 = _as_claimed(bucket, key, hashlib.sha256(body).hexdigest(), metadata)
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode("ascii")
    return _Body(body, sha256, md5)


def _check_ascii(metadata: Mapping[str, str]) -> None:
    """S3 (and the minio client) take only US-ASCII metadata values."""
    if not all(value.isascii() for value in metadata.values()):
        raise ValueError("object metadata must be US-ASCII, as S3 demands")


def _metadata_headers(metadata: Mapping[str, str]) -> dict[str, str]:
    """User metadata as S3 headers."""
    _check_ascii(metadata)
    return {f"x-amz-meta-{name.lower()}": value for name, value in metadata.items()}


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
    return _as_claimed(bucket, key, digest.hexdigest(), metadata)


def _as_claimed(bucket: str, key: str, sha256: str, metadata: Mapping[str, str]) -> str:
    """``sha256``, unless the metadata claims another (the downloader's): ``StoreError``."""
    claimed = metadata.get(SHA256_METADATA)
    if claimed is not None and claimed != sha256:
        raise StoreError(f"{bucket}/{key}: content does not match its claimed SHA-256")
    return sha256


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
        _check_ascii(metadata or {})
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
