"""Webhook deliveries exactly as fal sends them (fal-api.md §5): body, signed headers, retries.

One shared httpx client sends them, on the lean `StreamTransport` unless another transport
is injected.

Each delivery is a supervised task: optional delay, then POSTs until a 2xx or the retry budget
is spent, re-signed per attempt so the timestamp stays fresh. Loss, duplication and delay come
from the fault plan; a duplicate is the same body delivered again after the first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import httpx

from genrelay.emulator.accounting import Accounting
from genrelay.emulator.faults import WebhookPlan
from genrelay.emulator.outcomes import PAYLOAD_ERROR, Outcome, dumps
from genrelay.emulator.settings import EmulatorSettings
from genrelay.emulator.signing import Keyring
from genrelay.emulator.supervisor import Supervisor
from genrelay.emulator.transport import StreamTransport

log = logging.getLogger(__name__)
JSON = Any


def webhook_body(
    request_id: str, gateway_request_id: str, outcome: Outcome, *, payload_error: bool = False
) -> bytes:
    """The delivery body: OK with the output, ERROR with the error body, or OK with
    `payload_error` when the output is (made out to be) not JSON-serialisable."""
    body: dict[str, JSON] = {"request_id": request_id, "gateway_request_id": gateway_request_id}
    if not outcome.ok:
        body |= {
            "status": "ERROR",
            "error": f"Invalid status code: {outcome.status_code}",
            "payload": outcome.payload,
        }
    elif payload_error:
        body |= {"status": "OK", "payload": None, "payload_error": PAYLOAD_ERROR}
    else:
        body |= {"status": "OK", "payload": outcome.payload}
    return dumps(body)


class WebhookSender:
    """Delivers webhooks over one shared HTTP client."""

    def __init__(
        self,
        keyring: Keyring,
        accounting: Accounting,
        supervisor: Supervisor,
        settings: Callable[[], EmulatorSettings],
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._keyring = keyring
        self._accounting = accounting
        self._supervisor = supervisor
        self._settings = settings
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._slots = asyncio.Semaphore(settings().webhook_concurrency)

    async def open(self) -> None:
        """Create the shared HTTP client."""
        # In-flight deliveries are bounded by our semaphore, not by a pool that could time out.
        limit = self._settings().webhook_concurrency
        self._client = httpx.AsyncClient(
            transport=self._transport or StreamTransport(max_idle_per_host=limit),
            follow_redirects=False,
            headers={"User-Agent": "genrelay-emulator"},
        )

    async def close(self) -> None:
        """Close the HTTP client; deliveries must have been stopped first. Idempotent."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def reconfigure(self, settings: EmulatorSettings) -> None:
        self._slots = asyncio.Semaphore(settings.webhook_concurrency)

    def send(self, url: str, request_id: str, body: bytes, plan: WebhookPlan, user_id: str) -> None:
        """Start delivering `body` to `url` according to `plan`."""
        counts = self._accounting
        counts.count("webhooks_sent")
        if plan.lose:
            counts.count("webhooks_lost")
            return
        if plan.payload_error:
            counts.count("webhooks_payload_error")
        if plan.delay_ms > 0:
            counts.count("webhooks_delayed")
        coro = self._deliver(url, (request_id, user_id), body, plan)
        self._supervisor.spawn(coro, name=f"webhook:{request_id}")

    async def _deliver(
        self, url: str, signer: tuple[str, str], body: bytes, plan: WebhookPlan
    ) -> None:
        if plan.delay_ms > 0:
            await asyncio.sleep(plan.delay_ms / 1000)
        await self._post_until_accepted(url, signer, body)
        if plan.duplicate:
            self._accounting.count("webhooks_duplicated")
            await self._post_until_accepted(url, signer, body)

    async def _post_until_accepted(self, url: str, signer: tuple[str, str], body: bytes) -> None:
        """POST until a 2xx; `signer` is the (request id, user id) the signature covers."""
        request_id, user_id = signer
        settings = self._settings()
        for attempt in range(settings.webhook_retries + 1):
            if attempt:
                await asyncio.sleep(_backoff_s(settings, attempt))
            if await self._post(url, request_id, user_id, body, settings):
                self._accounting.count("webhooks_delivered")
                return
        self._accounting.count("webhooks_failed")
        log.info("webhook for %s not delivered to %s", request_id, url)

    async def _post(
        self, url: str, request_id: str, user_id: str, body: bytes, settings: EmulatorSettings
    ) -> bool:
        if self._client is None:
            raise RuntimeError("webhook sender is not open")
        signature = self._keyring.sign(request_id, user_id, body)
        headers = {"Content-Type": "application/json", **signature.headers()}
        self._accounting.count("webhook_attempts")
        try:
            async with self._slots:
                response = await self._client.post(
                    url, content=body, headers=headers, timeout=settings.webhook_timeout_s
                )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            log.debug("webhook to %s failed: %r", url, exc)
            return False
        return response.is_success


def _backoff_s(settings: EmulatorSettings, attempt: int) -> float:
    """Exponential backoff before retry number `attempt` (1-based), capped."""
    delay_ms = settings.webhook_backoff_ms * 2.0 ** (attempt - 1)
    return min(delay_ms, settings.webhook_backoff_max_ms) / 1000
