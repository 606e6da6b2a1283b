"""The producer client: submit and cancel paid generations through Kafka.

    async with GenrelayProducer.connect("127.0.0.1:9092") as producer:
        key = await producer.submit("fal-ai/flux/schnell", {"prompt": "a lighthouse"})

Every record is keyed by its idempotency key and acknowledged by all in-sync replicas before
`submit` or `cancel` returns. Resending after any error is safe: genrelay pays once per key.
"""

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, Self, TypeVar

from opentelemetry import propagate
from pydantic import JsonValue, ValidationError

from genrelay.producers._lifecycle import Resource
from genrelay.producers.kafka import KafkaRecordSender
from genrelay.schemas.base import canonical_json, to_json_bytes
from genrelay.schemas.fields import MetadataValue, Priority
from genrelay.schemas.requests import (
    CancelRequest,
    OutputTarget,
    RecordInvalid,
    SubmitRequest,
    fingerprint,
)
from genrelay.schemas.topics import DEFAULT_TOPICS, Topics

DERIVED_KEY_PREFIX = "auto-"

# Stands in for the key while a submit without one is validated; never sent.
_KEY_PENDING = "pending"


class RecordSender(Protocol):
    """Where the client's records go: Kafka (`KafkaRecordSender`) or a test double."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(
        self, topic: str, *, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> None:
        """Return once the record is durably acknowledged, or raise `PublishError`."""
        ...


def derive_idempotency_key(request: SubmitRequest) -> str:
    """The key `submit` uses when none is given: `auto-` + SHA-256 of fingerprint and tenant.

    It depends only on the paid work (see `genrelay.schemas.fingerprint`) and the tenant, so
    a retry of the same call maps to the same key and is never paid twice. The flip side:
    identical work submitted twice without a key is generated once; pass distinct keys to
    pay for distinct generations. The tenant is included so tenants never share an outcome.
    """
    identity: dict[str, JsonValue] = {"fingerprint": fingerprint(request), "tenant": request.tenant}
    return DERIVED_KEY_PREFIX + hashlib.sha256(canonical_json(identity)).hexdigest()


class GenrelayProducer(Resource):
    """Submits and cancels requests on the requests topic.

    Use as an async context manager, or call `start()` and `stop()`; both are idempotent and
    a stopped producer cannot be restarted. The W3C trace context of the current
    OpenTelemetry span, if any, travels in the record headers (`traceparent`).
    """

    def __init__(self, sender: RecordSender, *, topics: Topics = DEFAULT_TOPICS) -> None:
        super().__init__()
        self._sender = sender
        self._topics = topics

    @classmethod
    def connect(
        cls,
        bootstrap_servers: str,
        *,
        topics: Topics = DEFAULT_TOPICS,
        linger_ms: int = 5,
        **kafka_options: Any,
    ) -> Self:
        """A producer for a Kafka cluster; it connects on `start()`.

        `kafka_options` go to `aiokafka.AIOKafkaProducer` (security settings, client id, ...);
        idempotence and `acks="all"` are always on.
        """
        return cls(
            KafkaRecordSender(bootstrap_servers, linger_ms=linger_ms, **kafka_options),
            topics=topics,
        )

    async def submit(
        self,
        endpoint: str,
        input: Mapping[str, JsonValue],
        *,
        idempotency_key: str | None = None,
        priority: Priority = "normal",
        tenant: str | None = None,
        metadata: Mapping[str, MetadataValue] | None = None,
        output: OutputTarget | None = None,
        deadline: datetime | None = None,
    ) -> str:
        """Request one paid generation and return its idempotency key.

        Without `idempotency_key`, the key is derived from the work itself
        (`derive_idempotency_key`). Returns once the broker has acknowledged the record.

        Raises:
            RecordInvalid: an argument breaks the request contract; nothing was sent.
            PublishError: the record was not acknowledged; call again with the same key.
            ClientStateError: the producer is not running.
        """
        self._require_running()
        fields = {
            "endpoint": endpoint,
            "input": dict(input),
            "priority": priority,
            "tenant": tenant,
            "metadata": dict(metadata or {}),
            "output": output,
            "deadline": deadline,
        }
        key = _KEY_PENDING if idempotency_key is None else idempotency_key
        request = _validated(SubmitRequest, idempotency_key=key, **fields)
        if idempotency_key is None:
            request = request.model_copy(
                update={"idempotency_key": derive_idempotency_key(request)}
            )
        await self._send(request)
        return request.idempotency_key

    async def cancel(self, idempotency_key: str) -> None:
        """Cancel the submission with this key; it is ordered after that submission.

        A cancel that arrives before its submit still wins: the submit is never paid for.

        Raises:
            RecordInvalid: the key breaks the request contract; nothing was sent.
            PublishError: the record was not acknowledged; call again.
            ClientStateError: the producer is not running.
        """
        self._require_running()
        await self._send(_validated(CancelRequest, idempotency_key=idempotency_key))

    async def _send(self, request: SubmitRequest | CancelRequest) -> None:
        await self._sender.send(
            self._topics.requests,
            key=request.idempotency_key.encode(),
            value=to_json_bytes(request),
            headers=_trace_headers(),
        )

    async def _open(self) -> None:
        await self._sender.start()

    async def _close(self) -> None:
        await self._sender.stop()


_Request = TypeVar("_Request", SubmitRequest, CancelRequest)


def _validated(model: type[_Request], **fields: Any) -> _Request:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise RecordInvalid.from_validation_error(exc) from exc


def _trace_headers() -> list[tuple[str, bytes]]:
    # The globally configured propagator (W3C trace context by default) writes `traceparent`
    # only when a span is active, so records sent outside a trace carry no trace headers.
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return [(name, value.encode()) for name, value in carrier.items()]
