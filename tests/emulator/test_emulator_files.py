"""Expiring file URLs, result retention and the bounded render cache."""

from __future__ import annotations

import json
from typing import Any

import httpx

from genrelay.emulator import EmulatorServer
from tests.emulator.helpers import completed, eventually, submit


async def finished(client: httpx.AsyncClient, **kwargs: Any) -> dict[str, Any]:
    handle = await submit(client, **kwargs)
    await completed(client, handle)
    return handle


async def image_url(client: httpx.AsyncClient, handle: dict[str, Any]) -> str:
    url: str = (await client.get(handle["response_url"])).json()["images"][0]["url"]
    return url


async def gone(client: httpx.AsyncClient, url: str) -> bool:
    return (await client.get(url)).status_code == 404


async def test_file_urls_expire_after_their_lifetime(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(file_url_lifetime_s=0.3)
    url = await image_url(client, await finished(client))

    first = await client.get(url)
    await eventually(lambda: gone(client, url), what="file expiry")

    assert first.status_code == 200
    assert first.headers["content-type"] == "image/png"


async def test_lifecycle_header_overrides_the_file_lifetime(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(file_url_lifetime_s=0.01)
    forever = {
        "X-Fal-Object-Lifecycle-Preference": json.dumps({"expiration_duration_seconds": None})
    }
    short = {"X-Fal-Object-Lifecycle-Preference": json.dumps({"expiration_duration_seconds": 0.2})}

    kept = await image_url(client, await finished(client, headers=forever))
    expiring = await image_url(client, await finished(client, headers=short))
    default = await image_url(client, await finished(client))

    await eventually(lambda: gone(client, default), what="default expiry")
    await eventually(lambda: gone(client, expiring), what="header expiry")
    assert (await client.get(kept)).status_code == 200


async def test_unknown_file_or_wrong_name_is_404(client: httpx.AsyncClient) -> None:
    url = await image_url(client, await finished(client))

    assert (await client.get(url.rsplit("/", 1)[0] + "/other.png")).status_code == 404
    assert (await client.get("/files/nope/image_0.png")).status_code == 404


async def test_results_are_forgotten_after_retention(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(result_retention_s=0.3)
    handle = await finished(client)

    first = await client.get(handle["response_url"])
    await eventually(lambda: gone(client, handle["response_url"]), what="result expiry")

    assert first.status_code == 200
    assert (await client.get(handle["status_url"])).status_code == 404
    assert (await client.put(handle["cancel_url"])).json() == {"status": "NOT_FOUND"}


async def test_large_results_are_kept_for_less_time(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(large_result_bytes=800, large_result_retention_s=0.2, result_retention_s=3600)
    small = await finished(client, body={"prompt": "x", "image_size": {"width": 16, "height": 16}})
    large = await finished(client, body={"prompt": "x" * 1000, "width": 16, "height": 16})

    await eventually(lambda: gone(client, large["response_url"]), what="large result expiry")

    # The small one shares the clock with the large one, so it would be gone by now too.
    small_result = await client.get(small["response_url"])
    assert small_result.status_code == 200
    assert len(small_result.content) < 800


async def test_evicted_files_are_rendered_again_identically(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(file_cache_bytes=0)
    handle = await finished(client)
    image = (await client.get(handle["response_url"])).json()["images"][0]

    first = (await client.get(image["url"])).content
    second = (await client.get(image["url"])).content

    assert first == second
    assert len(first) == image["file_size"]
    assert fal.stats()["file_downloads"] == 2


async def test_expired_entries_are_swept_from_memory(
    fal: EmulatorServer, client: httpx.AsyncClient
) -> None:
    fal.configure(result_retention_s=0.05, file_url_lifetime_s=0.05)
    await finished(client)

    await eventually(
        lambda: fal.stats()["jobs_in_memory"] == 0 and fal.stats()["files_in_memory"] == 0,
        timeout=5,
        what="sweep",
    )
