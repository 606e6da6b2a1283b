"""The official fal-client, unmodified, against the emulator (fal-api.md §8.5)."""

from __future__ import annotations

import asyncio
from typing import Any

import fal_client
import fal_client.client
import pytest

from genrelay.emulator import EmulatorServer
from tests.emulator.helpers import FLUX, KEY, TINY, WebhookReceiver, eventually

ARGUMENTS = {"prompt": "a lighthouse at dawn", "seed": 5, **TINY}


@pytest.fixture
def sdk(fal: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> fal_client.AsyncClient:
    """fal-client pointed at the emulator the documented way: FAL_KEY plus QUEUE_URL_FORMAT."""
    monkeypatch.setenv("FAL_KEY", KEY)
    monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", fal.base_url + "/")
    return fal_client.AsyncClient()


async def test_submit_status_and_result(sdk: fal_client.AsyncClient, fal: EmulatorServer) -> None:
    handle = await sdk.submit(FLUX, ARGUMENTS)
    result = await handle.get()
    status = await sdk.status(FLUX, handle.request_id, with_logs=True)

    assert handle.status_url.startswith(fal.base_url + "/fal-ai/flux/requests/")
    assert isinstance(status, fal_client.Completed)
    assert status.logs
    assert status.error is None
    assert result["seed"] == 5
    assert result["images"][0]["content_type"] == "image/png"
    assert await sdk.result(FLUX, handle.request_id) == result


async def test_subscribe_reports_queue_updates(
    sdk: fal_client.AsyncClient, fal: EmulatorServer
) -> None:
    fal.configure(run_latency="fixed:500", concurrency=1)
    updates: list[Any] = []
    enqueued: list[str] = []

    result = await sdk.subscribe(
        FLUX,
        ARGUMENTS,
        with_logs=True,
        interval=0.02,
        on_enqueue=enqueued.append,
        on_queue_update=updates.append,
        priority="low",
    )

    assert result["prompt"] == ARGUMENTS["prompt"]
    assert len(enqueued) == 1
    assert any(isinstance(update, fal_client.InProgress) for update in updates)
    assert isinstance(updates[-1], fal_client.Completed)
    assert fal.submissions()[0].priority == "low"


async def test_queued_status_and_cancel(sdk: fal_client.AsyncClient, fal: EmulatorServer) -> None:
    fal.configure(run_latency="fixed:60000", concurrency=1)
    await sdk.submit(FLUX, ARGUMENTS)
    handle = await sdk.submit(FLUX, ARGUMENTS)

    queued = await sdk.status(FLUX, handle.request_id)
    await sdk.cancel(FLUX, handle.request_id)
    after = await sdk.status(FLUX, handle.request_id)

    assert queued == fal_client.Queued(position=0)
    assert isinstance(after, fal_client.Completed)
    assert after.error_type == "client_cancelled"
    with pytest.raises(fal_client.client.FalClientHTTPError) as failure:
        await sdk.cancel(FLUX, handle.request_id)
    assert failure.value.status_code == 400


async def test_failed_result_raises_with_fal_error_type(
    sdk: fal_client.AsyncClient, fal: EmulatorServer
) -> None:
    fal.configure(internal_retries=0)
    fal.arm(fail_next=["runner_server_error"])
    handle = await sdk.submit(FLUX, ARGUMENTS)

    with pytest.raises(fal_client.client.FalClientHTTPError) as failure:
        await handle.get()

    assert failure.value.status_code == 500
    assert failure.value.error_type == "runner_server_error"


async def test_sdk_retries_429_storms_into_one_paid_submission(
    sdk: fal_client.AsyncClient, fal: EmulatorServer
) -> None:
    fal.arm(reject_submits=2)

    result = await sdk.subscribe(FLUX, ARGUMENTS)

    assert result["seed"] == 5
    assert fal.stats()["rejected_submits"] == 2
    assert fal.stats()["submissions"] == 1


async def test_submit_with_webhook_url(
    sdk: fal_client.AsyncClient, fal: EmulatorServer, receiver: WebhookReceiver
) -> None:
    url = receiver.url("/hook", "key=k-1&sig=abc")

    handle = await sdk.submit(FLUX, ARGUMENTS, webhook_url=url)
    [delivery] = await receiver.wait_for(1)

    assert fal.submissions()[0].webhook_url == url
    assert delivery.json()["request_id"] == handle.request_id
    assert delivery.query == "key=k-1&sig=abc"


async def test_sync_client_in_a_thread(sdk: fal_client.AsyncClient, fal: EmulatorServer) -> None:
    client = fal_client.SyncClient()

    result = await asyncio.to_thread(client.subscribe, FLUX, ARGUMENTS)
    handle = await asyncio.to_thread(client.submit, FLUX, ARGUMENTS)
    await eventually(lambda: fal.stats()["completed"] == 2)
    status = await asyncio.to_thread(client.status, FLUX, handle.request_id)

    assert result["seed"] == 5
    assert isinstance(status, fal_client.Completed)


async def test_sdk_resubmits_after_a_dropped_response_and_pays_twice(
    sdk: fal_client.AsyncClient, fal: EmulatorServer
) -> None:
    # The hazard genrelay exists for: fal-client re-POSTs an ambiguous submit.
    fal.arm(drop_submit_responses=1)

    handle = await sdk.submit(FLUX, ARGUMENTS)

    assert fal.stats()["submissions"] == 2
    assert fal.submissions()[1].request_id == handle.request_id
