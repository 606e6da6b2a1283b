"""Errors raised by the producer client and the completion watcher.

    GenrelayClientError
    ├── ClientStateError         used before start() or after stop(): a programming error
    ├── BrokerError              Kafka failed the call; `retryable` says if a retry can help
    │   └── PublishError         a submit or cancel was not acknowledged; sending it again
    │                            with the same idempotency key is always safe (one payment
    │                            per key)
    └── CompletionTimeoutError   (also a TimeoutError) awaited keys got no completion in time

Invalid arguments to `submit` and `cancel` raise `genrelay.schemas.RecordInvalid` (with a
dead-letter reason code) before anything is sent.
"""

from collections.abc import Iterable


class GenrelayClientError(Exception):
    """Base of every error the producer client and the completion watcher raise."""


class ClientStateError(GenrelayClientError):
    """The client was used before `start()` or after `stop()`."""


class BrokerError(GenrelayClientError):
    """Kafka failed a call; aiokafka's own error is the `__cause__`."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class PublishError(BrokerError):
    """A request record was not acknowledged by the broker (it may still have been written)."""


class CompletionTimeoutError(GenrelayClientError, TimeoutError):
    """No completion event arrived in time for the keys in `missing`."""

    def __init__(self, missing: Iterable[str]) -> None:
        self.missing = frozenset(missing)
        super().__init__(f"no completion event in time for {len(self.missing)} key(s)")


class UnreachableError(GenrelayClientError):
    """An address (Kafka, the object store) did not accept a connection: nothing was sent."""
