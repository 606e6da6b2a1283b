"""The control API and the provider-side accounting it exposes."""

from __future__ import annotations

import httpx

from genrelay.emulator import EmulatorServer
from tests.emulator.helpers import FLUX, VIDEO, completed, submit


async def test_config_can_be_read_and_patched_over_http(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    before = (await client.get("/_emulator/config")).json()

    patched = await client.patch(
        "/_emulator/config",
        json={"failure_rate": 0.25, "run_latency": "uniform:10:20", "concurrency": 3},
    )

    assert before["failure_rate"] == 0.0
    assert patched.status_code == 200
    assert patched.json()["run_latency"] == {"kind": "uniform", "min_ms": 10.0, "max_ms": 20.0}
    assert fal.settings.failure_rate == 0.25
    assert fal.settings.concurrency == 3


async def test_invalid_or_startup_only_patches_are_refused(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    out_of_range = await client.patch("/_emulator/config", json={"failure_rate": 2})
    unknown = await client.patch("/_emulator/config", json={"no_such_knob": 1})
    startup_only = await client.patch("/_emulator/config", json={"port": 1234})

    assert [r.status_code for r in (out_of_range, unknown, startup_only)] == [422, 422, 422]
    assert fal.settings.failure_rate == 0.0


async def test_reset_restores_settings_and_forgets_requests(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(concurrency=1, run_latency="fixed:60000")
    handle = await submit(client)
    fal.arm(lose_webhooks=3)

    response = await client.post("/_emulator/reset")

    assert response.status_code == 200
    assert fal.settings.concurrency == 64
    assert fal.stats()["submissions"] == 0
    assert (await client.get(handle["status_url"])).status_code == 404
    assert (await client.get("/_emulator/faults")).json()["lose_webhooks"] == 0


async def test_faults_are_armed_listed_and_disarmed_over_http(client: httpx.AsyncClient) -> None:
    armed = await client.post(
        "/_emulator/faults", json={"fail_next": ["runner_disconnected"], "lose_webhooks": 2}
    )
    bad = await client.post("/_emulator/faults", json={"fail_next": ["not_a_type"]})
    cleared = await client.delete("/_emulator/faults")

    assert armed.json()["fail_next"] == ["runner_disconnected"]
    assert armed.json()["lose_webhooks"] == 2
    assert bad.status_code == 422
    assert cleared.json()["fail_next"] == []


async def test_submissions_list_every_accepted_submit_with_filters(
    client: httpx.AsyncClient,
) -> None:
    first = await submit(client, params={"fal_webhook": "http://127.0.0.1:9/hook?key=order-1"})
    await submit(client, {"prompt": "order-2 video"}, endpoint=VIDEO)
    await client.post("/fal-ai/unknown", json={"prompt": "x"})

    everything = (await client.get("/_emulator/submissions")).json()
    by_hook = (
        await client.get("/_emulator/submissions", params={"webhook_contains": "order-1"})
    ).json()
    by_endpoint = (await client.get("/_emulator/submissions", params={"endpoint": VIDEO})).json()
    by_input = (
        await client.get("/_emulator/submissions", params={"input_contains": "order-2"})
    ).json()

    assert everything["count"] == 2
    entry = everything["submissions"][0]
    assert entry["request_id"] == first["request_id"]
    assert entry["endpoint"] == FLUX
    assert entry["input"]["prompt"] == "a lighthouse at dawn"
    assert entry["webhook_url"] == "http://127.0.0.1:9/hook?key=order-1"
    assert entry["priority"] == "normal"
    assert isinstance(entry["received_at"], float)
    assert by_hook["count"] == 1
    assert by_endpoint["count"] == 1
    assert by_input["count"] == 1


async def test_stats_count_what_the_provider_saw(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    done = await submit(client)
    await completed(client, done)
    result = (await client.get(done["response_url"])).json()
    await client.get(result["images"][0]["url"])
    fal.configure(run_latency="fixed:60000")
    cancelled = await submit(client)
    await client.put(cancelled["cancel_url"])
    await completed(client, cancelled)

    stats = (await client.get("/_emulator/stats")).json()

    assert stats["submissions"] == 2
    assert stats["per_endpoint"] == {FLUX: 2}
    assert stats["completed"] == 2
    assert stats["succeeded"] == 1
    assert stats["cancelled"] == 1
    assert stats["cancel_requests"] == 1
    assert stats["result_fetches"] == 1
    assert stats["file_downloads"] == 1
    assert stats["status_polls"] >= 2


async def test_request_view_and_health(client: httpx.AsyncClient) -> None:
    handle = await submit(client)
    await completed(client, handle)

    described = (await client.get(f"/_emulator/requests/{handle['request_id']}")).json()
    missing = await client.get("/_emulator/requests/nope")
    health = await client.get("/_emulator/health")

    assert described["status"] == "COMPLETED"
    assert described["result_status_code"] == 200
    assert described["endpoint"] == FLUX
    assert missing.status_code == 404
    assert health.json() == {"status": "ok"}


async def test_submission_log_is_bounded_but_counts_stay_exact(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(submission_log_limit=2)
    handles = [await submit(client) for _ in range(3)]

    logged = [item.request_id for item in fal.submissions()]

    assert logged == [h["request_id"] for h in handles[1:]]
    assert fal.stats()["submissions"] == 3


async def test_rotation_overlap_setting_is_the_default_overlap(fal: EmulatorServer) -> None:
    fal.configure(key_rotation_overlap_s=0)

    jwks = fal.rotate_keys()

    assert [key["x"] for key in jwks["keys"]] == [fal.emulator.keyring.active.x]
