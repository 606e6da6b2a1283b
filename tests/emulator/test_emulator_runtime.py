"""Settings, seeded randomness, queue positions, server lifecycle and the CLI."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from genrelay.emulator import Emulator, EmulatorCrashedError, EmulatorServer, EmulatorSettings
from genrelay.emulator.cli import main
from genrelay.emulator.endpoints import EndpointId
from genrelay.emulator.jobs import Job, Lane, Priority
from genrelay.emulator.models import Invalid
from genrelay.emulator.randomness import Dice
from genrelay.emulator.settings import FixedLatency, LognormalLatency, UniformLatency
from tests.emulator.helpers import FLUX, KEY, completed, eventually, submit


def test_settings_read_the_environment_in_compact_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENRELAY_EMULATOR_RUN_LATENCY", "lognormal:800:0.5:5000")
    monkeypatch.setenv(
        "GENRELAY_EMULATOR_QUEUE_LATENCY", '{"kind":"uniform","min_ms":1,"max_ms":2}'
    )
    monkeypatch.setenv("GENRELAY_EMULATOR_FAILURE_TYPES", "runner_disconnected,no_media_generated")
    monkeypatch.setenv("GENRELAY_EMULATOR_API_KEYS", "a,b")
    monkeypatch.setenv("GENRELAY_EMULATOR_FAILURE_RATE", "0.1")

    settings = EmulatorSettings()

    assert settings.run_latency == LognormalLatency(median_ms=800, sigma=0.5, max_ms=5000)
    assert settings.queue_latency == UniformLatency(min_ms=1, max_ms=2)
    assert settings.failure_types == ["runner_disconnected", "no_media_generated"]
    assert settings.api_keys == ["a", "b"]
    assert settings.failure_rate == 0.1


def test_settings_updates_validate_and_outrank_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GENRELAY_EMULATOR_CONCURRENCY", "4")
    settings = EmulatorSettings()

    updated = settings.updated({"run_latency": "fixed:5", "concurrency": 2})

    assert updated.run_latency == FixedLatency(ms=5)
    assert updated.concurrency == 2
    with pytest.raises(ValueError, match="uniform"):
        settings.updated({"run_latency": "uniform:9:1"})
    with pytest.raises(ValueError, match="host"):
        settings.updated({"host": "0.0.0.0"})


def test_dice_draws_depend_only_on_seed_purpose_and_key() -> None:
    dice = Dice(5)

    assert dice.uniform("fail", 1, 1) == Dice(5).uniform("fail", 1, 1)
    assert dice.uniform("fail", 1, 1) != Dice(6).uniform("fail", 1, 1)
    assert dice.uniform("fail", 1, 1) != dice.uniform("fail", 2, 1)
    assert dice.chance(0.0, "x", 1) is False
    assert dice.chance(1.0, "x", 1) is True
    hits = sum(dice.chance(0.3, "x", i) for i in range(2000))
    assert 500 < hits < 700


def test_latency_samples_follow_their_distribution() -> None:
    dice = Dice(1)
    uniform = [dice.latency_ms(UniformLatency(min_ms=10, max_ms=20), "run", i) for i in range(500)]
    lognormal = sorted(
        dice.latency_ms(LognormalLatency(median_ms=100, sigma=0.5), "run", i) for i in range(501)
    )
    capped = [
        dice.latency_ms(LognormalLatency(median_ms=100, sigma=2, max_ms=150), "run", i)
        for i in range(200)
    ]

    assert all(10 <= value <= 20 for value in uniform)
    assert 80 < lognormal[250] < 125
    assert max(capped) == 150
    assert dice.latency_ms(FixedLatency(ms=7), "run", 1) == 7


def test_endpoint_ids_follow_fal_client() -> None:
    assert EndpointId.parse("fal-ai/flux/dev") == EndpointId(None, "fal-ai", "flux", "dev")
    assert EndpointId.parse("workflows/me/app/a/b") == EndpointId("workflows", "me", "app", "a/b")
    assert str(EndpointId.parse("comfy/me/app")) == "comfy/me/app"
    assert EndpointId.parse("fal-ai") is None
    assert EndpointId.parse("workflows/me") is None


def _job(number: int) -> Job:
    endpoint = EndpointId(None, "o", "a", None)
    return Job(str(number), number, endpoint, Invalid([]), None, Priority.NORMAL, 0.0)


@given(st.lists(st.sampled_from(["push", "pop", "remove"]), max_size=60), st.randoms())
def test_lane_positions_match_a_plain_list(ops: list[str], rnd: Any) -> None:
    lane, model, counter = Lane(), list[Job](), 0
    for op in ops:
        if op == "push":
            counter += 1
            job = _job(counter)
            lane.push(job)
            model.append(job)
        elif op == "pop":
            popped = lane.pop()
            assert popped is (model.pop(0) if model else None)
        elif model:
            victim = model.pop(rnd.randrange(len(model)))
            lane.remove(victim)
        assert len(lane) == len(model)
        assert [lane.position(job) for job in model] == list(range(len(model)))


async def test_server_lifecycle_is_idempotent_and_single_use() -> None:
    server = EmulatorServer(EmulatorSettings(api_keys=[KEY]))
    async with server, httpx.AsyncClient() as http:
        assert (await http.get(server.jwks_url)).status_code == 200
    await server.stop()

    with pytest.raises(RuntimeError, match="closed"):
        await server.start()


async def test_a_crashed_background_task_surfaces(monkeypatch: pytest.MonkeyPatch) -> None:
    server = EmulatorServer(EmulatorSettings(api_keys=[KEY]))

    async def broken(*args: object) -> None:
        raise RuntimeError("render failed")

    monkeypatch.setattr(server.emulator.files, "add", broken)
    await server.start()
    headers = {"Authorization": f"Key {KEY}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers) as http:
        await submit(http)
        health = await eventually(lambda: _unhealthy(http))

    with pytest.raises(EmulatorCrashedError) as crashed:
        await server.stop()

    assert health["status"] == "crashed"
    assert isinstance(crashed.value.__cause__, RuntimeError)


async def _unhealthy(http: httpx.AsyncClient) -> dict[str, Any] | None:
    response = await http.get("/_emulator/health")
    body: dict[str, Any] = response.json()
    return body if response.status_code == 500 else None


def test_cli_refuses_invalid_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--failure-rate", "2"]) == 2
    assert "failure_rate" in capsys.readouterr().err


async def test_cli_serves_until_terminated() -> None:
    env = {**os.environ, "GENRELAY_EMULATOR_API_KEYS": KEY}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "genrelay.emulator",
        "--port",
        "0",
        "--run-latency",
        "fixed:10",
        "--file-url-lifetime-s",
        "none",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert process.stdout is not None
        base_url = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip()
        headers = {"Authorization": f"Key {KEY}"}
        async with httpx.AsyncClient(base_url=base_url, headers=headers) as http:
            handle = await submit(http)
            status = await completed(http, handle)
            config = (await http.get("/_emulator/config")).json()
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 30)

    assert base_url.startswith("http://127.0.0.1:")
    assert status["metrics"]["inference_time"] == 0.01
    assert config["file_url_lifetime_s"] is None
    assert handle["response_url"].startswith(base_url + "/" + FLUX.rsplit("/", 1)[0])
    assert code == 0


def test_signing_seed_makes_the_key_reproducible() -> None:
    emulator = Emulator(EmulatorSettings(signing_seed_hex="01" * 32))

    assert emulator.keyring.jwks()["keys"][0]["x"] == "iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w"


async def test_public_base_url_is_advertised_in_returned_urls() -> None:
    settings = EmulatorSettings(api_keys=[KEY], public_base_url="https://fal.example.test")
    async with EmulatorServer(settings) as server:
        headers = {"Authorization": f"Key {KEY}"}
        async with httpx.AsyncClient(base_url=server.listen_url, headers=headers) as http:
            handle = await submit(http)
            await eventually(lambda: server.stats()["completed"] == 1)
            result = (await http.get(f"/fal-ai/flux/requests/{handle['request_id']}")).json()

    assert server.base_url == "https://fal.example.test"
    assert handle["status_url"].startswith("https://fal.example.test/fal-ai/flux/requests/")
    assert result["images"][0]["url"].startswith("https://fal.example.test/files/")
