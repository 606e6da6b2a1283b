"""Webhooks as fal sends them: body, signed headers, retries, and every delivery fault."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from genrelay.emulator import EmulatorServer
from tests.emulator.helpers import (
    WebhookReceiver,
    completed,
    eventually,
    jwks_keys,
    submit,
)


async def submit_with_hook(
    client: httpx.AsyncClient, url: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    return await submit(client, body, params={"fal_webhook": url})


async def test_success_webhook_is_signed_and_verifies_against_the_jwks(
    fal: EmulatorServer, client: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    url = receiver.url("/hooks/fal", "key=order-42%2Fhero&token=abc")
    handle = await submit_with_hook(client, url)

    [delivery] = await receiver.wait_for(1)
    body = delivery.json()
    result = (await client.get(handle["response_url"])).json()
    keys = await jwks_keys(client, fal.jwks_url)

    assert delivery.path == "/hooks/fal"
    assert delivery.query == "key=order-42%2Fhero&token=abc"
    assert body == {
        "request_id": handle["request_id"],
        "gateway_request_id": handle["request_id"],
        "status": "OK",
        "payload": result,
    }
    assert delivery.headers["content-type"] == "application/json"
    assert delivery.headers["x-fal-webhook-request-id"] == handle["request_id"]
    assert delivery.headers["x-fal-webhook-user-id"] == fal.settings.user_id
    assert abs(int(delivery.headers["x-fal-webhook-timestamp"]) - time.time()) < 60
    assert len(delivery.headers["x-fal-webhook-signature"]) == 128
    assert delivery.verifies_with(keys)


async def test_error_webhook_carries_the_error_body(
    client: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    handle = await submit_with_hook(client, receiver.url(), {"image_size": "square"})

    [delivery] = await receiver.wait_for(1)

    assert delivery.json() == {
        "request_id": handle["request_id"],
        "gateway_request_id": handle["request_id"],
        "status": "ERROR",
        "error": "Invalid status code: 422",
        "payload": {
            "detail": [
                {"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"}
            ]
        },
    }


async def test_webhook_is_sent_only_after_the_result_is_available(
    client: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    handle = await submit_with_hook(client, receiver.url())

    await receiver.wait_for(1)

    assert (await client.get(handle["response_url"])).status_code == 200


async def test_non_2xx_answers_are_retried_with_fresh_signatures(
    fal: EmulatorServer, client: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    receiver.answers.extend([500, 404])
    await submit_with_hook(client, receiver.url())

    deliveries = await receiver.wait_for(3)
    keys = await jwks_keys(client, fal.jwks_url)
    await eventually(lambda: fal.stats()["webhooks_delivered"] == 1)

    assert len({d.body for d in deliveries}) == 1
    assert all(d.verifies_with(keys) for d in deliveries)
    assert fal.stats()["webhook_attempts"] == 3


async def test_connection_errors_are_retried_until_the_budget_is_spent(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    port = closed.getsockname()[1]
    fal.configure(webhook_retries=2, webhook_backoff_ms=1)
    try:
        await submit_with_hook(client, f"http://127.0.0.1:{port}/hook")
        await eventually(lambda: fal.stats()["webhooks_failed"] == 1)
    finally:
        closed.close()

    assert fal.stats()["webhook_attempts"] == 3
    assert fal.stats()["webhooks_delivered"] == 0


async def test_armed_lost_webhook_is_never_sent(
    fal: EmulatorServer, client: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    fal.arm(lose_webhooks=1)
    lost = await submit_with_hook(client, receiver.url())
    await completed(client, lost)
    kept = await submit_with_hook(client, receiver.url())

    deliveries = await receiver.wait_for(1)

    assert [d.json()["request_id"] for d in deliveries] == [kept["request_id"]]
    assert fal.stats()["webhooks_lost"] == 1
    assert fal.stats()["webhooks_sent"] == 2


async def test_armed_duplicate_webhook_arrives_twice(
    fal: EmulatorServer, client: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    fal.arm(duplicate_webhooks=1)
    await submit_with_hook(client, receiver.url())

    first, second = await receiver.wait_for(2)

    assert first.body == second.body
    assert fal.stats()["webhooks_duplicated"] == 1


async def test_delayed_webhook_arrives_after_a_later_one(
    fal: EmulatorServer, client: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    fal.arm(delay_webhooks=1, delay_webhooks_ms=800)
    early = await submit_with_hook(client, receiver.url())
    await completed(client, early)
    late = await submit_with_hook(client, receiver.url())

    deliveries = await receiver.wait_for(2)

    assert [d.json()["request_id"] for d in deliveries] == [late["request_id"], early["request_id"]]
    assert fal.stats()["webhooks_delayed"] == 1


async def test_payload_error_webhook_has_null_payload(
    fal: EmulatorServer, client: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    fal.arm(payload_error_webhooks=1)
    handle = await submit_with_hook(client, receiver.url())

    [delivery] = await receiver.wait_for(1)
    body = delivery.json()

    assert body["status"] == "OK"
    assert body["payload"] is None
    assert "not JSON serializable" in body["payload_error"]
    assert (await client.get(handle["response_url"])).status_code == 200


@pytest.mark.parametrize(("rate", "lost"), [(0.0, 0), (1.0, 4)])
async def test_loss_rate_drops_that_share_of_webhooks(
    fal: EmulatorServer,
    client: httpx.AsyncClient,
    receiver: WebhookReceiver,
    rate: float,
    lost: int,
) -> None:
    fal.configure(webhook_loss_rate=rate)
    for _ in range(4):
        await submit_with_hook(client, receiver.url())

    await eventually(lambda: fal.stats()["webhooks_sent"] == 4)
    await eventually(lambda: fal.stats()["webhooks_delivered"] == 4 - lost)

    assert fal.stats()["webhooks_lost"] == lost


async def test_loss_and_duplicate_rates_are_reproducible_per_seed(
    fal: EmulatorServer, client: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    async def run() -> tuple[int, int]:
        await fal.reset()
        fal.configure(webhook_loss_rate=0.5, webhook_duplicate_rate=0.5, seed=11)
        for _ in range(12):
            await submit_with_hook(client, receiver.url())
        await eventually(lambda: fal.stats()["webhooks_sent"] == 12)
        stats = fal.stats()
        return stats["webhooks_lost"], stats["webhooks_duplicated"]

    first = await run()
    second = await run()

    assert first == second
    assert 0 < first[0] < 12


async def test_webhook_delay_distribution_applies_to_every_delivery(
    fal: EmulatorServer, client: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    fal.configure(webhook_delay="uniform:50:100")
    await submit_with_hook(client, receiver.url())

    await receiver.wait_for(1)

    assert fal.stats()["webhooks_delayed"] == 1


async def test_internal_retry_changes_gateway_request_id_only(
    fal: EmulatorServer, client: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    fal.arm(fail_next=["runner_disconnected"])
    handle = await submit_with_hook(client, receiver.url())

    [delivery] = await receiver.wait_for(1)
    body = delivery.json()

    assert body["status"] == "OK"
    assert body["request_id"] == handle["request_id"]
    assert body["gateway_request_id"] != handle["request_id"]
    assert delivery.headers["x-fal-webhook-request-id"] == handle["request_id"]


async def test_webhooks_after_rotation_verify_with_the_refreshed_jwks(
    fal: EmulatorServer, client: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    old_keys = await jwks_keys(client, fal.jwks_url)
    fal.rotate_keys()
    await submit_with_hook(client, receiver.url())

    [delivery] = await receiver.wait_for(1)
    new_keys = await jwks_keys(client, fal.jwks_url)

    assert not delivery.verifies_with(old_keys)
    assert delivery.verifies_with(new_keys)
    assert len(new_keys) == len(old_keys) + 1


@asynccontextmanager
async def slow_receiver(hold_s: float) -> AsyncIterator[tuple[str, list[int]]]:
    """Answers every webhook after `hold_s`; records how many were in flight at once."""
    in_flight = [0]
    peaks: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                in_flight[0] += 1
                peaks.append(in_flight[0])
                await asyncio.sleep(hold_s)
                in_flight[0] -= 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook", peaks
    finally:
        server.close()


async def test_webhook_timeout_counts_as_a_failed_attempt(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(webhook_timeout_s=0.05, webhook_retries=1, webhook_backoff_ms=1)

    async with slow_receiver(hold_s=0.5) as (url, _):
        await submit_with_hook(client, url)
        await eventually(lambda: fal.stats()["webhooks_failed"] == 1)

    assert fal.stats()["webhook_attempts"] == 2


async def test_webhook_concurrency_bounds_deliveries_in_flight(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(webhook_concurrency=1)

    async with slow_receiver(hold_s=0.05) as (url, peaks):
        for _ in range(3):
            await submit_with_hook(client, url)
        await eventually(lambda: fal.stats()["webhooks_delivered"] == 3)

    assert peaks == [1, 1, 1]


async def test_each_account_sees_only_its_requests_and_signs_webhooks_as_itself(
    fal: EmulatorServer, client: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    fal.configure(accounts={"second-key": "second-user"})
    other = {"Authorization": "Key second-key"}
    url = receiver.url("/hooks/fal", "key=k&attempt=1&token=abc")
    answer = await client.post(
        "/fal-ai/flux/schnell",
        params={"fal_webhook": url},
        json={"prompt": "x", "image_size": {"width": 64, "height": 64}},
        headers=other,
    )
    handle = answer.json()

    [delivery] = await receiver.wait_for(1)
    keys = await jwks_keys(client, fal.jwks_url)
    assert delivery.headers["x-fal-webhook-user-id"] == "second-user"
    assert delivery.verifies_with(keys)
    # The main account does not know the second account's request; its owner does.
    assert (await client.get(handle["status_url"])).status_code == 404
    assert (await client.get(handle["response_url"])).status_code == 404
    assert (await client.get(handle["status_url"], headers=other)).status_code == 200
