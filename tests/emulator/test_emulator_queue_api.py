"""The queue API, field by field against fal-api.md §1-§4."""

from __future__ import annotations

import json

import httpx
import pytest

from genrelay.emulator import EmulatorServer
from tests.emulator.helpers import (
    FLUX,
    KEY,
    TINY,
    completed,
    eventually,
    status_of,
    submit,
    view,
)

HOLD = "fixed:60000"


async def test_submit_returns_absolute_owner_app_urls(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    response = await client.post(f"/{FLUX}", json={"prompt": "a cat", **TINY})
    body = response.json()
    request_id = body["request_id"]
    base = f"{fal.base_url}/fal-ai/flux/requests/{request_id}"

    assert response.status_code == 200
    assert response.headers["x-fal-request-id"] == request_id
    assert body["status"] == "IN_QUEUE"
    assert body["gateway_request_id"] == request_id
    assert body["response_url"] == base
    assert body["status_url"] == base + "/status"
    assert body["cancel_url"] == base + "/cancel"
    assert isinstance(body["queue_position"], int)


@pytest.mark.parametrize(
    ("endpoint", "app_path"),
    [
        ("workflows/acme/pipeline/extra/step", "workflows/acme/pipeline"),
        ("comfy/acme/graph", "comfy/acme/graph"),
    ],
)
async def test_namespaced_apps_use_the_third_segment(
    fal: EmulatorServer, client: httpx.AsyncClient, endpoint: str, app_path: str
) -> None:
    fal.configure(image_endpoints=[endpoint])

    handle = await submit(client, endpoint=endpoint)
    status = await completed(client, handle)

    assert handle["status_url"].startswith(f"{fal.base_url}/{app_path}/requests/")
    assert status["status"] == "COMPLETED"
    assert (await client.get(handle["response_url"])).status_code == 200


@pytest.mark.parametrize("authorization", [None, "Key wrong", f"Bearer {KEY}", KEY])
async def test_every_queue_call_needs_a_valid_key(
    client: httpx.AsyncClient, authorization: str | None
) -> None:
    handle = await submit(client)
    headers = {} if authorization is None else {"Authorization": authorization}
    async with httpx.AsyncClient(headers=headers) as anonymous:
        calls = [
            anonymous.post(str(client.base_url.join(f"/{FLUX}")), json={"prompt": "x"}),
            anonymous.get(handle["status_url"]),
            anonymous.get(handle["status_url"] + "/stream"),
            anonymous.get(handle["response_url"]),
            anonymous.put(handle["cancel_url"]),
        ]
        for call in calls:
            response = await call
            assert response.status_code == 401
            assert "detail" in response.json()


async def test_accepted_keys_are_configurable(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(api_keys=["id:secret", "other"])

    refused = await client.post(f"/{FLUX}", json={"prompt": "x"})
    accepted = await client.post(
        f"/{FLUX}", json={"prompt": "x"}, headers={"Authorization": "Key id:secret"}
    )

    assert refused.status_code == 401
    assert accepted.status_code == 200
    assert fal.stats()["unauthorized"] == 1


async def test_unknown_endpoint_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/fal-ai/no-such-model", json={"prompt": "x"})

    assert response.status_code == 404
    assert "fal-ai/no-such-model" in response.json()["detail"]


async def test_unknown_request_or_wrong_app_is_404(client: httpx.AsyncClient) -> None:
    handle = await submit(client)
    wrong_app = handle["status_url"].replace("/fal-ai/flux/", "/fal-ai/other/")
    with_path = handle["status_url"].replace("/fal-ai/flux/", "/fal-ai/flux/schnell/")

    assert (await client.get("/fal-ai/flux/requests/nope/status")).status_code == 404
    assert (await client.get("/fal-ai/flux/requests/nope")).status_code == 404
    assert (await client.get(wrong_app)).status_code == 404
    assert (await client.get(with_path)).status_code == 404


async def test_status_is_202_until_completed_then_200_with_metrics(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(run_latency=HOLD)
    held = await submit(client)
    running = await eventually(lambda: _status_if(client, held, "IN_PROGRESS"))
    fal.configure(run_latency="fixed:150")

    done = await completed(client, await submit(client))

    assert running["logs"] is None
    assert "queue_position" not in running
    assert done["status"] == "COMPLETED"
    assert done["logs"] is None
    assert done["metrics"] == {"inference_time": 0.15}
    assert "error" not in done


async def _status_if(client: httpx.AsyncClient, handle: dict[str, str], wanted: str) -> object:
    response = await client.get(handle["status_url"])
    body = response.json()
    if body["status"] == wanted:
        assert response.status_code == 202
        return body
    return None


async def test_queued_status_has_position_and_logs_key(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(run_latency=HOLD, concurrency=1)
    await submit(client)
    handles = [await submit(client) for _ in range(3)]

    statuses = [await client.get(h["status_url"]) for h in handles]

    assert [s.status_code for s in statuses] == [202, 202, 202]
    assert [s.json()["status"] for s in statuses] == ["IN_QUEUE"] * 3
    assert [s.json()["queue_position"] for s in statuses] == [0, 1, 2]
    assert all("logs" in s.json() for s in statuses)


@pytest.mark.parametrize(("value", "has_logs"), [("1", True), ("true", True), ("0", False)])
async def test_logs_parameter_accepts_fal_and_sdk_spellings(
    fal: EmulatorServer, client: httpx.AsyncClient, value: str, has_logs: bool
) -> None:
    handle = await submit(client)
    await completed(client, handle)

    body = (await client.get(handle["status_url"], params={"logs": value})).json()
    false_body = (await client.get(handle["status_url"], params={"logs": "false"})).json()
    bad = await client.get(handle["status_url"], params={"logs": "maybe"})

    assert isinstance(body["logs"], list) is has_logs
    if has_logs:
        assert {"message", "level", "source", "timestamp"} <= set(body["logs"][0])
    assert false_body["logs"] is None
    assert bad.status_code == 400


async def test_result_before_completion_is_400_in_progress(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(run_latency=HOLD)
    handle = await submit(client)

    response = await client.get(handle["response_url"])

    assert response.status_code == 400
    assert response.json() == {"detail": "Request is still in progress"}


async def test_invalid_input_is_accepted_then_fails_with_422_detail(
    client: httpx.AsyncClient,
) -> None:
    handle = await submit(client, {"image_size": "square"})

    status = await completed(client, handle)
    result = await client.get(handle["response_url"])

    assert status["status"] == "COMPLETED"
    assert status["error_type"] == "value_error.missing"
    assert status["error"] == "field required"
    assert result.status_code == 422
    assert result.headers["x-fal-retryable"] == "false"
    assert result.json() == {
        "detail": [
            {"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"}
        ]
    }


async def test_malformed_submits_are_400_bad_request(client: httpx.AsyncClient) -> None:
    not_json = await client.post(f"/{FLUX}", content=b"{nope")
    bad_hook = await client.post(f"/{FLUX}", params={"fal_webhook": "ftp://x"}, json={})
    bad_priority = await client.post(
        f"/{FLUX}", json={}, headers={"X-Fal-Queue-Priority": "urgent"}
    )

    for response in (not_json, bad_hook, bad_priority):
        assert response.status_code == 400
        assert response.json()["error_type"] == "bad_request"
        assert response.headers["x-fal-error-type"] == "bad_request"


async def test_cancel_queued_request_never_runs(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(run_latency=HOLD, concurrency=1)
    await submit(client)
    handle = await submit(client)
    behind = await submit(client)

    cancel = await client.put(handle["cancel_url"])
    status = await status_of(client, handle)
    result = await client.get(handle["response_url"])

    assert cancel.status_code == 202
    assert cancel.json() == {"status": "CANCELLATION_REQUESTED"}
    assert status["status"] == "COMPLETED"
    assert status["error_type"] == "client_cancelled"
    assert result.status_code == 499
    assert result.json()["error_type"] == "client_cancelled"
    assert (await status_of(client, behind))["queue_position"] == 0
    assert view(fal, handle)["started_at"] is None


async def test_cancel_completed_is_400_and_unknown_is_404(client: httpx.AsyncClient) -> None:
    handle = await submit(client)
    await completed(client, handle)

    again = await client.put(handle["cancel_url"])
    unknown = await client.put("/fal-ai/flux/requests/nope/cancel")

    assert again.status_code == 400
    assert again.json() == {"status": "ALREADY_COMPLETED"}
    assert unknown.status_code == 404
    assert unknown.json() == {"status": "NOT_FOUND"}


async def test_cancel_running_request_stops_it_when_the_runner_honours_it(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(run_latency=HOLD)
    handle = await submit(client)
    await eventually(lambda: _status_if(client, handle, "IN_PROGRESS"))

    assert (await client.put(handle["cancel_url"])).status_code == 202
    status = await completed(client, handle)

    assert status["error_type"] == "client_cancelled"


async def test_cancel_running_request_may_still_complete(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(run_latency="fixed:1000", runner_honours_cancel=False)
    handle = await submit(client)
    await eventually(lambda: view(fal, handle)["status"] == "IN_PROGRESS")

    assert (await client.put(handle["cancel_url"])).status_code == 202
    status = await completed(client, handle)

    assert "error" not in status
    assert (await client.get(handle["response_url"])).status_code == 200


async def test_max_queue_length_rejects_with_429_when_more_are_waiting(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(run_latency=HOLD, concurrency=1)
    for _ in range(3):
        await submit(client)  # one running, two waiting

    full = await client.post(f"/{FLUX}", params={"fal_max_queue_length": "1"}, json={"prompt": "x"})
    fits = await client.post(f"/{FLUX}", params={"fal_max_queue_length": "2"}, json={"prompt": "x"})

    assert full.status_code == 429
    assert "detail" in full.json()
    assert fits.status_code == 200
    assert fal.stats()["submissions"] == 4
    assert fal.stats()["rejected_submits"] == 1


async def test_low_priority_waits_behind_normal_and_is_recorded(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(run_latency=HOLD, concurrency=1)
    blocker = await submit(client)
    low = await submit(client, headers={"X-Fal-Queue-Priority": "low"})
    normal = await submit(client)

    low_position = (await status_of(client, low))["queue_position"]
    normal_position = (await status_of(client, normal))["queue_position"]
    await client.put(blocker["cancel_url"])
    await eventually(lambda: _status_if(client, normal, "IN_PROGRESS"))

    assert (low_position, normal_position) == (1, 0)
    assert (await status_of(client, low))["status"] == "IN_QUEUE"
    assert [s.priority for s in fal.submissions()] == ["normal", "low", "normal"]
    assert view(fal, low)["priority"] == "low"


async def test_start_timeout_fails_a_request_that_never_started(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(run_latency=HOLD, concurrency=1)
    await submit(client)
    handle = await submit(client, headers={"X-Fal-Request-Timeout": "0.2"})

    status = await completed(client, handle)
    result = await client.get(handle["response_url"])

    assert status["error_type"] == "request_timeout"
    assert result.status_code == 504
    assert result.headers["x-fal-request-timeout-type"] == "user"
    assert result.headers["x-fal-error-type"] == "request_timeout"


async def test_status_stream_sends_events_pings_and_ends_when_completed(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(run_latency=HOLD)
    handle = await submit(client)
    lines: list[str] = []

    async with client.stream("GET", handle["status_url"] + "/stream") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        async for line in stream.aiter_lines():
            lines.append(line)
            if line == ": ping" and not any("COMPLETED" in seen for seen in lines):
                await client.put(handle["cancel_url"])

    events = [json.loads(line[len("data: ") :]) for line in lines if line.startswith("data: ")]
    assert ": ping" in lines
    assert events[0]["request_id"] == handle["request_id"]
    assert events[0]["response_url"] == handle["response_url"]
    assert events[-1]["status"] == "COMPLETED"
    assert "metrics" in events[-1]
    assert {event["status"] for event in events} <= {"IN_QUEUE", "IN_PROGRESS", "COMPLETED"}


async def test_status_stream_of_completed_request_is_one_event(
    client: httpx.AsyncClient,
) -> None:
    handle = await submit(client)
    await completed(client, handle)

    response = await client.get(handle["status_url"] + "/stream", params={"logs": "1"})
    events = [line for line in response.text.splitlines() if line.startswith("data: ")]

    assert response.status_code == 200
    assert len(events) == 1
    assert json.loads(events[0][6:])["logs"]
