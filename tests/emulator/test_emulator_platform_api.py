"""fal's Platform API as the emulator serves it: request history, billing events, prices.

Shapes follow fal.ai/docs/platform-apis/v1/models/requests/by-endpoint, .../billing-events,
.../pricing and .../pricing/estimate; tags follow fal.ai/docs/documentation/model-apis/
request-tags. genrelay's own client (`FalPlatform`) reads them here too.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from genrelay.consumer.errors import Rejected
from genrelay.consumer.provider.fal_platform import FalPlatform
from genrelay.emulator.records import parse_tags
from genrelay.emulator.server import EmulatorServer
from tests.emulator.helpers import FLUX, KEY, completed, eventually, submit

HISTORY = "/v1/models/requests/by-endpoint"
BILLING = "/v1/models/billing-events"


async def _done(client: httpx.AsyncClient, **kwargs: Any) -> dict[str, Any]:
    handle = await submit(client, **kwargs)
    await completed(client, handle)
    return handle


async def test_the_history_lists_each_request_with_its_input_and_pages(
    client: httpx.AsyncClient,
) -> None:
    first = await _done(client)
    second = await _done(client, body={"prompt": "second", "image_size": "square"})
    page = await client.get(HISTORY, params={"endpoint_id": FLUX, "expand": "payloads", "limit": 1})
    assert page.status_code == 200, page.text
    body = page.json()
    assert body["has_more"] is True
    assert body["next_cursor"]
    (newest,) = body["items"]
    assert newest["request_id"] == second["request_id"]
    assert newest["json_input"] == {"prompt": "second", "image_size": "square"}
    assert newest["status_code"] == 200
    assert all(newest[name] for name in ("sent_at", "started_at", "ended_at"))
    rest = await client.get(
        HISTORY, params={"endpoint_id": FLUX, "limit": 1, "cursor": body["next_cursor"]}
    )
    (older,) = rest.json()["items"]
    assert older["request_id"] == first["request_id"]
    assert "json_input" not in older  # only with expand=payloads
    assert rest.json()["has_more"] is False
    by_id = await client.get(
        HISTORY, params={"endpoint_id": FLUX, "request_id": first["request_id"]}
    )
    assert [item["request_id"] for item in by_id.json()["items"]] == [first["request_id"]]


async def test_a_running_request_is_listed_without_an_end(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(run_latency={"kind": "fixed", "ms": 60_000})
    handle = await submit(client)
    listed = await client.get(HISTORY, params={"endpoint_id": FLUX})
    (item,) = listed.json()["items"]
    assert item["request_id"] == handle["request_id"]
    assert item["ended_at"] is None
    assert item["status_code"] is None


async def test_the_history_lags_behind_the_queue_by_its_setting(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(history_lag_s=3600)
    handle = await _done(client)
    hidden = await client.get(HISTORY, params={"endpoint_id": FLUX})
    assert hidden.json()["items"] == []
    fal.configure(history_lag_s=0)
    shown = await client.get(HISTORY, params={"endpoint_id": FLUX})
    assert [item["request_id"] for item in shown.json()["items"]] == [handle["request_id"]]


async def test_each_account_sees_only_its_own_requests(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(accounts={"other-key": "someone-else"})
    await _done(client)
    other = await client.get(
        HISTORY, params={"endpoint_id": FLUX}, headers={"Authorization": "Key other-key"}
    )
    assert other.json()["items"] == []


async def test_platform_errors_have_fals_shape(client: httpx.AsyncClient) -> None:
    anonymous = await client.get(
        HISTORY, params={"endpoint_id": FLUX}, headers={"Authorization": ""}
    )
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["type"] == "authorization_error"
    bad: list[dict[str, str | int]] = [
        {},
        {"endpoint_id": FLUX, "limit": 101},
        {"endpoint_id": FLUX, "status": "x"},
    ]
    for params in bad:
        refused = await client.get(HISTORY, params=params)
        assert refused.status_code == 400, params
        assert refused.json()["error"]["type"] == "validation_error"


def test_bad_tags_are_dropped_silently_like_fals_gateway() -> None:
    kept = parse_tags(
        "Team=Growth, fal.internal=x, bad key=1, ok=has=equals, empty=,"
        "long=" + "v" * 257 + ",ok=last,noequals"
    )
    assert kept == {"team": "Growth", "ok": "last", "empty": ""}
    assert len(parse_tags(",".join(f"k{n}=v" for n in range(12)))) == 10


async def test_a_tagged_request_is_billed_and_reported_with_its_tags_and_cost(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(unit_prices={FLUX: 0.025})
    tags = {"X-Fal-Tags": "gr.key=abc123,gr.attempt=1,tenant=growth"}
    handle = await _done(client, headers=tags)
    result = await client.get(handle["response_url"])
    assert result.headers["x-fal-billable-units"] == "1"
    await _done(client, headers={"X-Fal-Tags": "gr.key=other"})
    rows = await client.get(BILLING, params={"source": "tagged-billed", "tag": "gr.key=abc123"})
    assert rows.status_code == 200, rows.text
    (row,) = rows.json()["billing_events"]
    assert row["request_id"] == handle["request_id"]
    assert row["endpoint_id"] == FLUX
    assert row["tags"] == {"gr.key": "abc123", "gr.attempt": "1", "tenant": "growth"}
    assert (row["quantity"], row["unit_price"], row["cost_total"]) == (1.0, 0.025, 0.025)
    assert row["cost_estimate_nano_usd"] == 25_000_000
    plain = await client.get(BILLING)
    assert len(plain.json()["billing_events"]) == 2
    assert all("tags" not in event for event in plain.json()["billing_events"])
    assert fal.emulator.accounting.counts["billed"] == 2


async def test_failed_requests_are_not_billed_and_billing_lags_by_its_setting(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.arm(fail_next=["runner_server_error"])
    failed = await _done(client, headers={"X-Fal-No-Retry": "1"})
    fal.configure(billing_lag_s=3600)
    await _done(client)
    rows = await client.get(BILLING)
    assert rows.json()["billing_events"] == []
    fal.configure(billing_lag_s=0)
    rows = await client.get(BILLING)
    assert failed["request_id"] not in {e["request_id"] for e in rows.json()["billing_events"]}
    assert len(rows.json()["billing_events"]) == 1


async def test_prices_and_estimates(fal: EmulatorServer, client: httpx.AsyncClient) -> None:
    fal.configure(unit_prices={FLUX: 0.003})
    prices = await client.get("/v1/models/pricing", params={"endpoint_id": f"{FLUX},nope/x"})
    assert prices.json()["prices"] == [
        {"endpoint_id": FLUX, "unit_price": 0.003, "unit": "image", "currency": "USD"}
    ]
    unknown = await client.get("/v1/models/pricing", params={"endpoint_id": "nope/x"})
    assert unknown.status_code == 404
    estimate = await client.post(
        "/v1/models/pricing/estimate",
        json={"estimate_type": "unit_price", "endpoints": {FLUX: {"unit_quantity": 100}}},
    )
    assert estimate.json() == {"estimate_type": "unit_price", "total_cost": 0.3, "currency": "USD"}


async def test_genrelays_platform_client_reads_history_and_billing(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    handle = await _done(client, headers={"X-Fal-Tags": "gr.key=k1"})
    since = datetime.now(UTC) - timedelta(minutes=5)
    async with FalPlatform(KEY, base_url=f"{fal.base_url}/v1") as platform:
        listed = await platform.requests(FLUX, start=since, end=None)
        assert [item.request_id for item in listed] == [handle["request_id"]]
        assert listed[0].input == {
            "prompt": "a lighthouse at dawn",
            "image_size": {"width": 32, "height": 32},
        }
        events = await eventually(
            lambda: platform.billing_events(start=since, tags={"gr.key": "k1"})
        )
        assert events[0].request_id == handle["request_id"]
        assert events[0].cost_usd == pytest.approx(0.003)
        assert (await platform.prices([FLUX]))[FLUX].unit_price == pytest.approx(0.003)
    async with FalPlatform("wrong", base_url=f"{fal.base_url}/v1") as stranger:
        with pytest.raises(Rejected):
            await stranger.requests(FLUX, start=since, end=None)
