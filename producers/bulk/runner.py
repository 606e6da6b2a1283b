"""The two loops of a bulk run, and how they run side by side.

`send_all` sends at a bounded rate with a bounded number of records awaiting their
acknowledgement; `collect_outcomes` writes down completion events as they arrive. Both are
cancellation-safe: what was written down stays true, and whatever was in flight is sent
again by the next run (the relay pays once per key).
"""

import asyncio
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable
from typing import Any, TypeVar

from genrelay.producers.bulk.progress import ProgressView
from genrelay.producers.bulk.rate import RateLimiter
from genrelay.producers.bulk.state import Journal
from genrelay.producers.completions import CompletionWatcher
from genrelay.producers.errors import CompletionTimeoutError

# Records sent but not yet acknowledged; the Kafka producer batches them.
DEFAULT_MAX_IN_FLIGHT = 100

_Item = TypeVar("_Item")


async def send_all(
    items: Iterable[_Item],
    send: Callable[[_Item], Awaitable[None]],
    *,
    limiter: RateLimiter,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
) -> None:
    """Call `send` for every item, starting them at the limiter's rate.

    The first failing send stops the loop and is raised; the sends still in flight are
    cancelled.
    """
    pending: set[asyncio.Task[None]] = set()

    async def one(item: _Item) -> None:
        await send(item)

    try:
        for item in items:
            await limiter.acquire()
            _reap(pending)
            if len(pending) >= max_in_flight:
                await _wait(pending, asyncio.FIRST_COMPLETED)
            pending.add(asyncio.create_task(one(item)))
        while pending:
            await _wait(pending, asyncio.FIRST_EXCEPTION)
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def collect_outcomes(
    watcher: CompletionWatcher,
    keys: Collection[str],
    journal: Journal,
    progress: ProgressView,
    *,
    timeout: float,
) -> int:
    """Write down the completion event of each key as it arrives; return how many got none
    within `timeout` seconds."""
    if not keys:
        return 0
    try:
        async for event in watcher.iter_completions(keys, timeout):
            journal.outcome(event)
            progress.finished(event.status)
    except CompletionTimeoutError as exc:
        return len(exc.missing)
    return 0


async def run_together(*coroutines: Coroutine[Any, Any, Any]) -> None:
    """Run the coroutines concurrently until all finish; the first failure cancels the rest
    and is raised as itself (not in an exception group)."""
    tasks = [asyncio.create_task(coroutine) for coroutine in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _reap(pending: set[asyncio.Task[None]]) -> None:
    done = {task for task in pending if task.done()}
    pending.difference_update(done)
    # Every failure is retrieved, so none is logged as "never retrieved"; the first stops
    # the run.
    failures = [task.exception() for task in done if not task.cancelled()]
    for failure in failures:
        if failure is not None:
            raise failure


async def _wait(pending: set[asyncio.Task[None]], when: str) -> None:
    await asyncio.wait(pending, return_when=when)
    _reap(pending)
