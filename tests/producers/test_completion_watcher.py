"""The completion watcher hands each awaited key its first event, once, or says why not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from genrelay.producers import (
    BrokerError,
    ClientStateError,
    CompletionTimeoutError,
    CompletionWatcher,
)
from genrelay.producers.testing import MemoryCompletionSource
from genrelay.schemas import CompletionEvent, ErrorDetail, Timings


def event(key: str, event_id: str | None = None, **changes: Any) -> CompletionEvent:
    fields: dict[str, Any] = {
        "event_id": event_id or f"evt-{key}",
        "idempotency_key": key,
        "status": "succeeded",
        "endpoint": "fal-ai/flux/schnell",
        "request_id": f"req-{key}",
        "artifacts": [],
        "result": {"images": []},
        "error": None,
        "timings": Timings(queued_ms=0, running_ms=0, total_ms=0),
        "attempts": 1,
        "cost_units": None,
        "metadata": {},
        "replayed": False,
    }
    return CompletionEvent.model_validate({**fields, **changes})


@pytest.fixture
async def source() -> MemoryCompletionSource:
    return MemoryCompletionSource()


@pytest.fixture
async def watcher(source: MemoryCompletionSource) -> AsyncIterator[CompletionWatcher]:
    async with CompletionWatcher(source) as watcher:
        yield watcher


async def test_an_event_published_before_the_call_is_seen(
    watcher: CompletionWatcher, source: MemoryCompletionSource
) -> None:
    source.publish(event("a"))
    assert await watcher.await_completion("a", timeout=5) == event("a")


async def test_an_event_published_while_waiting_is_seen(
    watcher: CompletionWatcher, source: MemoryCompletionSource
) -> None:
    waiting = asyncio.create_task(watcher.await_completion("a", timeout=5))
    source.publish(event("b"))
    source.publish(event("a"))
    assert await waiting == event("a")


async def test_a_key_already_seen_is_answered_again_from_memory(
    watcher: CompletionWatcher, source: MemoryCompletionSource
) -> None:
    source.publish(event("a"))
    first = await watcher.await_completion("a", timeout=5)
    assert await watcher.await_completion("a", timeout=0) == first


async def test_iter_completions_yields_each_key_once_despite_redelivery(
    watcher: CompletionWatcher, source: MemoryCompletionSource
) -> None:
    source.publish(event("a"))
    source.publish(event("a"))  # redelivered after a crash: same event_id
    source.publish(event("a", event_id="evt-replay", replayed=True))  # a late duplicate request
    source.publish(event("other"))
    source.publish(event("b"))
    got = [e async for e in watcher.iter_completions(["a", "b", "a"], timeout=5)]
    assert got == [event("a"), event("b")]
    assert await watcher.await_completion("a", timeout=0) == event("a")


async def test_timeout_names_the_keys_still_missing(
    watcher: CompletionWatcher, source: MemoryCompletionSource
) -> None:
    source.publish(event("a"))
    got: list[CompletionEvent] = []

    async def collect() -> None:
        async for completed in watcher.iter_completions(["a", "b", "c"], timeout=0.2):
            got.append(completed)

    with pytest.raises(CompletionTimeoutError) as timed_out:
        await collect()
    assert got == [event("a")]
    assert timed_out.value.missing == {"b", "c"}
    assert isinstance(timed_out.value, TimeoutError)


async def test_await_completion_times_out(watcher: CompletionWatcher) -> None:
    with pytest.raises(CompletionTimeoutError) as timed_out:
        await watcher.await_completion("never", timeout=0.05)
    assert timed_out.value.missing == {"never"}


async def test_failed_events_are_delivered_like_any_other(
    watcher: CompletionWatcher, source: MemoryCompletionSource
) -> None:
    error = ErrorDetail(type="generation_timeout", message="timed out", retryable=True)
    source.publish(event("a", status="failed", error=error, result=None))
    assert (await watcher.await_completion("a", timeout=5)).error == error


async def test_records_that_are_not_completion_events_are_skipped(
    watcher: CompletionWatcher, source: MemoryCompletionSource, caplog: pytest.LogCaptureFixture
) -> None:
    source.publish(b"not json")
    source.publish(b'{"schema_version": 2, "idempotency_key": "a"}')
    source.publish(event("a"))
    assert await watcher.await_completion("a", timeout=5) == event("a")
    assert "skipped a record" in caplog.text


async def test_events_read_before_anyone_waits_are_not_lost() -> None:
    # Nothing is read while nobody waits, so even a tiny cache loses no awaited event.
    source = MemoryCompletionSource()
    for key in ("a", "b", "c"):
        source.publish(event(key))
    async with CompletionWatcher(source, cache_size=1) as watcher:
        for _ in range(10):
            await asyncio.sleep(0)  # let the reader run if it would
        assert await watcher.await_completion("a", timeout=5) == event("a")


async def test_the_cache_keeps_only_the_most_recent_events() -> None:
    source = MemoryCompletionSource()
    for key in ("a", "b", "c"):
        source.publish(event(key))
    async with CompletionWatcher(source, cache_size=2) as watcher:
        await watcher.await_completion("c", timeout=5)
        assert await watcher.await_completion("b", timeout=0) == event("b")
        with pytest.raises(CompletionTimeoutError):
            await watcher.await_completion("a", timeout=0.05)


class FailingSource(MemoryCompletionSource):
    async def fetch(self, timeout: float) -> Sequence[bytes]:
        raise BrokerError("broker went away", retryable=True)


async def test_a_reader_failure_reaches_every_waiter_and_later_calls() -> None:
    async with CompletionWatcher(FailingSource()) as watcher:
        with pytest.raises(BrokerError, match="went away"):
            await watcher.await_completion("a", timeout=5)
        with pytest.raises(BrokerError, match="went away"):
            await watcher.await_completion("b", timeout=5)


async def test_stopping_wakes_waiters_with_a_state_error(source: MemoryCompletionSource) -> None:
    watcher = CompletionWatcher(source)
    await watcher.start()
    waiting = asyncio.create_task(watcher.await_completion("a", timeout=5))
    await asyncio.sleep(0)
    await watcher.stop()
    with pytest.raises(ClientStateError, match="stopped"):
        await waiting


async def test_use_before_start_or_after_stop_is_an_error(source: MemoryCompletionSource) -> None:
    watcher = CompletionWatcher(source)
    with pytest.raises(ClientStateError, match="new"):
        await watcher.await_completion("a", timeout=1)
    async with watcher:
        pass
    with pytest.raises(ClientStateError, match="closed"):
        await anext(watcher.iter_completions(["a"], timeout=1))
