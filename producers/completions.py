"""The completion watcher: wait for the completion events of idempotency keys.

    async with CompletionWatcher.connect("127.0.0.1:9092") as watcher:
        event = await watcher.await_completion(key, timeout=300)

Delivery on the completion topic is at least once: a crash may repeat an event, and a late
duplicate request replays the stored outcome. The watcher hands out the first event of each
key and drops the rest.
"""

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, Protocol, Self

from pydantic import ValidationError

from genrelay.producers._lifecycle import Resource
from genrelay.producers.errors import ClientStateError, CompletionTimeoutError
from genrelay.producers.kafka import KafkaCompletionSource, StartFrom
from genrelay.schemas.base import from_json_bytes
from genrelay.schemas.completions import CompletionEvent
from genrelay.schemas.topics import DEFAULT_TOPICS

log = logging.getLogger(__name__)

DEFAULT_CACHE_SIZE = 10_000

# How long one fetch waits for records before the read loop goes round again.
_FETCH_TIMEOUT_S = 1.0


class CompletionSource(Protocol):
    """Raw values of the completion topic: Kafka (`KafkaCompletionSource`) or a test double."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def fetch(self, timeout: float) -> Sequence[bytes]:
        """The next record values; an empty sequence if none arrived within `timeout` s."""
        ...


class _Subscription:
    """One waiter's keys and the inbox their events (or the watcher's failure) arrive in."""

    def __init__(self, keys: Iterable[str]) -> None:
        self.waiting = set(keys)
        self.inbox: asyncio.Queue[CompletionEvent | Exception] = asyncio.Queue()


class CompletionWatcher(Resource):
    """Reads the completion topic and hands each awaited key its event once.

    The topic is read only while someone waits, so an event is never read and forgotten
    before its waiter arrives. The most recent `cache_size` events are also kept, so a key
    whose event was read while waiting for others is answered from memory.
    """

    def __init__(self, source: CompletionSource, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        super().__init__()
        self._source = source
        self._cache_size = cache_size
        self._seen: OrderedDict[str, CompletionEvent] = OrderedDict()
        self._subscribers: dict[str, set[_Subscription]] = {}
        self._demand = asyncio.Event()
        self._failure: Exception | None = None
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    def connect(
        cls,
        bootstrap_servers: str,
        *,
        topic: str = DEFAULT_TOPICS.completions,
        start_from: StartFrom = StartFrom.BEGINNING,
        cache_size: int = DEFAULT_CACHE_SIZE,
        **kafka_options: Any,
    ) -> Self:
        """A watcher of a Kafka cluster's completion topic; it connects on `start()`.

        From the `beginning` (the default) it also sees events published before it started.
        `kafka_options` go to `aiokafka.AIOKafkaConsumer`; no consumer group is used.
        """
        source = KafkaCompletionSource(
            bootstrap_servers, topic, start_from=start_from, **kafka_options
        )
        return cls(source, cache_size=cache_size)

    async def await_completion(self, key: str, timeout: float) -> CompletionEvent:
        """The completion event of `key`, waiting up to `timeout` seconds.

        Raises:
            CompletionTimeoutError: no event for the key arrived in time.
            BrokerError: reading the topic failed.
            ClientStateError: the watcher is not running, or stopped while waiting.
        """
        subscription = self._subscribe([key])
        try:
            return await self._next(subscription, self._deadline(timeout))
        finally:
            self._unsubscribe(subscription)

    async def iter_completions(
        self, keys: Iterable[str], timeout: float
    ) -> AsyncIterator[CompletionEvent]:
        """Yield one completion event per key, in arrival order, all within `timeout` seconds.

        Raises:
            CompletionTimeoutError: the deadline passed; `missing` names the keys left.
            BrokerError: reading the topic failed.
            ClientStateError: the watcher is not running, or stopped while waiting.
        """
        subscription = self._subscribe(keys)
        deadline = self._deadline(timeout)
        try:
            while subscription.waiting:
                yield await self._next(subscription, deadline)
        finally:
            self._unsubscribe(subscription)

    async def _next(self, subscription: _Subscription, deadline: float) -> CompletionEvent:
        try:
            async with asyncio.timeout_at(deadline):
                item = await subscription.inbox.get()
        except TimeoutError:
            raise CompletionTimeoutError(subscription.waiting) from None
        if isinstance(item, Exception):
            raise item
        subscription.waiting.discard(item.idempotency_key)
        return item

    def _subscribe(self, keys: Iterable[str]) -> _Subscription:
        self._require_running()
        if self._failure is not None:
            raise self._failure
        subscription = _Subscription(keys)
        for key in subscription.waiting:
            event = self._seen.get(key)
            if event is not None:
                subscription.inbox.put_nowait(event)
            else:
                self._subscribers.setdefault(key, set()).add(subscription)
        self._update_demand()
        return subscription

    def _unsubscribe(self, subscription: _Subscription) -> None:
        for key in subscription.waiting:
            waiters = self._subscribers.get(key)
            if waiters is not None:
                waiters.discard(subscription)
                if not waiters:
                    del self._subscribers[key]
        self._update_demand()

    def _update_demand(self) -> None:
        if self._subscribers:
            self._demand.set()
        else:
            self._demand.clear()

    def _deadline(self, timeout: float) -> float:
        return asyncio.get_running_loop().time() + timeout

    async def _read_loop(self) -> None:
        try:
            while True:
                await self._demand.wait()
                for raw in await self._source.fetch(_FETCH_TIMEOUT_S):
                    self._route(raw)
        except Exception as exc:
            # Fail every waiter now, and every later call, rather than let them time out.
            log.exception("reading completion events failed")
            self._fail(exc)

    def _route(self, raw: bytes) -> None:
        try:
            event = from_json_bytes(CompletionEvent, raw)
        except ValidationError as exc:
            log.warning(
                "skipped a record that is not a v1 completion event (%d error(s))",
                exc.error_count(),
            )
            return
        key = event.idempotency_key
        if key in self._seen:
            return  # a redelivery or a replay: this key's outcome was already handed out
        self._remember(key, event)
        for subscription in self._subscribers.pop(key, ()):
            subscription.inbox.put_nowait(event)
        self._update_demand()

    def _remember(self, key: str, event: CompletionEvent) -> None:
        self._seen[key] = event
        if len(self._seen) > self._cache_size:
            self._seen.popitem(last=False)

    def _fail(self, exc: Exception) -> None:
        self._failure = exc
        for subscription in {s for waiters in self._subscribers.values() for s in waiters}:
            subscription.inbox.put_nowait(exc)
        self._subscribers.clear()
        self._demand.clear()

    async def _open(self) -> None:
        await self._source.start()
        self._reader = asyncio.create_task(self._read_loop(), name="genrelay-completion-reader")

    async def _close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        self._fail(ClientStateError("CompletionWatcher stopped"))
        await self._source.stop()
