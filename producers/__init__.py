"""What producers use: submit and cancel requests, and await their completion events."""

from genrelay.producers.client import (
    GenrelayProducer,
    RecordSender,
    derive_idempotency_key,
)
from genrelay.producers.completions import CompletionSource, CompletionWatcher
from genrelay.producers.errors import (
    BrokerError,
    ClientStateError,
    CompletionTimeoutError,
    GenrelayClientError,
    PublishError,
)
from genrelay.producers.kafka import KafkaCompletionSource, KafkaRecordSender, StartFrom

__all__ = [
    "BrokerError",
    "ClientStateError",
    "CompletionSource",
    "CompletionTimeoutError",
    "CompletionWatcher",
    "GenrelayClientError",
    "GenrelayProducer",
    "KafkaCompletionSource",
    "KafkaRecordSender",
    "PublishError",
    "RecordSender",
    "StartFrom",
    "derive_idempotency_key",
]
