"""Every knob shows its effect: latency, cold starts, concurrency, failures, retries, 429
storms and ambiguous submits. Webhook and file knobs live with their own tests."""

from __future__ import annotations

import httpx
import pytest

from genrelay.emulator import EmulatorServer
from genrelay.emulator.outcomes import INFRA_ERRORS, MODEL_ERRORS
from tests.emulator.helpers import FLUX, completed, eventually, status_of, submit, view

HOLD = "fixed:60000"


async def test_run_latency_is_the_reported_inference_time(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(run_latency="fixed:120")
    handle = await submit(client)

    status = await completed(client, handle)
    result = (await client.get(handle["response_url"])).json()

    assert status["metrics"]["inference_time"] == pytest.approx(0.12)
    assert result["timings"]["inference"] == pytest.approx(0.12)


async def test_queue_latency_keeps_a_dispatched_request_in_queue(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(queue_latency=HOLD)
    handle = await submit(client)

    status = await status_of(client, handle)

    assert status["status"] == "IN_QUEUE"
    assert status["queue_position"] == 0
    assert fal.emulator.scheduler.waiting(FLUX) == 0


async def test_cold_start_hits_the_first_request_after_idleness_only(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(cold_start_ms=50, cold_after_idle_s=3600)
    first = await submit(client)
    await completed(client, first)
    second = await submit(client)
    await completed(client, second)

    assert view(fal, first)["cold_start"] is True
    assert view(fal, second)["cold_start"] is False
    assert any("Cold start" in entry["message"] for entry in view(fal, first)["logs"])
    assert fal.stats()["cold_starts"] == 1


async def test_every_request_is_cold_when_runners_never_stay_warm(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(cold_start_ms=20, cold_after_idle_s=0)
    for _ in range(3):
        await completed(client, await submit(client))

    assert fal.stats()["cold_starts"] == 3


async def test_requests_arriving_during_a_boot_share_it(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(cold_start_ms=500, cold_after_idle_s=3600)
    handles = [await submit(client) for _ in range(3)]

    for handle in handles:
        await completed(client, handle)

    assert [view(fal, h)["cold_start"] for h in handles] == [True, False, False]
    assert fal.stats()["cold_starts"] == 1


async def test_concurrency_bounds_running_requests_and_queues_the_rest(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(run_latency=HOLD, concurrency=2)
    handles = [await submit(client) for _ in range(5)]

    statuses = [await status_of(client, h) for h in handles]
    fal.configure(concurrency=5)
    after = [await status_of(client, h) for h in handles]

    assert [s["status"] for s in statuses] == ["IN_PROGRESS"] * 2 + ["IN_QUEUE"] * 3
    assert [s["queue_position"] for s in statuses[2:]] == [0, 1, 2]
    assert [s["status"] for s in after] == ["IN_PROGRESS"] * 5


async def test_failure_rate_one_fails_every_request_with_the_given_type(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(failure_rate=1.0, failure_types=["content_policy_violation"])
    handle = await submit(client)

    status = await completed(client, handle)
    result = await client.get(handle["response_url"])

    assert status["error_type"] == "content_policy_violation"
    assert result.status_code == 422
    assert result.json()["detail"][0]["type"] == "content_policy_violation"
    assert result.headers["x-fal-retryable"] == "false"
    assert fal.stats()["failed"] == 1


async def test_failure_rate_hits_the_same_requests_for_the_same_seed(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    async def failed_positions() -> list[int]:
        await fal.reset()
        fal.configure(failure_rate=0.5, failure_types=["runner_server_error"], seed=3)
        handles = [await submit(client) for _ in range(16)]
        statuses = [await completed(client, h) for h in handles]
        return [i for i, status in enumerate(statuses) if "error" in status]

    first = await failed_positions()

    assert first == await failed_positions()
    assert 0 < len(first) < 16


@pytest.mark.parametrize("error_type", sorted(INFRA_ERRORS.keys() - {"client_cancelled"}))
async def test_infrastructure_errors_have_fal_status_body_and_header(
    fal: EmulatorServer, client: httpx.AsyncClient, error_type: str
) -> None:
    fal.configure(internal_retries=0)
    fal.arm(fail_next=[error_type])
    handle = await submit(client)

    status = await completed(client, handle)
    result = await client.get(handle["response_url"])

    assert status["error_type"] == error_type
    assert result.status_code == INFRA_ERRORS[error_type][0]
    assert result.json() == {"detail": INFRA_ERRORS[error_type][1], "error_type": error_type}
    assert result.headers["x-fal-error-type"] == error_type
    assert result.headers["x-fal-request-id"] == handle["request_id"]


@pytest.mark.parametrize("error_type", sorted(MODEL_ERRORS))
async def test_model_errors_have_a_detail_list_and_retry_hint(
    fal: EmulatorServer, client: httpx.AsyncClient, error_type: str
) -> None:
    fal.configure(internal_retries=0)
    fal.arm(fail_next=[error_type])
    handle = await submit(client)

    await completed(client, handle)
    result = await client.get(handle["response_url"])

    assert result.status_code == MODEL_ERRORS[error_type][0]
    assert result.json()["detail"][0]["type"] == error_type
    assert result.headers["x-fal-retryable"] in {"true", "false"}


async def test_retryable_failures_are_retried_under_the_same_request_id(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.arm(fail_next=["runner_disconnected", "request_timeout"])
    handle = await submit(client)

    status = await completed(client, handle)
    described = view(fal, handle)

    assert "error" not in status
    assert described["attempt"] == 3
    assert described["gateway_request_id"] != handle["request_id"]
    assert fal.stats()["internal_retries"] == 2
    assert fal.stats()["submissions"] == 1


async def test_retries_stop_at_the_configured_budget(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(internal_retries=1)
    fal.arm(fail_next=["runner_disconnected"] * 3)
    handle = await submit(client)

    status = await completed(client, handle)

    assert status["error_type"] == "runner_disconnected"
    assert view(fal, handle)["attempt"] == 2


@pytest.mark.parametrize(
    ("error_type", "headers"),
    [("runner_server_error", {}), ("runner_disconnected", {"X-Fal-No-Retry": "1"})],
)
async def test_final_failures_and_no_retry_requests_are_not_retried(
    fal: EmulatorServer, client: httpx.AsyncClient, error_type: str, headers: dict[str, str]
) -> None:
    fal.arm(fail_next=[error_type])
    handle = await submit(client, headers=headers)

    status = await completed(client, handle)

    assert status["error_type"] == error_type
    assert view(fal, handle)["attempt"] == 1


async def test_retried_request_goes_back_in_queue_behind_waiting_ones(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(run_latency="fixed:600", concurrency=1)
    fal.arm(fail_next=["runner_scheduling_failure"])
    retried = await submit(client)
    waiting = await submit(client)

    # Checked in process, while the other request (now ahead of it) runs for 600 ms.
    await eventually(
        lambda: view(fal, retried)["attempt"] == 2 and view(fal, waiting)["status"] == "IN_PROGRESS"
    )

    assert view(fal, retried)["status"] == "IN_QUEUE"
    assert "error" not in await completed(client, retried)


async def test_reject_rate_turns_submits_into_uncounted_429s(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(reject_rate=1.0)

    response = await client.post(f"/{FLUX}", json={"prompt": "x"})

    assert response.status_code == 429
    assert fal.stats()["submissions"] == 0
    assert fal.stats()["rejected_submits"] == 1


async def test_armed_429_storm_rejects_the_next_submits(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.arm(reject_submits=2)

    codes = [(await client.post(f"/{FLUX}", json={"prompt": "x"})).status_code for _ in range(3)]

    assert codes == [429, 429, 200]
    assert fal.stats()["submissions"] == 1


async def test_429_window_rejects_until_it_ends(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.arm(reject_for_s=0.3)

    first = await client.post(f"/{FLUX}", json={"prompt": "x"})

    async def accepted() -> bool:
        return (await client.post(f"/{FLUX}", json={"prompt": "x"})).status_code == 200

    await eventually(accepted, what="end of the 429 window")
    assert first.status_code == 429
    assert fal.stats()["submissions"] == 1


async def test_dropped_submit_response_still_counts_the_submission(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.arm(drop_submit_responses=1)

    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        await client.post(f"/{FLUX}", json={"prompt": "dropped", "width": 16, "height": 16})
    [submission] = fal.submissions()
    await eventually(lambda: fal.stats()["completed"] == 1)

    assert submission.input["prompt"] == "dropped"
    assert fal.stats()["dropped_submit_responses"] == 1


async def test_drop_rate_one_drops_every_submit_response(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(submit_drop_rate=1.0)

    for _ in range(2):
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await client.post(f"/{FLUX}", json={"prompt": "x"})

    assert fal.stats()["submissions"] == 2


async def test_delayed_submit_response_times_the_client_out_after_enqueueing(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.arm(delay_submit_responses=1, delay_submit_ms=1000)

    with pytest.raises(httpx.ReadTimeout):
        await client.post(f"/{FLUX}", json={"prompt": "slow"}, timeout=0.2)

    assert len(fal.submissions()) == 1
    assert fal.stats()["delayed_submit_responses"] == 1


async def test_submit_response_delay_setting_delays_but_answers(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(submit_response_delay_ms=50)

    handle = await submit(client)

    assert handle["status"] == "IN_QUEUE"
    assert fal.stats()["delayed_submit_responses"] == 1
