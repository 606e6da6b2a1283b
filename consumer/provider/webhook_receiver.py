"""The webhook receiver: an ASGI app that verifies fal's deliveries and hands them to Kafka.

Any replica can receive any delivery. It checks the URL token (the key is ours), the size, the
Ed25519 signature and the timestamp, then produces the delivery to the webhooks topic keyed by
the idempotency key, so the replica owning that key's partition applies it. It answers 2xx only
after the broker acknowledged the record; every refusal is a 4xx and changes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from genrelay.consumer.errors import KeysUnavailable, RejectReason, WebhookRejected
from genrelay.consumer.provider.fal import parse_webhook
from genrelay.consumer.provider.webhook_signature import (
    ATTEMPT_PARAM,
    KEY_PARAM,
    TOKEN_PARAM,
    USER_ID_HEADER,
    JwksCache,
    WebhookToken,
    verify_delivery,
)
from genrelay.schemas.webhooks import WebhookDelivery

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/fal"

Handoff = Callable[[WebhookDelivery], Awaitable[None]]


class WebhookReceiver:
    """Verifies deliveries and hands the genuine ones to `handoff` (a Kafka produce)."""

    def __init__(
        self,
        *,
        tokens: WebhookToken,
        jwks: JwksCache,
        handoff: Handoff,
        max_body_bytes: int,
        fal_user_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._tokens = tokens
        self._fal_user_id = fal_user_id
        self._jwks = jwks
        self._handoff = handoff
        self._max_body_bytes = max_body_bytes
        self._clock = clock
        self.accepted = 0
        self.refused: dict[str, int] = {}

    def routes(self) -> list[Route]:
        return [Route(WEBHOOK_PATH, self.receive, methods=["POST"])]

    async def receive(self, request: Request) -> Response:
        try:
            delivery = await self._verified(request)
        except WebhookRejected as exc:
            self.refused[exc.reason.value] = self.refused.get(exc.reason.value, 0) + 1
            log.info("webhook refused (%s): %s", exc.reason.value, exc)
            return JSONResponse({"error": exc.reason.value}, status_code=exc.status_code)
        except KeysUnavailable:
            # Not the sender's fault: a 5xx makes fal retry once our keys load again.
            return JSONResponse({"error": "keys_unavailable"}, status_code=503)
        await self._handoff(delivery)
        self.accepted += 1
        return JSONResponse({"status": "accepted"})

    async def _verified(self, request: Request) -> WebhookDelivery:
        key = request.query_params.get(KEY_PARAM)
        attempt = request.query_params.get(ATTEMPT_PARAM)
        token = request.query_params.get(TOKEN_PARAM)
        if not key or not token or attempt is None:
            raise WebhookRejected(RejectReason.UNKNOWN_KEY, "the URL names no key and attempt")
        number = self._tokens.check_token(key, attempt, token)
        body = await self._body(request)
        await verify_delivery(request.headers, body, jwks=self._jwks, now=self._clock())
        user_id = request.headers.get(USER_ID_HEADER)  # signed: it is who fal says sent it
        if self._fal_user_id is not None and user_id != self._fal_user_id:
            # Another fal account's job called our URL (it learnt the URL somewhere).
            raise WebhookRejected(RejectReason.FOREIGN_ACCOUNT, f"signed for {user_id!r}")
        try:
            news = parse_webhook(body)
        except ValueError as exc:
            raise WebhookRejected(RejectReason.MALFORMED_BODY, str(exc)) from exc
        signed_id = request.headers.get("x-fal-webhook-request-id")
        if signed_id != news.request_id:
            raise WebhookRejected(RejectReason.MALFORMED_BODY, "body and header ids differ")
        return WebhookDelivery(
            idempotency_key=key,
            attempt=number,
            user_id=user_id,
            account_pinned=self._fal_user_id is not None,
            request_id=news.request_id,
            gateway_request_id=news.gateway_request_id,
            ok=news.ok,
            payload=news.payload if news.ok else (news.payload or None),
            error=news.error.message if news.error else None,
            payload_error=news.payload_error,
            received_at=datetime.now(UTC),
        )

    async def _body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and _declared_size(declared) > self._max_body_bytes:
            raise WebhookRejected(RejectReason.BODY_TOO_LARGE, "body too large (declared)")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self._max_body_bytes:
                raise WebhookRejected(RejectReason.BODY_TOO_LARGE, f"over {size} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


def _declared_size(value: str) -> int:
    """A Content-Length as a number; anything unreadable counts as too large."""
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        return 1 << 62
    return int(value)


def app(receiver: WebhookReceiver | None, extra: list[Route] | None = None) -> Starlette:
    """The service's HTTP app: the webhook route (unless polling only) and operational routes."""
    webhook_routes = receiver.routes() if receiver is not None else []
    return Starlette(routes=[*webhook_routes, *(extra or [])])
