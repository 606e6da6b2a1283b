"""The status page serves the relay's snapshot, and a real browser renders it."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from genrelay.consumer.events.recent_outcomes import Outcome
from genrelay.consumer.service.status_page import StatusSnapshot, TenantShare, status_routes
from tests.browser import CHROMIUM, check_screenshot, chromium

FINISHED = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)


def _minute(n: int) -> dict[str, Any]:
    """The n-th minute of the last hour: a load that starts 20 minutes ago and grows."""
    busy = n >= 40
    return {
        "at": f"2026-11-25T11:{n:02d}:00+00:00",
        "completions": 10 * (n - 39) if busy else 0,
        "failures": n % 3 if busy else 0,
        "dead_letters": 1 if n == 50 else 0,
        "in_flight": 5 * (n - 39) if busy else 0,
        "provider_calls": 30 * (n - 39) if busy else 0,
        "provider_calls_per_job": 3.0 if busy else None,
        "p50_ms": 900.0 + n if busy else None,
        "p99_ms": 2_400.0 + 10 * n if busy else None,
    }


TRENDS = [_minute(n) for n in range(60)]
SNAPSHOT = StatusSnapshot(
    ready=True,
    partitions=(0, 3, 4),
    in_flight=17,
    by_phase={"SUBMITTED": 11, "UNKNOWN": 2, "RESULT_READY": 4},
    by_endpoint={"fal-ai/flux/schnell": 13, "fal-ai/veo3": 4},
    by_tenant={
        "shop": TenantShare(3, 0, 0.75, 2, spent_usd=9.5, budget_usd=10.0),
        "": TenantShare(14, 120, 0.25),
    },
    rates={"succeeded": 2.5, "failed": 0.05},
    completions=(Outcome("order-42/hero", "succeeded", "fal-ai/flux/schnell", FINISHED, 12_400),),
    # A key is whatever a producer sent: the page must show it, never interpret it.
    failures=(Outcome("order-43/<b>x</b>", "failed", "fal-ai/veo3", FINISHED, 3_100, "timeout"),),
    instance="relay-1",
    generated_at=FINISHED,
    trends=TRENDS,
)


def app() -> Starlette:
    return Starlette(routes=status_routes(lambda: SNAPSHOT))


async def get(path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app())
    async with httpx.AsyncClient(transport=transport, base_url="http://relay") as client:
        return await client.get(path)


async def test_status_json_reflects_the_snapshot() -> None:
    response = await get("/status.json")

    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.json() == {
        "ready": True,
        "partitions": [0, 3, 4],
        "in_flight": 17,
        "by_phase": {"SUBMITTED": 11, "UNKNOWN": 2, "RESULT_READY": 4},
        "by_endpoint": {"fal-ai/flux/schnell": 13, "fal-ai/veo3": 4},
        "by_tenant": {
            "shop": {
                "in_flight": 3,
                "waiting": 0,
                "share": 0.75,
                "budget_waiting": 2,
                "spent_usd": 9.5,
                "budget_usd": 10.0,
            },
            "": {
                "in_flight": 14,
                "waiting": 120,
                "share": 0.25,
                "budget_waiting": 0,
                "spent_usd": None,
                "budget_usd": None,
            },
        },
        "rates": {"succeeded": 2.5, "failed": 0.05},
        "completions": [
            {
                "idempotency_key": "order-42/hero",
                "status": "succeeded",
                "endpoint": "fal-ai/flux/schnell",
                "finished_at": "2026-11-25T12:00:00+00:00",
                "total_ms": 12_400,
                "error": None,
            }
        ],
        "failures": [
            {
                "idempotency_key": "order-43/<b>x</b>",
                "status": "failed",
                "endpoint": "fal-ai/veo3",
                "finished_at": "2026-11-25T12:00:00+00:00",
                "total_ms": 3_100,
                "error": "timeout",
            }
        ],
        "instance": "relay-1",
        "generated_at": "2026-11-25T12:00:00+00:00",
        "trends": TRENDS,
    }


async def test_the_page_loads_nothing_from_elsewhere() -> None:
    response = await get("/status")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    # SVG's namespace is a name, not an address anything is loaded from.
    page = response.text.replace('"http://www.w3.org/2000/svg"', "")
    assert 'fetch("status.json"' in page
    assert "<link" not in page
    assert "src=" not in page
    assert "http://" not in page
    assert "https://" not in page


@pytest.fixture
async def server() -> AsyncIterator[str]:
    """The status routes on a real HTTP server on a free loopback port."""
    # log_config=None: uvicorn's default config would take its loggers away from the root
    # handler for the rest of the session (later tests capture logs through it).
    config = uvicorn.Config(
        app(), host="127.0.0.1", port=0, log_level="warning", lifespan="off", log_config=None
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            assert not task.done(), "the server stopped during start"
            await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/status"
    server.should_exit = True
    await task


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
async def test_a_browser_renders_the_snapshot(
    server: str, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    screenshot = tmp_path / "status.png"
    record_property("screenshot", str(screenshot))

    await chromium(tmp_path, f"--screenshot={screenshot}", server)
    dom = (await chromium(tmp_path, "--dump-dom", server)).decode()

    check_screenshot(screenshot)

    # The script ran: the shell's placeholders were replaced by the snapshot's values.
    assert 'data-rendered="2026-11-25T12:00:00+00:00"' in dom
    assert re.search(r'id="in-flight"[^>]*>17<', dom)
    assert re.search(r'id="ready"[^>]*>ready<', dom)
    assert re.search(r'id="partitions"[^>]*>0, 3, 4<', dom)
    assert re.search(r"<td>SUBMITTED</td><td[^>]*>11</td>", dom)
    assert re.search(r"<td>fal-ai/flux/schnell</td><td[^>]*>13</td>", dom)
    assert re.search(r"<td>succeeded</td><td[^>]*>2.50</td>", dom)
    assert re.search(r"<td>shop</td><td[^>]*>3</td><td[^>]*>0</td><td[^>]*>75 %</td>", dom)
    assert re.search(r"<td[^>]*>\$9.50 / \$10.00</td><td[^>]*>2</td>", dom)
    assert re.search(r"<td>\(none\)</td><td[^>]*>14</td><td[^>]*>120</td>", dom)
    assert "order-42/hero" in dom
    assert "12.4 s" in dom
    assert "order-43/&lt;b&gt;x&lt;/b&gt;" in dom
    assert "<b>x</b>" not in dom
    # The last hour's charts: a line per series, broken where a minute has no value.
    for chart in ("completions", "latency", "in-flight", "calls", "dead-letters"):
        assert f'data-chart="{chart}"' in dom, chart
    lines = re.findall(r'<polyline points="([^"]*)"[^>]*data-series="([a-z0-9_]+)"', dom)
    by_series = {series: points.split() for points, series in lines}
    assert len(by_series["completions"]) == 60  # zero is a value: the whole hour
    assert len(by_series["p99_ms"]) == 20  # only the busy minutes have times
