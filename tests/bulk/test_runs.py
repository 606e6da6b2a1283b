"""The parts under the commands: sending with bounds, crash-safe logs, checked downloads."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from genrelay.producers.bulk.download import download_artifacts, local_path
from genrelay.producers.bulk.rate import RateLimiter
from genrelay.producers.bulk.runner import send_all
from genrelay.producers.bulk.state import RunState
from genrelay.schemas.completions import Artifact
from tests.bulk.helpers import completion


async def test_sending_keeps_a_bounded_number_in_flight() -> None:
    in_flight = 0
    most = 0
    full = asyncio.Event()
    release = asyncio.Event()

    async def send(item: int) -> None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        if in_flight == 7:
            full.set()
        await release.wait()
        in_flight -= 1

    sending = asyncio.create_task(
        send_all(range(50), send, limiter=RateLimiter(1e9, burst=1000), max_in_flight=7)
    )
    await asyncio.wait_for(full.wait(), timeout=5)
    release.set()
    await sending
    assert most == 7


async def test_the_first_failed_send_stops_the_run_and_is_raised() -> None:
    sent: list[int] = []

    async def send(item: int) -> None:
        if item >= 3:
            raise ConnectionError(f"item {item}")
        sent.append(item)

    with pytest.raises(ConnectionError):
        await send_all(range(1000), send, limiter=RateLimiter(1e9, burst=1000), max_in_flight=5)
    assert sent == [0, 1, 2]


def test_a_log_line_cut_short_by_a_crash_is_dropped_and_logging_goes_on(tmp_path: Path) -> None:
    state = RunState(tmp_path, "run-1")
    state.directory.mkdir(parents=True)
    (state.directory / "acked.log").write_text("bulk/run-1/a\nbulk/run-1/b\nbulk/run-1/")
    with state.journal() as journal:
        journal.acknowledged("bulk/run-1/c")
        journal.outcome(completion("bulk/run-1/a"))
    assert (
        state.directory / "acked.log"
    ).read_text() == "bulk/run-1/a\nbulk/run-1/b\nbulk/run-1/c\n"


class FakeObjects:
    """The part of a `minio.Minio` client the downloader uses, over a dict of objects."""

    def __init__(self, objects: dict[tuple[str, str], bytes]) -> None:
        self.objects = objects
        self.reads: list[str] = []

    def get_object(self, bucket: str, key: str) -> Any:
        self.reads.append(key)
        return _Response(self.objects[(bucket, key)])


class _Response:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, size: int) -> Iterator[bytes]:
        yield from (self.data[i : i + size] for i in range(0, len(self.data), size))

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


def artifact(key: str, data: bytes) -> Artifact:
    return Artifact(
        bucket="genrelay",
        key=key,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        content_type="image/png",
        etag="e",
    )


async def test_downloads_are_checked_and_not_fetched_twice(tmp_path: Path) -> None:
    good = artifact("shop/k%2F1/0.png", b"png bytes")
    damaged = artifact("shop/k%2F2/0.png", b"the announced bytes")
    client = FakeObjects(
        {("genrelay", good.key): b"png bytes", ("genrelay", damaged.key): b"other bytes"}
    )

    report = await download_artifacts(client, tmp_path, [("k/1", good), ("k/2", damaged)])  # type: ignore[arg-type]

    path = tmp_path / "genrelay" / "shop" / "k%2F1" / "0.png"
    assert report.downloaded == {("genrelay", good.key): path}
    assert path.read_bytes() == b"png bytes"
    (failure,) = report.failures
    assert failure.idempotency_key == "k/2"
    assert "SHA-256" in failure.message
    assert not local_path(tmp_path, damaged).exists()

    again = await download_artifacts(client, tmp_path, [("k/1", good)])  # type: ignore[arg-type]
    assert again.downloaded == report.downloaded
    assert client.reads.count(good.key) == 1


@pytest.mark.parametrize("key", ["../escape.png", "a/../../escape.png", "/etc/passwd"])
def test_object_keys_that_would_leave_the_folder_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match="local path"):
        local_path(tmp_path, artifact(key, b""))
