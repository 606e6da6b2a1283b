"""One suite for the object store: the in-memory fake always, a real MinIO when the stack runs."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import uuid
from collections.abc import AsyncIterator
from typing import Self

import pytest
from aiohttp import web

from genrelay.consumer.artifacts.object_store import (
    MemoryStore,
    MinioStore,
    ObjectStore,
    StoredObject,
)
from genrelay.consumer.errors import ClosedError, ObjectMissing, StoreError, StoreRefused
from genrelay.deploy.local.stack import StackInfo

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64
PNG_SHA256 = hashlib.sha256(PNG).hexdigest()
KEY = "shop/order-42%2Fhero/0.png"


@pytest.fixture(params=["memory", pytest.param("minio", marks=pytest.mark.integration)])
def new_store(request: pytest.FixtureRequest) -> ObjectStore:
    # Synchronous, so that the asynchronous `stack` fixture can be requested lazily from here.
    if request.param == "memory":
        return MemoryStore()
    return _minio(request.getfixturevalue("stack"))


@pytest.fixture
async def store(new_store: ObjectStore) -> AsyncIterator[ObjectStore]:
    yield new_store
    await new_store.aclose()


@pytest.fixture
async def bucket(store: ObjectStore) -> str:
    name = f"genrelay-test-{uuid.uuid4().hex[:12]}"
    await store.ensure_bucket(name)
    return name


async def put_png(store: ObjectStore, bucket: str, key: str = KEY) -> StoredObject:
    return await store.put_file(
        bucket, key, io.BytesIO(PNG), len(PNG), "image/png", {"sha256": PNG_SHA256}
    )


async def test_stored_file_reads_back_with_size_type_checksum_and_etag(
    store: ObjectStore, bucket: str
) -> None:
    stored = await put_png(store, bucket)
    assert stored == StoredObject(
        bucket, KEY, len(PNG), PNG_SHA256, "image/png", hashlib.md5(PNG).hexdigest()
    )
    assert stored.uri == f"s3://{bucket}/{KEY}"
    assert await store.stat(bucket, KEY) == stored
    assert await store.get_bytes(bucket, KEY) == PNG


async def test_checksum_is_stored_even_when_the_caller_claims_none(
    store: ObjectStore, bucket: str
) -> None:
    await store.put_file(bucket, KEY, io.BytesIO(PNG), len(PNG), "image/png")
    found = await store.stat(bucket, KEY)
    assert found is not None
    assert found.sha256 == PNG_SHA256


async def test_a_retried_upload_overwrites_the_same_bytes(store: ObjectStore, bucket: str) -> None:
    first = await put_png(store, bucket)
    second = await put_png(store, bucket)
    assert first == second
    assert await store.get_bytes(bucket, KEY) == PNG


async def test_content_not_matching_its_claimed_checksum_is_never_stored(
    store: ObjectStore, bucket: str
) -> None:
    damaged = io.BytesIO(PNG[:-1] + b"\x00")
    with pytest.raises(StoreError, match="SHA-256"):
        await store.put_file(bucket, KEY, damaged, len(PNG), "image/png", {"sha256": PNG_SHA256})
    assert await store.stat(bucket, KEY) is None


async def test_a_file_shorter_than_its_size_is_refused(store: ObjectStore, bucket: str) -> None:
    with pytest.raises(StoreError, match="holds"):
        await store.put_file(bucket, KEY, io.BytesIO(PNG[:100]), len(PNG), "image/png")
    assert await store.stat(bucket, KEY) is None


async def test_upload_reads_from_the_files_current_position(
    store: ObjectStore, bucket: str
) -> None:
    file = io.BytesIO(b"HEADER" + PNG)
    file.seek(6)
    stored = await store.put_file(bucket, KEY, file, len(PNG), "image/png")
    assert stored.sha256 == PNG_SHA256
    assert await store.get_bytes(bucket, KEY) == PNG


async def test_missing_object_has_no_stat_and_no_bytes(store: ObjectStore, bucket: str) -> None:
    assert await store.stat(bucket, "nothing/here.png") is None
    with pytest.raises(ObjectMissing):
        await store.get_bytes(bucket, "nothing/here.png")


async def test_reading_from_a_missing_bucket_is_a_missing_object(store: ObjectStore) -> None:
    absent = f"genrelay-absent-{uuid.uuid4().hex[:12]}"
    assert await store.stat(absent, KEY) is None
    with pytest.raises(ObjectMissing):
        await store.get_bytes(absent, KEY)


async def test_writing_to_a_missing_bucket_is_a_store_error(store: ObjectStore) -> None:
    absent = f"genrelay-absent-{uuid.uuid4().hex[:12]}"
    with pytest.raises(StoreError) as caught:
        await put_png(store, absent)
    assert not isinstance(caught.value, ObjectMissing)


async def test_ensuring_a_bucket_twice_is_harmless(store: ObjectStore, bucket: str) -> None:
    await store.ensure_bucket(bucket)
    await put_png(store, bucket)
    await store.ensure_bucket(bucket)
    assert await store.get_bytes(bucket, KEY) == PNG


async def test_non_ascii_metadata_is_refused_as_s3_does(store: ObjectStore, bucket: str) -> None:
    with pytest.raises(ValueError, match="ASCII"):
        await store.put_file(
            bucket, KEY, io.BytesIO(PNG), len(PNG), "image/png", {"idempotency-key": "ключ"}
        )


async def test_a_closed_store_refuses_work(store: ObjectStore, bucket: str) -> None:
    await store.aclose()
    await store.aclose()
    with pytest.raises(ClosedError):
        await store.stat(bucket, KEY)


async def test_unreachable_minio_is_a_store_error() -> None:
    unreachable = MinioStore("127.0.0.1:9", access_key="a", secret_key="s", secure=False)
    async with unreachable as store:
        with pytest.raises(StoreError):
            await store.stat("bucket", KEY)


@pytest.mark.integration
@pytest.mark.parametrize(
    "size",
    [256 << 10, (256 << 10) + 1, 8 << 20, (8 << 20) + 1],
    ids=["hashed-inline", "hashed-on-a-thread", "largest-single-put", "multipart"],
)
async def test_every_upload_path_stores_the_bytes_and_their_checksum(
    stack: StackInfo, size: int
) -> None:
    data = bytes(range(256)) * (size // 256) + b"\x07" * (size % 256)
    sha256 = hashlib.sha256(data).hexdigest()
    async with _minio(stack) as store:
        bucket = f"genrelay-test-{uuid.uuid4().hex[:12]}"
        await store.ensure_bucket(bucket)
        stored = await store.put_file(
            bucket, KEY, io.BytesIO(data), size, "image/png", {"sha256": sha256}
        )
        assert stored.sha256 == sha256
        assert await store.stat(bucket, KEY) == stored
        assert await store.get_bytes(bucket, KEY) == data


@pytest.mark.integration
async def test_a_wrong_secret_is_refused_not_retried(stack: StackInfo) -> None:
    async with _minio(stack) as store:
        bucket = f"genrelay-test-{uuid.uuid4().hex[:12]}"
        await store.ensure_bucket(bucket)
    wrong = MinioStore(
        stack.s3_endpoint,
        access_key=stack.s3_access_key,
        secret_key="not-the-secret",
        secure=False,
    )
    async with wrong:
        with pytest.raises(StoreRefused, match="SignatureDoesNotMatch"):
            await put_png(wrong, bucket)


def _minio(stack: StackInfo) -> MinioStore:
    return MinioStore(
        stack.s3_endpoint,
        access_key=stack.s3_access_key,
        secret_key=stack.s3_secret_key,
        secure=False,
    )


class _StrugglingS3:
    """An S3 endpoint that answers each PUT with the next of ``answers`` (status, error code),
    and 200 once they run out; it keeps what it was sent."""

    def __init__(self, answers: list[tuple[int, str]]) -> None:
        self.answers = answers
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.asked = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.endpoint = ""

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_put("/{tail:.*}", self._put)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.endpoint = f"{host}:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _put(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        self.asked.set()
        if not self.answers:
            return web.Response(status=200, headers={"ETag": '"abc123"'})
        status, code = self.answers.pop(0)
        body = f"<Error><Code>{code}</Code><Message>{code} here</Message></Error>"
        return web.Response(status=status, body=body, content_type="application/xml")

    def store(self) -> MinioStore:
        return MinioStore(self.endpoint, access_key="key", secret_key="secret", secure=False)


async def test_a_struggling_store_is_asked_again_with_a_fresh_signature() -> None:
    answers = [(503, "SlowDown"), (500, "InternalError")]
    async with _StrugglingS3(answers) as s3, s3.store() as store:
        stored = await put_png(store, "b")
    assert stored.etag == "abc123"
    assert [body for _, body in s3.received] == [PNG] * 3
    for headers, _ in s3.received:
        assert headers["x-amz-content-sha256"] == PNG_SHA256
        assert headers["x-amz-meta-sha256"] == PNG_SHA256
        assert headers["Content-MD5"] == base64.b64encode(hashlib.md5(PNG).digest()).decode()
        assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=key/")


async def test_a_store_that_stays_down_is_a_store_error_after_three_more_tries() -> None:
    async with _StrugglingS3([(503, "SlowDown")] * 10) as s3, s3.store() as store:
        with pytest.raises(StoreError, match="SlowDown") as caught:
            await put_png(store, "b")
    assert not isinstance(caught.value, StoreRefused)
    assert len(s3.received) == 4


async def test_a_refusal_is_not_asked_again() -> None:
    async with _StrugglingS3([(403, "AccessDenied")]) as s3, s3.store() as store:
        with pytest.raises(StoreRefused, match="AccessDenied"):
            await put_png(store, "b")
    assert len(s3.received) == 1


async def test_an_upload_retrying_when_the_store_is_closed_stops_there() -> None:
    async with _StrugglingS3([(503, "SlowDown")] * 10) as s3:
        store = s3.store()
        upload = asyncio.ensure_future(put_png(store, "b"))
        async with asyncio.timeout(30):
            await s3.asked.wait()
        await store.aclose()
        with pytest.raises(ClosedError):
            await upload
    assert len(s3.received) == 1


async def test_an_upload_to_a_store_that_never_answers_ends_as_a_store_error() -> None:
    connections: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)  # reads nothing, answers nothing, never closes

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = MinioStore(
        f"127.0.0.1:{port}", access_key="k", secret_key="s", secure=False, put_timeout=0.5
    )
    async with server, store:
        with pytest.raises(StoreError, match="Timeout"):
            async with asyncio.timeout(60):  # 120 s a try (the default) would be far longer
                await put_png(store, "b")
        for writer in connections:
            writer.close()
    assert len(connections) == 4


class _Unreadable(io.BytesIO):
    def read(self, size: int | None = -1, /) -> bytes:
        raise OSError(5, "Input/output error")


async def test_a_local_copy_that_cannot_be_read_is_a_store_error() -> None:
    store = MinioStore("127.0.0.1:9", access_key="k", secret_key="s", secure=False)
    async with store:
        for size in (10, (256 << 10) + 1):
            with pytest.raises(StoreError, match="Input/output"):
                await store.put_file("b", KEY, _Unreadable(), size, "image/png")
